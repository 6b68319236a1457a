"""The runner: who answers which turn when, and which questions are still to do.

Several members (mask implementations, and optionally plain decoding) share one loaded model and
answer every question; within a question each member keeps its own conversation (its turn 2 follows
its own turn-1 answer), and turn by turn the members take their turns in an order that rotates by
one from turn to turn and from question to question (A B, B A, ...), so that drift of the machine
and the cost of going first or last fall on every member alike. Each member writes an ordinary
answer file; an interleaved run adds to each line

    "interleave": {"run_id": one per process, "members": [labels in command order],
                   "label": this member's, "positions": [per turn, 0-based place in the rotation]}

so that `speed.py` can pair the same turn of the same question from the same process. A question is
done only when every member's last line for it comes from one interleaved run of these members;
anything less is answered again by all of them, so pairs never mix processes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import shortuuid
from tqdm import tqdm

from .answers import AnswerWriter, answered_ids, drop_torn_tail, iter_lines
from .run_settings import GenError, Member, RunSettings

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Ctrl-C during generation; the message says what was kept and how to go on."""

    def __init__(self, kept: int, files: list):
        where = str(files[0]) if len(files) == 1 else "each of " + ", ".join(map(str, files))
        super().__init__(f"{kept} answers kept in {where}; rerun the same command to resume")


def rotation(count: int, question_index: int, turn: int) -> list[int]:
    """Member indices in the order they answer one turn: shifted by one per question and turn."""
    shift = (question_index + turn) % count
    return list(range(shift, count)) + list(range(shift))


def adopt_code(path, settings: RunSettings) -> RunSettings:
    """`settings` for resuming `path`: refused when the file was written by other code (another
    source fingerprint); when the code is the same, the file's own code record is kept (its git
    commit may be older), so that a file keeps one settings object."""
    if not path.exists():
        return settings
    drop_torn_tail(path)
    for _, obj in iter_lines(path):
        theirs = obj.get("settings", {}).get("code") if isinstance(obj.get("settings"), dict) else None
        ours = settings.code["fingerprint"]
        found = theirs.get("fingerprint") if isinstance(theirs, dict) else None
        if found != ours:
            raise GenError(f"cannot resume {path}: written by other code (code fingerprint "
                           f"{found or 'absent'} in the file, {ours} now); choose another "
                           f"--answer-file or delete this one")
        return settings.with_code(theirs)
    return settings


def last_runs(path) -> dict:
    """question id -> (run id, members) of its last line (None for a line from a plain run)."""
    runs = {}
    for _, obj in iter_lines(path):
        tag = obj.get("interleave")
        runs[obj["question_id"]] = (tag.get("run_id"), tag.get("members")) \
            if isinstance(tag, dict) else None
    return runs


@dataclass
class Seat:
    """A member at the table: its config, the settings its lines carry, its answerer once loaded."""
    member: Member
    settings: RunSettings
    answerer: Optional[object] = None  # evaluation.generate.Answerer


class Runner:
    """Decides the order of the members and pairs their answers; writes each member's file."""

    def __init__(self, members: list[Member], settings: list[RunSettings]):
        self.seats = [Seat(m, adopt_code(m.cfg.answer_file, s)) for m, s in zip(members, settings)]
        self.labels = [m.label for m in members]
        self.run_id = shortuuid.uuid()
        self.done = self._finished()
        self.kept = len(self.done)  # questions whose lines every file holds, from one run

    @property
    def files(self) -> list:
        return [seat.member.cfg.answer_file for seat in self.seats]

    def _finished(self) -> set:
        answered = [answered_ids(s.member.cfg.answer_file, s.settings) for s in self.seats]
        common = set.intersection(*answered)
        if len(self.seats) > 1:
            runs = [last_runs(s.member.cfg.answer_file) if s.member.cfg.answer_file.exists() else {}
                    for s in self.seats]
            common = {q for q in common if runs[0][q] is not None and runs[0][q][1] == self.labels
                      and all(r[q] == runs[0][q] for r in runs)}
        again = set.union(*answered) - common
        if again:
            log.warning("%d question(s) answered by some members only, or not in one interleaved "
                        "run of %s: every member answers them again", len(again), ",".join(self.labels))
        return common

    def pending(self, questions: list[dict]) -> list[tuple[int, dict]]:
        """(index in the selection, question) of each question still to answer."""
        return [(i, q) for i, q in enumerate(questions) if q["question_id"] not in self.done]

    def seat(self, make_answerer: Callable) -> None:
        """Give each member its answerer (`make_answerer(member, settings)`)."""
        for seat in self.seats:
            seat.answerer = make_answerer(seat.member, seat.settings)

    def warm_up(self, question: dict, passes: int) -> None:
        """Untimed passes per member: first-call allocations, kernel selection, caches."""
        for seat in self.seats:
            for _ in range(passes):
                seat.answerer.answer(question)

    def answer(self, index: int, question: dict) -> list[dict]:
        """One answer line per member, the turns taken in rotating order."""
        talks = [seat.answerer.conversations(question) for seat in self.seats]
        positions: list[list[int]] = [[] for _ in self.seats]
        for turn, text in enumerate(question["turns"]):
            for place, who in enumerate(rotation(len(self.seats), index, turn)):
                positions[who].append(place)
                for talk in talks[who]:
                    talk.turn(text)
        lines = [seat.answerer.record(question, talk) for seat, talk in zip(self.seats, talks)]
        if len(self.seats) > 1:
            for line, seat, places in zip(lines, self.seats, positions):
                line["interleave"] = {"run_id": self.run_id, "members": self.labels,
                                      "label": seat.member.label, "positions": places}
        return lines

    def run(self, pending: list[tuple[int, dict]], total: int) -> None:
        """Answer `pending`, writing each question's lines once all members answered it."""
        writers = [AnswerWriter(path) for path in self.files]
        try:
            with tqdm(pending, desc=",".join(self.labels), unit="question", total=total,
                      initial=total - len(pending), postfix={"cached": total - len(pending)}) as bar:
                for index, question in bar:
                    for writer, line in zip(writers, self.answer(index, question)):
                        writer.write(line)
                    self.kept += 1
        finally:
            for writer in writers:
                writer.close()

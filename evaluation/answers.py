"""Answer files: FastChat llm_judge JSON lines whose decoding statistics keep the meanings that
Spec-Bench's and upstream EAGLE's speed scripts give them, plus our own per-turn detail.

One line per question:
    {question_id, answer_id, model_id, tstamp, category, settings, (profile), (interleave),
     choices: [{index, turns: [text], new_tokens: [int], wall_time: [s], idxs: [int],
                decoding_steps: [int], accept_lengths: [int] (flat over the turns),
                detail: {token_ids: [[int]], accepted_drafts: [[int]]}}]}
The README's schema table says what each field means and which reader uses it.
Writing appends one line per write call, so a killed run loses at most the line it was about to
write; resuming drops that torn line and skips the questions already answered; the final sort and
de-duplication replaces the file atomically.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Sequence

from .atomic import write_atomic
from .run_settings import RunSettings, settings_differences

log = logging.getLogger(__name__)

ANSWER_FIELDS = ("question_id", "answer_id", "model_id", "tstamp", "category", "choices", "settings")
TURN_FIELDS = ("turns", "new_tokens", "wall_time", "idxs", "decoding_steps")  # one entry per turn
DETAIL_FIELDS = ("token_ids", "accepted_drafts")  # ours: one list per turn
OLD_FORMAT = ("this answer was written in the format before the standard Spec-Bench/EAGLE fields "
              "(per-turn 'steps' and nested 'accept_lengths'); regenerate it: delete the file and "
              "rerun the generator command that wrote it, or convert it exactly with "
              "`python -m evaluation.upgrade_answers FILE`")


def drafts(settings: dict) -> bool:
    """Whether the run that wrote these settings decoded with draft trees (EAGLE), not plainly."""
    return settings.get("method") != "baseline"


def tokens_per_step(new_tokens: int, accepted: Sequence[int]) -> list[int]:
    """Tokens each EAGLE step added to the output: accepted draft tokens + the bonus token, the
    last step counting only what was kept when a stop token or the budget cut it. The first new
    token comes from the prefill, outside any step, so the entries sum to new_tokens - 1."""
    left, added = new_tokens - 1, []
    for n in accepted:
        take = min(n + 1, left)
        if take < 1:
            raise ValueError(f"step {len(added)} added no token ({new_tokens} new tokens, "
                             f"accepted drafts {list(accepted)})")
        added.append(take)
        left -= take
    if left:
        raise ValueError(f"{new_tokens} new tokens but the steps add up to {new_tokens - 1 - left} "
                         f"after the prefill token (accepted drafts {list(accepted)})")
    return added


def new_choice(index: int) -> dict:
    """An empty choice that `add_turn` fills turn by turn."""
    return {"index": index, "turns": [], "new_tokens": [], "wall_time": [], "idxs": [],
            "decoding_steps": [], "accept_lengths": [],
            "detail": {"token_ids": [], "accepted_drafts": []}}


def add_turn(choice: dict, text: str, token_ids: Sequence[int], accepted: Sequence[int],
             seconds: float, drafted: bool) -> None:
    """Append one turn. `accepted`: accepted draft tokens per EAGLE step (empty for plain decoding,
    where every new token is one step, as Spec-Bench's baseline counts them)."""
    n = len(token_ids)
    added = tokens_per_step(n, accepted) if drafted else [1] * n
    for key, value in (("turns", text), ("new_tokens", n), ("wall_time", seconds),
                       ("idxs", len(added) - 1), ("decoding_steps", len(added))):
        choice[key].append(value)
    choice["accept_lengths"].extend(added)
    choice["detail"]["token_ids"].append(list(token_ids))
    choice["detail"]["accepted_drafts"].append(list(accepted))


class AnswerFileError(ValueError):
    """A problem with one line (or the whole) of an answer file; the message names file and line."""

    def __init__(self, path: Path, line: Optional[int], message: str):
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")
        self.path, self.line = path, line


def _read_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").split("\n")  # only newlines end a JSON line
    except OSError as exc:
        raise AnswerFileError(path, None, f"cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AnswerFileError(path, None, f"not UTF-8 text (byte {exc.start}); is this an answer file?") \
            from None


def iter_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; an unreadable file or malformed JSON is an
    `AnswerFileError`."""
    for number, text in enumerate(_read_lines(path), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnswerFileError(path, number, f"malformed JSON ({exc.msg}, column {exc.colno})") \
                from None
        if not isinstance(obj, dict):
            raise AnswerFileError(path, number, "expected a JSON object per line")
        yield number, obj


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(_is_int(i) for i in x)


def _check_turn(choice: dict, t: int, added: list, drafted: bool) -> Optional[str]:
    """Turn t's entries, `added` its slice of the flat accept_lengths."""
    ids, accepted = choice["detail"]["token_ids"][t], choice["detail"]["accepted_drafts"][t]
    wall, steps = choice["wall_time"][t], choice["decoding_steps"][t]
    if not _int_list(ids) or not ids:
        return "'detail.token_ids' must be a non-empty list of ints (every turn generates a token)"
    if choice["new_tokens"][t] != len(ids):
        return f"'new_tokens' must equal len(detail.token_ids) = {len(ids)}"
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not wall > 0:
        return f"wall_time must be a positive number of seconds, got {wall!r}"
    if not _int_list(accepted) or any(a < 0 for a in accepted) or (accepted and not drafted):
        return "'detail.accepted_drafts' must be non-negative ints (none for plain decoding)"
    if choice["idxs"][t] != steps - 1:
        return f"'idxs' must be decoding_steps - 1 = {steps - 1}"
    try:
        expected = tokens_per_step(len(ids), accepted) if drafted else [1] * len(ids)
    except ValueError as exc:
        return f"'detail.accepted_drafts' do not fit the new tokens: {exc}"
    if added != expected:
        return f"'accept_lengths' of this turn must be {expected} (tokens added per step), got {added}"
    return None


def _check_choice(choice: dict, drafted: bool) -> Optional[str]:
    n = len(choice["turns"])
    for key in TURN_FIELDS:
        if not isinstance(choice[key], list) or len(choice[key]) != n:
            return f"'{key}' must be a list with one entry per turn ({n})"
    detail = choice["detail"]
    if not isinstance(detail, dict) or any(not isinstance(detail.get(k), list) or len(detail[k]) != n
                                           for k in DETAIL_FIELDS):
        return f"'detail' must hold {' and '.join(DETAIL_FIELDS)}, one list per turn ({n})"
    steps, flat = choice["decoding_steps"], choice["accept_lengths"]
    if not _int_list(steps) or any(s < 0 for s in steps) or not _int_list(flat):
        return "'decoding_steps' and 'accept_lengths' must hold non-negative ints"
    if len(flat) != sum(steps):
        return f"'accept_lengths' must have one entry per decoding step ({sum(steps)}), got {len(flat)}"
    start = 0
    for t in range(n):
        problem = _check_turn(choice, t, flat[start:start + steps[t]], drafted)
        if problem:
            return f"turn {t + 1}: {problem}"
        start += steps[t]
    return None


def _interleave_problem(record: Any, turns: int) -> Optional[str]:
    """The optional 'interleave' record of a run that answered with several members in turn."""
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        return "'interleave' must be an object with a string 'run_id'"
    members, label, positions = record.get("members"), record.get("label"), record.get("positions")
    if not isinstance(members, list) or label not in members:
        return "'interleave.label' must be one of 'interleave.members'"
    if not _int_list(positions) or len(positions) != turns or \
            any(not 0 <= p < len(members) for p in positions):
        return f"'interleave.positions' must be {turns} positions in 0..{len(members) - 1}"
    return None


def answer_problem(obj: dict) -> Optional[str]:
    """What is wrong with one answer object, or None when it follows the schema."""
    missing = [k for k in ANSWER_FIELDS if k not in obj]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not isinstance(obj["settings"], dict):
        return "'settings' must be an object"
    if not isinstance(obj["choices"], list) or not obj["choices"]:
        return "'choices' must be a non-empty list"
    for c, choice in enumerate(obj["choices"]):
        where = f"question {obj['question_id']} choice {c}"
        if not isinstance(choice, dict):
            return f"{where}: each choice must be an object"
        if "steps" in choice and "decoding_steps" not in choice:
            return OLD_FORMAT
        missing = [k for k in ("index", "accept_lengths", "detail") + TURN_FIELDS if k not in choice]
        if missing:
            return f"{where}: missing field(s) {', '.join(missing)}"
        problem = _check_choice(choice, drafts(obj["settings"]))
        if problem:
            return f"{where} {problem}" if problem.startswith("turn") else f"{where}: {problem}"
    if "interleave" in obj:
        return _interleave_problem(obj["interleave"], len(obj["choices"][0]["turns"]))
    return None


def read_answers(path: Path) -> list[tuple[int, dict]]:
    """All answers of a file, validated: schema, unique question ids, one settings object."""
    path = Path(path)
    if not path.is_file():
        raise AnswerFileError(path, None, "no such answer file")
    rows, seen = [], {}
    for number, obj in iter_lines(path):
        problem = answer_problem(obj)
        if problem:
            raise AnswerFileError(path, number, problem)
        qid = obj["question_id"]
        if qid in seen:
            raise AnswerFileError(path, number, f"duplicate question_id {qid} (first on line {seen[qid]})")
        seen[qid] = number
        if rows:
            differ = settings_differences(rows[0][1]["settings"], obj["settings"])
            if differ:
                raise AnswerFileError(path, number, f"settings differ from line {rows[0][0]} in {differ[0]!r}")
        rows.append((number, obj))
    if not rows:
        raise AnswerFileError(path, 1, "empty answer file (no answers)")
    return rows


def drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a write interrupted by a kill) so appends start cleanly."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                    path, len(data) - keep)
        with open(path, "r+b") as fh:
            fh.truncate(keep)


def answered_ids(path: Path, settings: RunSettings) -> set:
    """Question ids already answered in `path` by a run with the same settings (resume)."""
    if not path.exists():
        return set()
    drop_torn_tail(path)
    done = set()
    for number, obj in iter_lines(path):
        problem = answer_problem(obj)
        if problem:
            raise AnswerFileError(path, number, f"{problem}; fix or delete the file to start over")
        theirs = RunSettings.from_dict(obj["settings"])
        if theirs != settings:
            key = theirs.differences(settings)[0]
            raise AnswerFileError(
                path, number, f"cannot resume: written with different settings ({key!r}: "
                f"{theirs.get(key)!r} in the file, {settings.get(key)!r} now); choose another "
                f"--answer-file or delete this one")
        done.add(obj["question_id"])
    return done


class AnswerWriter:
    """Appends answer lines, each in one unbuffered write: a process killed between two lines
    (another rank's failure under torchrun, Ctrl-C) leaves whole lines only."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: BinaryIO = open(path, "ab", buffering=0)

    def write(self, answer: dict) -> None:
        data = (json.dumps(answer) + "\n").encode("utf-8")
        if self._fh.write(data) != len(data):
            raise OSError(f"{self.path}: short write of an answer line (disk full?)")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sort_and_dedup(path: Path) -> int:
    """Rewrite `path` sorted by question id, keeping the last answer of each; returns the count."""
    latest = {obj["question_id"]: obj for _, obj in iter_lines(path)}
    lines = [json.dumps(latest[qid]) + "\n" for qid in sorted(latest)]
    write_atomic(path, "".join(lines).encode())
    return len(lines)

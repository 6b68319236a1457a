"""Answer generation under torchrun: every rank runs the generator, rank 0 alone writes.

`torchrun --standalone --nproc_per_node=N evaluation/gen_ea_answer_llama3chat.py ...` starts N
copies of the generator; `join` puts them in one tensor-parallel group (`eagle.parallel`) and each
loads its shard of the base. They answer the same questions in the same order, their forwards in
lockstep. Rank 0 decides what is pending (its answer files) and writes every line; the other ranks
read and write no answer file, log warnings only, and after each question all ranks compare the
token ids they generated (`check_agreement`), so a rank that drifted stops the run instead of
deadlocking. A rank that fails ends the run: torchrun stops the others, and each line of an answer
file is one write (`AnswerWriter`), so the file holds whole lines only.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import shortuuid

from eagle import parallel

from .run_settings import GenConfig, Member
from .interleave import Runner, Seat
from .preflight import Resolved, resolve, resolve_device

log = logging.getLogger(__name__)


def join(cfg: GenConfig) -> Resolved:
    """`preflight.resolve` for this process: first joined to torchrun's group when launched so,
    and then checked on its rank's device (cuda:LOCAL_RANK: no rank touches another's GPU)."""
    device = parallel.init_from_env(resolve_device(cfg.device))
    tp = parallel.current()
    if tp is None:
        return resolve(cfg)
    if tp.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    return resolve(replace(cfg, device=str(device)))


def writes() -> bool:
    """Whether this process writes answer files (alone, or rank 0)."""
    tp = parallel.current()
    return tp is None or tp.rank == 0


def make_runner(members: list[Member], settings: list[dict]) -> Runner:
    """A plain `Runner` alone; in a group rank 0's writes, the other ranks' follow it."""
    tp = parallel.current()
    if tp is None:
        return Runner(members, settings)
    return LeadRunner(members, settings) if tp.rank == 0 else FollowRunner(members, settings)


def token_ids(lines: list[dict]) -> list:
    """What every rank must have generated alike: each member's, choice's, turn's token ids."""
    return [[choice["detail"]["token_ids"] for choice in line["choices"]] for line in lines]


class LeadRunner(Runner):
    """Rank 0: a `Runner` that tells the other ranks which questions are done and checks, after
    each question, that they generated the same tokens."""

    def __init__(self, members: list[Member], settings: list[dict]):
        super().__init__(members, settings)
        parallel.broadcast(self.done)

    def answer(self, index: int, question: dict) -> list[dict]:
        lines = super().answer(index, question)
        parallel.check_agreement(token_ids(lines), f"the tokens of question {question['question_id']}")
        return lines


class FollowRunner(LeadRunner):
    """Rank > 0: answers what rank 0 answers, reads and writes no answer file."""

    def __init__(self, members: list[Member], settings: list[dict]):  # no super(): it reads files
        self.seats = [Seat(m, s) for m, s in zip(members, settings)]
        self.labels = [m.label for m in members]
        self.run_id = shortuuid.uuid()
        self.done = parallel.broadcast(None)
        self.kept = len(self.done)

    def run(self, pending: list[tuple[int, dict]], total: int) -> None:
        for index, question in pending:
            self.answer(index, question)
            self.kept += 1

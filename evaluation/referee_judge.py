"""The referee's judgement: which turns of two answer files diverge, the shared prefix of each, and
the class of each divergence from the reference logits at its first differing position.

See `evaluation.referee` for the classes and the near-tie margin.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .run_settings import samples, temperature_text

if TYPE_CHECKING:  # torch loads only when a model is judged: --help stays instant
    from torch import Tensor

NEAR_TIE, REAL, FOLLOWS = "near-tie", "not a tie", "follows an earlier divergence"
SIDES = ("A", "B")
# bits after the point of each dtype's significand: one ulp at x is 2^(floor(log2 |x|) - bits)
SIGNIFICAND_BITS = {"float16": 10, "bfloat16": 7, "float32": 23, "float64": 52}
DEFAULT_ULPS = 8.0
# settings that decide which model, prompt and decoding rule the runs used: they must agree
SAME_SETTINGS = ("base_model", "preset", "tokenizer", "chat", "dtype", "max_new_token",
                 "temperature", "temperature_by_category", "top_p", "sample_top_k", "num_choices")


class RefereeError(ValueError):
    """Inputs the referee cannot judge; the message names the file and says what to fix."""


def ulp(dtype: str, x: float) -> float:
    """The spacing of `dtype`'s values at magnitude |x| (the normal range's)."""
    if dtype not in SIGNIFICAND_BITS:
        raise RefereeError(f"the runs' dtype {dtype!r} has no known rounding; expected one of "
                           f"{', '.join(SIGNIFICAND_BITS)}")
    exponent = math.frexp(abs(x))[1] - 1 if x else 0  # |x| in [2^e, 2^(e+1))
    return 2.0 ** (exponent - SIGNIFICAND_BITS[dtype])


def tie_margin(dtype: str, logits: Tensor, ulps: float) -> float:
    """`ulps` ulps of the runs' dtype at this position's logit scale (its largest |logit|)."""
    return ulps * ulp(dtype, logits.abs().max().item())


@dataclass
class Divergence:
    """One turn whose ids differ: where, the two tokens, and (once judged) the referee's view."""
    question_id: int
    choice: int
    turn: int  # 1-based, as MT-Bench numbers turns
    position: int  # index of the first differing new token
    tokens: tuple  # (A's token, B's token); None: that side ended before this position
    prefix: Optional[list] = field(default=None, repr=False)  # prompt + common ids; None: not judged
    klass: str = ""
    departed: list = field(default_factory=list)  # sides that left greedy decoding
    logits: tuple = (None, None)
    ranks: tuple = (None, None)  # 1 = the referee's argmax
    top: Optional[int] = None  # the referee's argmax token
    top2_gap: Optional[float] = None  # top logit - second logit
    margin: Optional[float] = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("prefix", "klass")}
        return {**out, "class": self.klass}


def check_alike(path_a: Path, rows_a: dict, path_b: Path, rows_b: dict) -> None:
    """Refuse two files of unlike runs (model, tokenizer, chat template, precision, decoding rule)
    or of different questions; rows: question id -> answer."""
    sa, sb = next(iter(rows_a.values()))["settings"], next(iter(rows_b.values()))["settings"]
    keys = SAME_SETTINGS + (("seed",) if sa.get("preset") else ())  # a preset's weights
    for key in keys:
        if sa.get(key) != sb.get(key):
            raise RefereeError(
                f"{path_a} and {path_b} come from unlike runs: {key!r} is {sa.get(key)!r} vs "
                f"{sb.get(key)!r}; the referee judges two runs of one model, tokenizer, chat "
                f"template, dtype and decoding rule that differ only in how they decode")
    if set(rows_a) != set(rows_b):
        only = sorted(set(rows_a) ^ set(rows_b))[0]
        raise RefereeError(f"{path_a} and {path_b} answer different questions (question {only} is "
                           f"in one only); judge files of the same questions")
    for qid, answer in rows_a.items():
        shape_a = [len(c["turns"]) for c in answer["choices"]]
        shape_b = [len(c["turns"]) for c in rows_b[qid]["choices"]]
        if shape_a != shape_b:
            raise RefereeError(f"question {qid}: turns per choice {shape_a} in {path_a}, "
                               f"{shape_b} in {path_b}")


def sampling_note(settings: dict) -> Optional[str]:
    """Why identical ids are not expected, for a run that samples; None for greedy runs."""
    if not samples(settings):
        return None
    return (f"sampling runs ({temperature_text(settings)}): every token is drawn at "
            f"random, and speculative sampling keeps the output distribution, not the draws, so "
            f"identical token ids are not expected and a divergence says nothing about "
            f"correctness; judge sampling runs by their output distribution, not token by token")


def first_difference(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    """Index of the first differing id (or the shorter length when one is a prefix); None if equal."""
    if list(a) == list(b):
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def find_divergences(rows_a: dict, rows_b: dict, questions: dict, tokenizer) -> list[Divergence]:
    """Every differing turn, with its shared prefix (the generator's prompt of the turn + the common
    new ids) when both sides saw the same prompt; a turn whose prompts differ (an earlier reply of
    the conversation differs) follows that earlier divergence and is not judged."""
    from .generate import chat_messages, chat_prompt_ids

    found = []
    for qid in sorted(rows_a):
        for c, (ca, cb) in enumerate(zip(rows_a[qid]["choices"], rows_b[qid]["choices"])):
            for t, (ids_a, ids_b) in enumerate(zip(ca["detail"]["token_ids"],
                                                    cb["detail"]["token_ids"])):
                p = first_difference(ids_a, ids_b)
                if p is None:
                    continue
                tokens = tuple(ids[p] if p < len(ids) else None for ids in (ids_a, ids_b))
                div = Divergence(qid, c, t + 1, p, tokens)
                users = questions[qid][:t + 1]
                prompts = [chat_prompt_ids(tokenizer, chat_messages(users, side["turns"][:t]))
                           for side in (ca, cb)]
                if prompts[0] != prompts[1]:
                    div.klass = FOLLOWS
                elif None in tokens:
                    div.klass, div.departed = REAL, [SIDES[tokens.index(None) ^ 1]]
                else:
                    div.prefix = prompts[0] + list(ids_a[:p])
                found.append(div)
    return found


def judge(div: Divergence, logits: Tensor, dtype: str, ulps: float) -> None:
    """Fill in the referee's view of one divergence from the logits [vocab] after its prefix."""
    for token in div.tokens:
        if not 0 <= token < logits.shape[0]:
            raise RefereeError(f"question {div.question_id} turn {div.turn}: token {token} is outside "
                               f"the reference model's vocabulary ({logits.shape[0]}); is this the "
                               f"base model the runs used?")
    top2 = logits.topk(2)
    div.top, div.top2_gap = int(top2.indices[0]), float(top2.values[0] - top2.values[1])
    div.margin = tie_margin(dtype, logits, ulps)
    div.logits = tuple(float(logits[t]) for t in div.tokens)
    div.ranks = tuple(int((logits > logits[t]).sum()) + 1 for t in div.tokens)
    top = float(top2.values[0])
    div.departed = [side for side, value in zip(SIDES, div.logits) if top - value > div.margin]
    div.klass = REAL if div.departed else NEAR_TIE

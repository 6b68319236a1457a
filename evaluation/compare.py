"""Compare two answer files: throughput, speedup with a bootstrap CI, acceptance, equivalence audit.

Either side may be an EAGLE run or the baseline. Two files are comparable when they answer the same
questions with the same number of choices and turns, under settings that differ only in the method /
mask implementation (and, when a baseline is involved, in the draft settings it never uses).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .answers import AnswerFileError, read_answers, settings_diff

log = logging.getLogger(__name__)

ALLOWED_KEYS = frozenset({"method", "mask_impl"})  # what a comparison is about
DRAFT_KEYS = frozenset({"draft_model", "total_token", "depth", "top_k"})  # unused by the baseline
ENVIRONMENT_KEYS = frozenset({"device_name", "torch", "transformers", "eagle", "python"})  # warn only


@dataclass
class Run:
    path: Path
    rows: list[tuple[int, dict]]  # (line number, answer), validated by `read_answers`

    @classmethod
    def load(cls, path: Path) -> "Run":
        return cls(Path(path), read_answers(Path(path)))

    @property
    def settings(self) -> dict:
        return self.rows[0][1]["settings"]

    @property
    def label(self) -> str:
        s = self.settings
        return f"eagle:{s.get('mask_impl')}" if s.get("method") == "eagle" else str(s.get("method"))

    def by_qid(self) -> dict:
        return {obj["question_id"]: (line, obj) for line, obj in self.rows}


def check_comparable(base: Run, opt: Run) -> list[str]:
    """Raise `AnswerFileError` (naming file and line) unless the runs compare; returns warnings."""
    a, b = base.by_qid(), opt.by_qid()
    for qid, (line, _) in b.items():
        if qid not in a:
            raise AnswerFileError(opt.path, line, f"question {qid} is not in {base.path}")
    for qid, (line, _) in a.items():
        if qid not in b:
            raise AnswerFileError(opt.path, len(opt.rows) + 1,
                                  f"question {qid} is missing (answered on {base.path}:{line})")
    for qid, (line_a, obj_a) in a.items():
        line_b, obj_b = b[qid]
        shape_a = [len(c["turns"]) for c in obj_a["choices"]]
        shape_b = [len(c["turns"]) for c in obj_b["choices"]]
        if shape_a != shape_b:
            raise AnswerFileError(opt.path, line_b, f"question {qid} has turns per choice {shape_b}, "
                                  f"{base.path}:{line_a} has {shape_a}")
    return _check_settings(base, opt)


def _check_settings(base: Run, opt: Run) -> list[str]:
    ignore = ALLOWED_KEYS | ENVIRONMENT_KEYS
    if "baseline" in (base.settings.get("method"), opt.settings.get("method")):
        ignore |= DRAFT_KEYS
    diff = settings_diff(base.settings, opt.settings, ignore)
    if diff:
        key = diff[0]
        raise AnswerFileError(
            opt.path, opt.rows[0][0],
            f"settings differ from {base.path}:{base.rows[0][0]} in {key!r} "
            f"({base.settings.get(key)!r} vs {opt.settings.get(key)!r}); only method and mask_impl "
            f"may differ between compared runs")
    return [f"runs differ in {k!r}: {base.settings.get(k)!r} vs {opt.settings.get(k)!r}"
            for k in settings_diff(base.settings, opt.settings) if k in ENVIRONMENT_KEYS]


@dataclass
class Mismatch:
    question_id: int
    choice: int
    turn: int  # 1-based, as MT-Bench numbers turns
    position: int  # first differing token index (or the shorter length when one is a prefix)
    baseline_token: Optional[int]  # None: that side ended there
    opt_token: Optional[int]
    baseline_len: int
    opt_len: int

    def describe(self) -> str:
        return (f"question {self.question_id}, turn {self.turn}, choice {self.choice}: first divergence "
                f"at token {self.position} (baseline {self.baseline_token}, opt {self.opt_token}; "
                f"lengths {self.baseline_len}/{self.opt_len})")


def first_divergence(x: list[int], y: list[int]) -> Optional[int]:
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return None if len(x) == len(y) else min(len(x), len(y))


def _token_at(ids: list[int], pos: int) -> Optional[int]:
    return ids[pos] if pos < len(ids) else None


def audit(base: Run, opt: Run) -> dict:
    """Per question, choice and turn: identical token ids? Where do they first diverge?"""
    b = opt.by_qid()
    turns, mismatches = 0, []
    for qid, (_, obj_a) in sorted(base.by_qid().items()):
        for c, (ca, cb) in enumerate(zip(obj_a["choices"], b[qid][1]["choices"])):
            for t, (x, y) in enumerate(zip(ca["token_ids"], cb["token_ids"])):
                turns += 1
                pos = first_divergence(x, y)
                if pos is not None:
                    mismatches.append(Mismatch(qid, c, t + 1, pos, _token_at(x, pos), _token_at(y, pos),
                                               len(x), len(y)))
    return {"turns": turns, "identical": turns - len(mismatches), "differing": len(mismatches),
            "questions_differing": len({m.question_id for m in mismatches}),
            "mismatches": [vars(m) for m in mismatches], "descriptions": [m.describe() for m in mismatches]}


def question_totals(run: Run) -> dict:
    """qid -> (category, new tokens, seconds) summed over choices and turns."""
    out = {}
    for _, obj in run.rows:
        tokens = sum(sum(c["new_tokens"]) for c in obj["choices"])
        seconds = sum(sum(c["wall_time"]) for c in obj["choices"])
        out[obj["question_id"]] = (obj["category"], tokens, seconds)
    return out


def acceptance(run: Run) -> dict:
    """Mean new tokens per decoding step (accepted draft tokens + 1) and accepted draft tokens per step."""
    steps = accepted = 0
    for _, obj in run.rows:
        for c in obj["choices"]:
            steps += sum(c["steps"])
            accepted += sum(sum(a) for a in c["accept_lengths"])
    if not steps:
        return {"steps": 0, "tokens_per_step": None, "accepted_per_step": None}
    return {"steps": steps, "tokens_per_step": (accepted + steps) / steps,
            "accepted_per_step": accepted / steps}


def side_summary(run: Run, totals: dict) -> dict:
    tokens = sum(t for _, t, _ in totals.values())
    seconds = sum(s for _, _, s in totals.values())
    return {"file": str(run.path), "label": run.label, "settings": run.settings, "questions": len(totals),
            "new_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_s_mean_per_question": float(np.mean([t / s for _, t, s in totals.values()])),
            "acceptance": acceptance(run)}


def bootstrap_ci(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray, resamples: int,
                 seed: int) -> Optional[list[float]]:
    """95% percentile CI of the speedup (ratio of total throughputs), resampling questions in pairs."""
    if resamples < 1:
        return None
    idx = np.random.default_rng(seed).integers(0, len(ta), size=(resamples, len(ta)))  # [R, Q]
    ratios = (tb[idx].sum(1) / sb[idx].sum(1)) / (ta[idx].sum(1) / sa[idx].sum(1))  # [R]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


def per_category(ta: dict, tb: dict) -> list[dict]:
    groups = defaultdict(list)
    for qid, (cat, _, _) in ta.items():
        groups[cat].append(qid)
    rows = []
    for cat, qids in sorted(groups.items()):
        tps_a = sum(ta[q][1] for q in qids) / sum(ta[q][2] for q in qids)
        tps_b = sum(tb[q][1] for q in qids) / sum(tb[q][2] for q in qids)
        rows.append({"category": cat, "questions": len(qids), "baseline_tokens_per_s": tps_a,
                     "opt_tokens_per_s": tps_b, "speedup": tps_b / tps_a})
    return rows


def compare(base: Run, opt: Run, resamples: int = 2000, seed: int = 0) -> dict:
    """The full comparison report (JSON-ready); `check_comparable` must have passed."""
    ta, tb = question_totals(base), question_totals(opt)
    qids = sorted(ta)
    arrays = [np.array([tot[q][i] for q in qids], dtype=float) for tot in (ta, tb) for i in (1, 2)]
    a_side, b_side = side_summary(base, ta), side_summary(opt, tb)
    return {
        "baseline": a_side, "opt": b_side,
        "speedup": {"value": b_side["tokens_per_s"] / a_side["tokens_per_s"],
                    "ci95": bootstrap_ci(*arrays, resamples, seed), "bootstrap": resamples, "seed": seed},
        "categories": per_category(ta, tb),
        "audit": audit(base, opt),
    }

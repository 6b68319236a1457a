"""Compare two answer files: throughput, speedup with a Student-t CI, acceptance, equivalence audit.

Either side may be an EAGLE run or the baseline. Two files are comparable when they answer the same
questions with the same number of choices and turns, under settings that differ only in the method /
mask implementation (and, when a baseline is involved, in the draft settings it never uses).
Questions answered by both files in one interleaved process (the same `interleave.run_id`) are
paired turn by turn; see `evaluation.paired` for the two estimates.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .answers import AnswerFileError, drafts, read_answers
from .machine import KEY, busy
from .paired import MIN_QUESTIONS, Band, drift_allowance, judge, spread_pct, t_interval
from .run_settings import RunSettings, samples, temperature_text

log = logging.getLogger(__name__)

ALLOWED_KEYS = frozenset({"method", "mask_impl"})  # what a comparison is about
DRAFT_KEYS = frozenset({"draft_model", "total_token", "depth", "top_k",
                        "eagle_blas"})  # unused by the baseline
ENVIRONMENT_KEYS = frozenset({"device_name", "torch", "transformers", "eagle", "python",
                              "code"})  # warn only


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
        """The interleaved run's member label (e.g. rebuild-2), else eagle:IMPL or the method."""
        interleave = self.rows[0][1].get("interleave")
        if interleave:
            return interleave["label"]
        s = self.settings
        return f"eagle:{s.get('mask_impl')}" if s.get("method") == "eagle" else str(s.get("method"))

    @property
    def fingerprint(self) -> Optional[str]:
        code = self.settings.get("code")
        return code.get("fingerprint") if isinstance(code, dict) else None

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
    return _check_settings(base, opt) + machine_warnings(base) + machine_warnings(opt)


def machine_warnings(run: Run) -> list[str]:
    """`machine.busy` at the start (first line's record) and the end (last line's) of a file."""
    first, last = run.rows[0][1]["settings"], run.rows[-1][1]["settings"]
    found = [busy(first.get(KEY), "start"), busy(last.get(KEY), "end")]
    return [f"{run.path}: {w}" for w in found if w]


def as_recorded_now(settings: dict) -> dict:
    """Settings as this version records them: EAGLE files written before `eagle_blas` existed
    ran on torch's default BLAS library, files written before `tp_world_size` on one process."""
    if settings.get("method") == "eagle" and "eagle_blas" not in settings:
        settings = {**settings, "eagle_blas": "torch default"}
    return {"tp_world_size": 1, **settings}


def _check_settings(base: Run, opt: Run) -> list[str]:
    ignore = ALLOWED_KEYS | ENVIRONMENT_KEYS
    if "baseline" in (base.settings.get("method"), opt.settings.get("method")):
        ignore |= DRAFT_KEYS
    a, b = as_recorded_now(base.settings), as_recorded_now(opt.settings)
    diff = RunSettings.from_dict(a).differences(RunSettings.from_dict(b), ignore)
    if diff:
        key = diff[0]
        raise AnswerFileError(
            opt.path, opt.rows[0][0],
            f"settings differ from {base.path}:{base.rows[0][0]} in {key!r} "
            f"({a.get(key)!r} vs {b.get(key)!r}); only method and mask_impl "
            f"may differ between compared runs")
    return [f"runs differ in {k!r}: {base.settings.get(k)!r} vs {opt.settings.get(k)!r}"
            for k in RunSettings.from_dict(base.settings).differences(
                RunSettings.from_dict(opt.settings)) if k in ENVIRONMENT_KEYS]


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


def identity_not_expected(base: Run, opt: Run) -> Optional[str]:
    """Why the two files need not agree token for token, or None where they must: greedy decoding,
    or sampling by the same method with the same seed (the settings checks enforce the seed)."""
    a, b = base.settings, opt.settings
    if not samples(a) or a.get("method") == b.get("method"):
        return None
    return (f"under sampling ({temperature_text(a)}) {a.get('method')} and "
            f"{b.get('method')} draw from different random streams (EAGLE spends draws on accepting "
            f"or rejecting drafted tokens, plain decoding one per token), so their tokens are not "
            f"expected to match")


def audit(base: Run, opt: Run) -> dict:
    """Per question, choice and turn: identical token ids? Where do they first diverge? Whether
    identity is required at all (`identity_not_expected`)."""
    b = opt.by_qid()
    turns, mismatches = 0, []
    for qid, (_, obj_a) in sorted(base.by_qid().items()):
        for c, (ca, cb) in enumerate(zip(obj_a["choices"], b[qid][1]["choices"])):
            for t, (x, y) in enumerate(zip(ca["detail"]["token_ids"], cb["detail"]["token_ids"])):
                turns += 1
                pos = first_divergence(x, y)
                if pos is not None:
                    mismatches.append(Mismatch(qid, c, t + 1, pos, _token_at(x, pos), _token_at(y, pos),
                                               len(x), len(y)))
    why_not = identity_not_expected(base, opt)
    return {"required": why_not is None, "why_not_required": why_not,
            "turns": turns, "identical": turns - len(mismatches), "differing": len(mismatches),
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
    """new tokens per step (new tokens / decoding steps, as the file counts them); the mean
    acceptance length tau of the EAGLE papers (accepted draft tokens + the bonus token, per step;
    drafting runs only); the mean of the flat accept_lengths (Spec-Bench's "mean accepted tokens")."""
    choices = [c for _, obj in run.rows for c in obj["choices"]]
    tokens = sum(sum(c["new_tokens"]) for c in choices)
    steps = sum(sum(c["decoding_steps"]) for c in choices)
    flat = [n for c in choices for n in c["accept_lengths"]]
    accepted = [a for c in choices for turn in c["detail"]["accepted_drafts"] for a in turn]
    tau = (sum(accepted) + len(accepted)) / len(accepted) if drafts(run.settings) and accepted else None
    return {"steps": steps, "new_tokens_per_step": tokens / steps if steps else None,
            "mean_acceptance_length": tau,
            "mean_accept_lengths": sum(flat) / len(flat) if flat else None}


def side_summary(run: Run, totals: dict) -> dict:
    tokens = sum(t for _, t, _ in totals.values())
    seconds = sum(s for _, _, s in totals.values())
    return {"file": str(run.path), "label": run.label, "settings": run.settings,
            "fingerprint": run.fingerprint, "questions": len(totals),
            "new_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_s_mean_per_question": float(np.mean([t / s for _, t, s in totals.values()])),
            "acceptance": acceptance(run)}


def paired_questions(base: Run, opt: Run) -> list:
    """Question ids that both files answered in one interleaved process (equal run ids)."""
    a, b = base.by_qid(), opt.by_qid()
    return sorted(q for q, (_, obj) in a.items()
                  if "interleave" in obj and "interleave" in b[q][1]
                  and obj["interleave"]["run_id"] == b[q][1]["interleave"]["run_id"])


def turn_log_ratios(obj_a: dict, obj_b: dict) -> list[float]:
    """log(opt tokens/s / baseline tokens/s) of every choice and turn of one question."""
    out = []
    for ca, cb in zip(obj_a["choices"], obj_b["choices"]):
        for ta, sa, tb, sb in zip(ca["new_tokens"], ca["wall_time"], cb["new_tokens"], cb["wall_time"]):
            out.append(float(np.log((tb / sb) / (ta / sa))))
    return out


def question_log_ratios(base: Run, opt: Run, qids: list, paired: bool) -> np.ndarray:
    """[Q] per question: the mean of its turns' log throughput ratios (paired), or the log ratio of
    its total throughputs (unpaired)."""
    a, b = base.by_qid(), opt.by_qid()
    if paired:
        return np.array([np.mean(turn_log_ratios(a[q][1], b[q][1])) for q in qids])
    ta, tb = question_totals(base), question_totals(opt)
    return np.array([np.log((tb[q][1] / tb[q][2]) / (ta[q][1] / ta[q][2])) for q in qids])


def speedup_of(base: Run, opt: Run, qids: list, paired: bool) -> dict:
    """The speedup over `qids` (geometric mean of per-question ratios) and its Student-t CI."""
    return {**t_interval(question_log_ratios(base, opt, qids, paired)), "questions": len(qids)}


def pairing(base: Run, opt: Run) -> dict:
    paired = paired_questions(base, opt)
    run_ids = sorted({base.by_qid()[q][1]["interleave"]["run_id"] for q in paired})
    return {"paired": len(paired) >= 2, "paired_questions": paired, "run_ids": run_ids,
            "questions": len(base.rows)}


def tokens_per_step(run: Run, qids: list) -> Optional[float]:
    """New tokens per decoding step over the questions `qids` (as `acceptance` counts them)."""
    by_qid = run.by_qid()
    choices = [c for q in qids for c in by_qid[q][1]["choices"]]
    steps = sum(sum(c["decoding_steps"]) for c in choices)
    return sum(sum(c["new_tokens"]) for c in choices) / steps if steps else None


def per_category(base: Run, opt: Run, qids: list, paired: bool) -> list:
    """Per category: throughputs, new tokens per step, speedup, and a CI where the category has
    MIN_QUESTIONS."""
    ta, tb = question_totals(base), question_totals(opt)
    groups = defaultdict(list)
    for qid in qids:
        groups[ta[qid][0]].append(qid)
    rows = []
    for cat, members in sorted(groups.items()):
        tps_a = sum(ta[q][1] for q in members) / sum(ta[q][2] for q in members)
        tps_b = sum(tb[q][1] for q in members) / sum(tb[q][2] for q in members)
        s = speedup_of(base, opt, members, paired)
        rows.append({"category": cat, "questions": len(members), "baseline_tokens_per_s": tps_a,
                     "opt_tokens_per_s": tps_b, "baseline_tokens_per_step": tokens_per_step(base, members),
                     "opt_tokens_per_step": tokens_per_step(opt, members), "speedup": s["value"],
                     "ci95": s["ci95"] if len(members) >= MIN_QUESTIONS else None})
    return rows


def control_applies(pair: dict, control: Optional[dict]) -> bool:
    """An A/A control judges an A/B of its kind (paired: within one process; unpaired: between
    processes) when it has enough questions for an interval."""
    return bool(control and control["ci95"] and control["questions"] >= MIN_QUESTIONS
                and control["method"] == ("paired" if pair["paired"] else "unpaired"))


def band_for(pair: dict, settings: dict, control: Optional[dict]) -> Band:
    """What the A/B is judged against: the spread of the run's A/A control when one applies, else
    nothing (paired: one process) or the drift allowance (unpaired)."""
    if control_applies(pair, control):
        return Band(spread_pct(control["ci95"]), "spread of this run's A/A control")
    if pair["paired"]:
        return Band(0.0, "")
    return drift_allowance(settings.get("device"))


def _resolution_text(speedup: dict, band: Band, paired: bool) -> str:
    drift = "" if paired else "; process drift not controlled"
    if speedup["resolvable_pct"] is None:
        return f"smallest resolvable difference not computed below {MIN_QUESTIONS} questions{drift}"
    parts = f" (CI half-width \u00b1{speedup['half_width_pct']:.1f}% + {band.source} " \
            f"\u00b1{band.pct:.1f}%)" if band.source else ""
    return f"smallest resolvable difference here \u00b1{speedup['resolvable_pct']:.1f}%{parts}{drift}"


def _tokens_text(audit_result: dict) -> str:
    counts = f"({audit_result['identical']}/{audit_result['turns']} turns identical)"
    if not audit_result["required"]:
        return f"token identity not expected {counts}"
    return f"token ids {'identical' if audit_result['differing'] == 0 else 'DIFFER'} {counts}"


def verdict_line(speedup: dict, paired: bool, band: Band, audit_result: dict) -> str:
    """One line: the judgement, the CI, paired or not, the resolution and the audit."""
    ci = speedup["ci95"]
    ci_text = f"95% CI {ci[0]:.3f}-{ci[1]:.3f}, " if ci else "no CI, "
    return (f"verdict: {speedup['judgement']}: {speedup['value']:.3f}x ({ci_text}"
            f"{'paired' if paired else 'unpaired'}, {speedup['questions']} questions); "
            f"{_resolution_text(speedup, band, paired)}; {_tokens_text(audit_result)}")


def estimate(base: Run, opt: Run) -> tuple[dict, list, dict]:
    """(pairing, the questions the speedup uses, the speedup): paired over the questions both
    files answered in one process when there are at least two, else unpaired over all."""
    pair = pairing(base, opt)
    qids = pair["paired_questions"] if pair["paired"] else sorted(base.by_qid())
    return pair, qids, speedup_of(base, opt, qids, pair["paired"])


def compare(base: Run, opt: Run, control: Optional[dict] = None) -> dict:
    """The full comparison report (JSON-ready); `check_comparable` must have passed. `control`:
    `control_speedup` of an A/A pair from the same run, which the verdict is judged against."""
    ta, tb = question_totals(base), question_totals(opt)
    pair, qids, speedup = estimate(base, opt)
    band = band_for(pair, base.settings, control)
    speedup = {**speedup, **judge(speedup, len(qids), band), "band_pct": band.pct,
               "band_source": band.source, "method": "paired" if pair["paired"] else "unpaired"}
    audit_result = audit(base, opt)
    report = {
        "baseline": side_summary(base, ta), "opt": side_summary(opt, tb), "pairing": pair,
        "speedup": speedup, "categories": per_category(base, opt, qids, pair["paired"]),
        "audit": audit_result, "verdict": verdict_line(speedup, pair["paired"], band, audit_result),
    }
    if control:
        report["control"] = {**control, "applied": control_applies(pair, control)}
    return report


def control_speedup(first: Run, second: Run) -> dict:
    """The speedup between two runs of the same code: how far the code differs from itself here."""
    pair, qids, s = estimate(first, second)
    return {"files": [str(first.path), str(second.path)], "value": s["value"], "ci95": s["ci95"],
            "questions": len(qids), "method": "paired" if pair["paired"] else "unpaired"}

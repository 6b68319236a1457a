"""Speedup estimates with Student-t intervals over questions, and the verdict they allow.

Both estimates work on per-question log throughput ratios (opt tokens/s over baseline tokens/s):
the speedup is exp(mean over questions), the geometric mean of the ratios, and its 95% CI is the
Student-t interval of that mean on the log scale (symmetric there, so the interval excludes 1.0
exactly when the effect exceeds its half-width). Paired (both files from one interleaved process):
a question's value is the mean of its turns' log ratios, each turn run side by side. Unpaired
(separate processes): a question's value is the log ratio of its total throughputs on the two
sides; drift between the processes shifts every question alike, so it is in the estimate and not
in the interval, and a verdict needs a difference beyond a drift allowance.

The verdict ("faster" / "slower") needs at least MIN_QUESTIONS questions and a CI lying entirely
outside the band of differences the run cannot tell from noise: nothing for a paired run, the
spread of an A/A control when the run has one, else the drift allowance of separate processes.
The smallest resolvable difference printed beside it is the CI's half-width plus that band.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import stats

CI_LEVEL = 0.95
# With fewer questions no distribution-free test (a sign-flip test over questions) can reach 5%
# two-sided (2 / 2**5 = 6.25%): a verdict would rest on assuming normal timing noise alone.
MIN_QUESTIONS = 6
# Process-to-process drift of the same code: the largest measured, rounded up, in percent on the
# log scale (a factor of 1 + pct/100 either way); docs/BENCHMARKS.md, "Drift between processes".
# CPU: 8 separate processes of the tiny model on a 2-core CPU shared with other jobs (load average
# 4-9; tests/data/aa_cpu_timings.json): 0.171x at worst. GPU: the same-code repeats recorded in
# the repository, 0.910x at worst (H200, eager engine; H100 runs J and K: within 3.4%); no
# H200 repeat of the current engine has been measured yet.
CPU_DRIFT_ALLOWANCE_PCT = 500.0
GPU_DRIFT_ALLOWANCE_PCT = 10.0


def _pct(log_ratio: float) -> float:
    return 100.0 * (math.exp(log_ratio) - 1.0)


def _log(pct: float) -> float:
    return math.log1p(pct / 100.0)


def log_interval(logs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logs: [..., Q] per-question log ratios (Q >= 2). The mean over questions and the Student-t
    95% half-width of that mean, both on the log scale, shape [...]."""
    n = logs.shape[-1]
    sem = logs.std(axis=-1, ddof=1) / math.sqrt(n)
    return logs.mean(axis=-1), float(stats.t.ppf((1 + CI_LEVEL) / 2, n - 1)) * sem


def resolved(mean: np.ndarray, half: np.ndarray, band_pct: float) -> np.ndarray:
    """Whether the CI (mean +- half, log scale) lies entirely outside the band +-band_pct around
    1.0: the effect exceeds the smallest resolvable difference, half-width + band."""
    return np.abs(mean) > half + _log(band_pct)


def t_interval(logs: np.ndarray) -> dict:
    """logs: [Q] per-question log ratios. The speedup exp(mean) and the Student-t 95% CI of the mean
    (None below 2 questions), with its half-width on the log scale in percent."""
    if len(logs) < 2:
        return {"value": math.exp(float(logs.mean())), "ci95": None, "half_width_pct": None}
    mean, half = (float(x) for x in log_interval(logs))
    return {"value": math.exp(mean), "ci95": [math.exp(mean - half), math.exp(mean + half)],
            "half_width_pct": _pct(half)}


def spread_pct(ci: list[float]) -> float:
    """The largest difference from 1.0 a CI admits, in percent: an A/A control's bound on how far
    the same code can differ from itself in this run."""
    return _pct(max(abs(math.log(ci[0])), abs(math.log(ci[1]))))


@dataclass
class Band:
    """Differences the run cannot tell from noise: +-pct around 1.0, and where the figure is from."""
    pct: float
    source: str


def drift_allowance(device: Optional[str]) -> Band:
    if device == "cuda":
        return Band(GPU_DRIFT_ALLOWANCE_PCT, "GPU process-drift allowance")
    return Band(CPU_DRIFT_ALLOWANCE_PCT, "CPU process-drift allowance")


def judge(estimate: dict, questions: int, band: Band) -> dict:
    """The verdict and the smallest resolvable difference (CI half-width + the band)."""
    ci = estimate["ci95"]
    if questions < MIN_QUESTIONS or ci is None:
        return {"judgement": f"too few questions for a verdict (fewer than {MIN_QUESTIONS})",
                "resolvable_pct": None}
    half, effect = _log(estimate["half_width_pct"]), math.log(estimate["value"])
    if resolved(np.array(effect), np.array(half), band.pct):
        judgement = "faster" if effect > 0 else "slower"
    else:
        judgement = "no difference resolved"
    return {"judgement": judgement, "resolvable_pct": _pct(half + _log(band.pct))}

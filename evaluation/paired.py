"""Speedup estimates with bootstrap confidence intervals over questions, paired or unpaired.

Paired (both files from one interleaved process): each turn gives the log of its throughput ratio
(opt tokens/s over baseline tokens/s, same question, choice and turn, run side by side); a question's
value is the mean over its turns; the speedup is exp(mean over questions), the geometric mean of
the paired ratios, and the CI resamples questions. Unpaired (separate processes): the ratio of
total throughputs, the CI resampling questions with both sides together; drift between the two
processes is in the estimate and not in the CI.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

CI_LEVEL = 95.0


def _percentile_ci(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [(100 - CI_LEVEL) / 2, (100 + CI_LEVEL) / 2])
    return [float(lo), float(hi)]


def _resample(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # [R, Q]


def paired_speedup(log_ratios: np.ndarray, resamples: int, seed: int) -> dict:
    """log_ratios: [Q] per-question mean log(opt tokens/s / baseline tokens/s) over its turns."""
    value = float(math.exp(log_ratios.mean()))
    ci = None
    if resamples >= 1 and len(log_ratios) >= 2:
        means = log_ratios[_resample(len(log_ratios), resamples, seed)].mean(1)  # [R]
        ci = [math.exp(x) for x in _percentile_ci(means)]
    return {"value": value, "ci95": ci}


def unpaired_speedup(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray, resamples: int,
                     seed: int) -> dict:
    """Ratio of total throughputs (tokens t, seconds s per question, [Q] each, sides a and b)."""
    value = float((tb.sum() / sb.sum()) / (ta.sum() / sa.sum()))
    ci = None
    if resamples >= 1 and len(ta) >= 2:
        idx = _resample(len(ta), resamples, seed)
        ratios = (tb[idx].sum(1) / sb[idx].sum(1)) / (ta[idx].sum(1) / sa[idx].sum(1))  # [R]
        ci = _percentile_ci(ratios)
    return {"value": value, "ci95": ci}


def resolvable_pct(ci: Optional[list[float]]) -> Optional[float]:
    """The smallest speedup this CI could tell from none, in percent: its half-width on the log
    scale (a true difference of that size puts one end of the interval at 1.0)."""
    if ci is None:
        return None
    return 100.0 * (math.exp((math.log(ci[1]) - math.log(ci[0])) / 2) - 1.0)


def judgement(ci: Optional[list[float]]) -> str:
    if ci is None:
        return "not judged (no CI: fewer than 2 questions or --bootstrap 0)"
    if ci[0] > 1.0:
        return "faster"
    if ci[1] < 1.0:
        return "slower"
    return "no difference resolved"

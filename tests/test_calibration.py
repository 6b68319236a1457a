"""The verdict's calibration: simulated A/A pairs (the same code on both sides) drawn from recorded
timings must get "faster" or "slower" in at most 5% of cases, at every number of questions,
paired and unpaired.

The recorded timings (tests/data/aa_cpu_timings.json) are the tiny model's per-turn new tokens and
wall times on a 2-core CPU shared with other jobs: one interleaved run answering the 80 questions
twice (rebuild,rebuild: an A/A pair of one process) and several separate processes of the same
command (A/A pairs between processes). The simulation is deterministic (fixed seeds):

- paired: n questions drawn with replacement from the interleaved pair; each question's log ratio
  has its sign flipped at random (under A/A which member is "A" is arbitrary);
- unpaired: two different recorded processes drawn at random, n questions drawn from those both
  answered; the log ratio of each question's throughputs carries the real drift between the two
  processes, which the drift allowance has to absorb.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.paired import (CPU_DRIFT_ALLOWANCE_PCT, MIN_QUESTIONS, Band, judge, log_interval,
                               resolved, t_interval)

DATA = Path(__file__).resolve().parent / "data" / "aa_cpu_timings.json"
SIZES = (3, 5, 10, 20, 80)
TRIALS = 20000  # Monte Carlo error of a 5% rate: +-0.15%
FALSE_RATE = 0.05


def log_tps(turns: list) -> np.ndarray:
    """[Q, T] log throughput of each recorded turn ([tokens, seconds] pairs)."""
    return np.log([[tokens / seconds for tokens, seconds in q] for q in turns])


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(DATA.read_text())


def false_rate(logs: np.ndarray, band_pct: float) -> float:
    """logs: [R, n] simulated per-question log ratios of A/A pairs. The share of verdicts."""
    if logs.shape[1] < MIN_QUESTIONS:
        return 0.0  # "too few questions for a verdict", checked through `judge` below
    mean, half = log_interval(logs)
    return float(resolved(mean, half, band_pct).mean())


def paired_draws(recorded: dict, n: int, seed: int) -> np.ndarray:
    pair = recorded["interleaved_a_a"]
    d = (log_tps(pair["b"]) - log_tps(pair["a"])).mean(axis=1)  # [Q] per-question log ratios
    rng = np.random.default_rng(seed)
    return d[rng.integers(0, len(d), (TRIALS, n))] * rng.choice([-1.0, 1.0], (TRIALS, n))


def unpaired_draws(recorded: dict, n: int, seed: int) -> np.ndarray:
    procs = [log_tps(p["turns"]) for p in recorded["processes"]]  # each [Q, T]
    totals = np.stack([np.log([sum(t for t, _ in q) / sum(s for _, s in q) for q in p["turns"]])
                       for p in recorded["processes"]])  # [P, Q] log total throughput
    assert all(p.shape == procs[0].shape for p in procs)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(procs), TRIALS)
    second = (first + rng.integers(1, len(procs), TRIALS)) % len(procs)  # another process
    questions = rng.integers(0, totals.shape[1], (TRIALS, n))
    return totals[second[:, None], questions] - totals[first[:, None], questions]  # [R, n]


@pytest.mark.parametrize("n", SIZES)
def test_paired_a_a_gets_a_verdict_at_most_5_percent_of_the_time(recorded, n):
    rate = false_rate(paired_draws(recorded, n, seed=n), band_pct=0.0)
    assert rate <= FALSE_RATE, f"{n} questions, paired: {rate:.2%} false verdicts"


@pytest.mark.parametrize("n", SIZES)
def test_unpaired_a_a_gets_a_verdict_at_most_5_percent_of_the_time(recorded, n):
    rate = false_rate(unpaired_draws(recorded, n, seed=100 + n), CPU_DRIFT_ALLOWANCE_PCT)
    assert rate <= FALSE_RATE, f"{n} questions, unpaired: {rate:.2%} false verdicts"


def test_without_the_allowance_unpaired_a_a_would_be_called_faster_or_slower(recorded):
    """The allowance is what makes unpaired verdicts honest: the interval alone misses the drift
    between processes far more often than 5%."""
    assert false_rate(unpaired_draws(recorded, 20, seed=7), band_pct=0.0) > 2 * FALSE_RATE


def test_the_vectorised_rule_is_the_verdicts_rule(recorded):
    """`judge` on single draws agrees with the vectorised rule the rates above use."""
    draws = np.concatenate([paired_draws(recorded, 10, seed=1)[:200],
                            unpaired_draws(recorded, 10, seed=2)[:200]])
    for band in (0.0, CPU_DRIFT_ALLOWANCE_PCT):
        mean, half = log_interval(draws)
        fast = resolved(mean, half, band)
        said = [judge(t_interval(d), len(d), Band(band, "x"))["judgement"] for d in draws]
        assert [s in ("faster", "slower") for s in said] == list(fast)
    small = paired_draws(recorded, 3, seed=3)[0]
    assert judge(t_interval(small), 3, Band(0.0, ""))["judgement"].startswith("too few questions")

"""Lossless speculative sampling, checked statistically against the real engine.

`EaModel.generate(prompt, temperature=T, top_p, top_k, max_new_tokens=2, seed=s)` runs on the tiny
checkpoints in fp32 on the CPU for N fixed seeds s. The first new token is sampled from the
prefill's logits; the second comes out of the first draft/verify step (a draft token accepted at
the tree's root, or the bonus token drawn from the residual). The reference is the base model's
exact distribution from transformers' own `LlamaForCausalLM` and logits warpers: p(x1) from the
prompt, p(x1, x2) = p(x1) p(x2 | x1) from one batched forward over every first token that can fill
a cell. The prompt "<|begin_of_text|>On a" opens the corpus's stories: x1 is the weather (six
words), x2 the day (seven), so the acceptance at the root has real choices to make.

Each comparison is a Pearson chi-square test over the cells of expected count >= 5, the rest
pooled into one cell; every drawn token must also lie in the reference's support (top-p / top-k
exclude tokens exactly). A case makes two tests (first token, pair) at ALPHA = 5e-6 each, so a
correct engine fails a case with probability <= 1e-5 and the five cases together with probability
<= 5e-5 (Bonferroni): alpha <= 1e-4 for the whole file. The seeds are fixed, so a run is
deterministic: the statement is over the choice of seeds. The negative controls must be rejected
at the same ALPHA: a sampler tempered at 0.8 where the reference is 1.0, and an acceptance that
accepts a candidate x with probability sqrt(p(x)) instead of p(x) (the first token untouched).
docs/SAMPLING.md gives the power of these tests.
"""
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from eagle.ea_model import EaModel
from eagle import verify

ALPHA = 5e-6  # per chi-square test; two per case
MIN_EXPECTED = 5.0  # cells expected to hold fewer draws are pooled
PROMPT = "<|begin_of_text|>On a"
TREE, CHAIN = (60, 5, 10), (6, 5, 1)  # total_token, depth, top_k


@dataclass(frozen=True)
class Setting:
    temperature: float
    top_p: float = 0.0
    top_k: int = 0


class ChiSquare(NamedTuple):
    statistic: float
    df: int
    p_value: float


def chi_square(counts: Counter, probs: dict, n: int) -> ChiSquare:
    """Pearson's test of `counts` (n draws) against `probs` (cell -> probability; cells missing
    from it, and cells expected to hold < MIN_EXPECTED draws, are pooled into one)."""
    kept = {k: p for k, p in probs.items() if n * p >= MIN_EXPECTED}
    observed = [counts[k] for k in kept] + [n - sum(counts[k] for k in kept)]
    expected = [n * p for p in kept.values()] + [n * (1.0 - sum(kept.values()))]
    if expected[-1] < MIN_EXPECTED and len(expected) > 1:  # a small pool joins the smallest cell
        small = min(range(len(kept)), key=expected.__getitem__)
        observed[small] += observed.pop()
        expected[small] += expected.pop()
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    df = len(expected) - 1
    if df < 1:
        raise ValueError("one cell holds every draw: no test (choose a prompt with choices)")
    p = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                torch.tensor(stat / 2, dtype=torch.float64))
    return ChiSquare(stat, df, float(p))


def warped(logits: torch.Tensor, s: Setting) -> torch.Tensor:
    """[B, V] logits -> float64 probabilities, transformers' warpers in the engine's order
    (upstream EAGLE's): temperature, top-p, top-k."""
    scores = TemperatureLogitsWarper(s.temperature)(None, logits.float())
    if 0.0 < s.top_p < 1.0:
        scores = TopPLogitsWarper(s.top_p)(None, scores)
    if s.top_k > 0:
        scores = TopKLogitsWarper(s.top_k)(None, scores)
    return torch.softmax(scores.double(), dim=-1)


class Reference(NamedTuple):
    first: dict  # (x1,) -> p(x1), every token
    pairs: dict  # (x1, x2) -> p(x1) p(x2 | x1), for the first tokens asked for; (x1,) if x1 stops


@torch.inference_mode()
def reference(hf: LlamaForCausalLM, prompt: list[int], s: Setting, n: int, drawn: set,
              stop_ids: frozenset) -> Reference:
    """The exact distributions; p(x2 | x1) for the first tokens that can fill a pair cell
    (n p(x1) >= MIN_EXPECTED) and for those drawn (the support check)."""
    ids = torch.tensor([prompt])
    p1 = warped(hf(ids).logits[:, -1], s)[0]
    heads = sorted({int(t) for t in torch.nonzero(n * p1 >= MIN_EXPECTED).flatten()} | drawn)
    heads = [t for t in heads if t not in stop_ids]
    pairs = {(t,): float(p1[t]) for t in stop_ids}
    if heads:
        rows = torch.cat((ids.repeat(len(heads), 1), torch.tensor(heads)[:, None]), dim=1)
        p2 = warped(hf(rows).logits[:, -1], s) * p1[heads][:, None]  # [heads, V]
        pairs.update({(t, x): float(p2[i, x]) for i, t in enumerate(heads)
                      for x in torch.nonzero(p2[i]).flatten().tolist()})
    return Reference({(t,): float(p) for t, p in enumerate(p1.tolist())}, pairs)


def draw(ea: EaModel, prompt: list[int], s: Setting, seeds: range) -> list[tuple]:
    ids = torch.tensor([prompt])
    return [tuple(ea.generate(ids, s.temperature, s.top_p, s.top_k, max_new_tokens=2,
                              seed=seed).new_token_ids) for seed in seeds]


def compare(samples: list[tuple], ref: Reference) -> tuple[ChiSquare, ChiSquare]:
    """(first token, pair) tests of `samples` against `ref`, after the support check."""
    outside = [x for x in samples if ref.pairs.get(x, 0.0) <= 0.0]
    assert not outside, f"drawn outside the reference's support: {outside[:5]}"
    n = len(samples)
    return (chi_square(Counter(x[:1] for x in samples), ref.first, n),
            chi_square(Counter(samples), ref.pairs, n))


@pytest.fixture(scope="module")
def hf_base(tiny_ckpt):
    model = LlamaForCausalLM.from_pretrained(tiny_ckpt / "base", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt / "base")
    return model, tokenizer.encode(PROMPT, add_special_tokens=False)


@pytest.fixture(scope="module")
def engines(tiny_ckpt, one_thread):
    """engines(tree): an fp32 CPU EaModel with that (total_token, depth, top_k), built once."""
    built = {}

    def get(tree: tuple) -> EaModel:
        if tree not in built:
            built[tree] = EaModel.from_pretrained(
                tiny_ckpt / "base", tiny_ckpt / "draft", *tree, torch_dtype=torch.float32,
                device_map="cpu", max_length=128)
        return built[tree]

    return get


def run_case(engines, hf_base, tree: tuple, drawn_with: Setting, tested_against: Setting,
             seeds: range) -> tuple[ChiSquare, ChiSquare]:
    hf, prompt = hf_base
    ea = engines(tree)
    samples = draw(ea, prompt, drawn_with, seeds)
    ref = reference(hf, prompt, tested_against, len(samples), {x[0] for x in samples},
                    ea.stop_ids)
    return compare(samples, ref)


CASES = {  # name: (tree, setting, draws); each case its own seeds
    "t1.0_tree": (TREE, Setting(1.0), 1200),
    "t0.7_tree": (TREE, Setting(0.7), 800),
    "top_p0.9_tree": (TREE, Setting(1.0, top_p=0.9), 800),
    "top_k20_tree": (TREE, Setting(1.0, top_k=20), 800),
    "t1.0_chain": (CHAIN, Setting(1.0), 800),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_first_token_and_pair_follow_the_base(case, engines, hf_base):
    tree, setting, n = CASES[case]
    start = 100_000 * (1 + list(CASES).index(case))
    first, pair = run_case(engines, hf_base, tree, setting, setting, range(start, start + n))
    assert first.p_value >= ALPHA, first
    assert pair.p_value >= ALPHA, pair


@pytest.mark.slow
def test_rejects_a_sampler_tempered_at_0_8(engines, hf_base):
    _, pair = run_case(engines, hf_base, TREE, Setting(0.8), Setting(1.0), range(800))
    assert pair.p_value < ALPHA, pair


@pytest.mark.slow
def test_rejects_an_acceptance_biased_toward_the_draft(engines, hf_base, monkeypatch):
    fair = verify.acceptance_odds
    monkeypatch.setattr(verify, "acceptance_odds", lambda *args: fair(*args).sqrt())
    _, pair = run_case(engines, hf_base, TREE, Setting(1.0), Setting(1.0), range(800))
    assert pair.p_value < ALPHA, pair


def test_chi_square_matches_known_values():
    """sf(3.841, df=1) = 0.05; a perfect fit has p = 1; pooling keeps the counts' total."""
    probs = {"a": 0.5, "b": 0.3, "c": 0.199, "d": 0.001}
    exact = chi_square(Counter(a=500, b=300, c=199, d=1), probs, 1000)
    assert exact.statistic == pytest.approx(0.0, abs=1e-9) and exact.df == 2  # d joins c
    one = chi_square(Counter(a=50 + 9.8, b=50 - 9.8), {"a": 0.5, "b": 0.5}, 100)
    assert one.df == 1 and one.p_value == pytest.approx(0.05, rel=2e-3)

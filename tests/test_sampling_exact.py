"""Lossless speculative sampling, checked exactly: every branch of the engine's own acceptance.

On a vocabulary of 5-6 tokens, a toy base model (logits a fixed function of the context) and a toy
draft build each step's tree the way EAGLE does: a node's children are the draft's top-k tokens
after it, a deterministic function of the context. The engine's acceptance
(`accept_sampling_on_device`) is a function of a block of uniform draws: child n at depth d is
accepted when draws[d, n] < its odds, the bonus token comes from the residual by inverse CDF. A
depth-first walk visits every branch of one step once: at each depth, "the i-th child is the first
accepted" (weight: the odds of the children before it rejected, its own accepted) or "none, then
token t" (weight: all rejected, times t's share of the residual). For each branch the walk builds
draws that lie on the branch's edges (a rejected child's draw equal to its odds, an accepted one's
just below it) and checks that the engine, given them, takes exactly that branch; so the weights
are the measure of the uniform draws that lead there. Steps compose: when a step yields fewer
than L tokens, the next step (its tree drafted from the longer context) supplies the rest. The
distribution of the first L = 3 tokens must equal the product of the base's conditionals,
processed by transformers' own temperature / top-p / top-k warpers (an independent reference), to
float32 rounding.

Why the rule is right for EAGLE's trees: the candidates are not samples from the draft but its
top-k, fixed before the coin flips, so the draft is a point mass on each candidate in turn. Testing
candidate x with probability p(x), and on rejection removing x from p and renormalising, samples p
exactly by induction over the siblings. A ratio rule min(1, p/q) with q the draft's probabilities
(recursive rejection sampling, right for candidates drawn i.i.d. from q) is not lossless here:
`test_draft_ratio_rule_is_not_lossless_for_top_k_candidates` shows it on a single candidate.
"""
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from eagle import verify
from eagle.tree.masks import build_tree_buffers
from eagle.verify import Sampler, SamplerState, accept_sampling

pytestmark = pytest.mark.usefixtures("one_thread")  # toy-sized batched ops: threads only cost

TOL = 2e-6  # float32 probabilities, renormalised after each rejection
Shape = tuple  # a node's children, best draft rank first, each a Shape itself


def uniform_shape(*widths: int) -> Shape:
    """Every node at depth d has widths[d] children."""
    return tuple(uniform_shape(*widths[1:]) for _ in range(widths[0])) if widths else ()


def chain(depth: int) -> Shape:
    return uniform_shape(*[1] * depth)


@dataclass(frozen=True)
class World:
    """A toy base and draft over `vocab` tokens. draft: "near" (base logits plus noise), "same"
    (the base's logits) or "reversed" (the base's ranking upside down)."""

    vocab: int
    shape: Shape
    draft: str = "near"
    seed: int = 0

    def _randn(self, ctx: tuple, salt: int) -> torch.Tensor:
        key = (self.seed * 7919 + salt) % 104729
        for t in ctx:
            key = (key * 31 + t + 1) % 2147483647
        return torch.randn(self.vocab, generator=torch.Generator().manual_seed(key))

    def base(self, ctx: tuple) -> torch.Tensor:
        return 1.5 * self._randn(ctx, 1)

    def draft_rank(self, ctx: tuple) -> list[int]:
        logits = {"near": self.base(ctx) + self._randn(ctx, 2), "same": self.base(ctx),
                  "reversed": -self.base(ctx)}[self.draft]
        return torch.argsort(logits, descending=True, stable=True).tolist()


@dataclass(frozen=True)
class Step:
    tokens: torch.Tensor  # [T+1], node 0 the root (the context's last token)
    logits: torch.Tensor  # [T+1, V] base logits after each node's path
    retrieve: torch.Tensor  # [leaves, depth+1] node paths, -1 padded


@lru_cache(maxsize=None)
def draft_step(world: World, ctx: tuple) -> Step:
    """The tree of `world.shape` over the draft's top-k, nodes numbered breadth first."""
    tokens, parents, contexts = [ctx[-1]], [], [ctx]
    frontier = [(0, ctx, world.shape)]
    while frontier:
        nxt = []
        for node, node_ctx, shape in frontier:
            for token, child_shape in zip(world.draft_rank(node_ctx), shape):
                tokens.append(token)
                parents.append(node)
                contexts.append(node_ctx + (token,))
                nxt.append((len(tokens) - 1, contexts[-1], child_shape))
        frontier = nxt
    depth = max(len(c) for c in contexts) - len(ctx)
    retrieve = build_tree_buffers(torch.tensor(parents), depth, "rebuild").retrieve_indices
    return Step(torch.tensor(tokens), torch.stack([world.base(c) for c in contexts]), retrieve)


def target(logits: torch.Tensor, settings: Sampler) -> torch.Tensor:
    """transformers' warpers in the engine's (upstream EAGLE's) order: temperature, top-p, top-k."""
    scores = TemperatureLogitsWarper(settings.temperature)(None, logits[None].clone())
    if 0.0 < settings.top_p < 1.0:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    if settings.top_k > 0:
        scores = TopKLogitsWarper(settings.top_k)(None, scores)
    return torch.softmax(scores[0].double(), dim=-1)


def state_for(settings: Sampler) -> SamplerState:
    state = SamplerState(torch.device("cpu"))
    state.load(settings)
    return state


def step_outcomes(step: Step, settings: Sampler) -> dict:
    """Every outcome (accepted tokens + bonus, a tuple) of one engine step, with its probability
    under uniform draws; each branch checked against the engine fed the branch's draws."""
    state, out = state_for(settings), defaultdict(float)
    n, c = step.tokens.shape[0], step.retrieve.shape[1]
    probs = state.probs(step.logits)  # [T+1, V]
    parent = verify.tree_links(step.retrieve, n).parent
    odds = verify.acceptance_odds(probs, step.tokens, parent)
    stack = [(0, 0, 1.0, torch.zeros(c, n), [])]  # (depth, node, weight, draws so far, tokens)
    while stack:
        d, node, weight, draws, toks = stack.pop()
        children = parent == node
        rejected = draws.clone()
        for child in torch.nonzero(children).flatten().tolist():
            a = float(odds[child])
            if a > 0:
                taken = rejected.clone()
                taken[d, child] = torch.nextafter(odds[child], torch.tensor(0.0))
                stack.append((d + 1, child, weight * a, taken, toks + [int(step.tokens[child])]))
            rejected[d, child] = odds[child]
            weight *= 1.0 - a
        r = verify.residual(probs[node], step.tokens, children).double()
        cdf = r.cumsum(0)
        for t in torch.nonzero(r).flatten().tolist():
            final = rejected.clone()
            final[0, 0] = float((cdf[t] - r[t] / 2) / cdf[-1])  # the middle of t's interval
            outcome = tuple(toks + [t])
            got = accept_sampling(step.logits, step.tokens, step.retrieve, state, final)
            assert tuple(got.tokens) == outcome, (got.tokens, outcome)
            out[outcome] += weight * float(r[t] / cdf[-1])
    return out


def engine_prefixes(world: World, ctx: tuple, settings: Sampler, n: int) -> dict:
    """P(first n new tokens) when decoding from `ctx` with as many steps as it takes."""
    out = defaultdict(float)
    for tokens, w in step_outcomes(draft_step(world, ctx), settings).items():
        head = tokens[:n]
        if len(head) == n:
            out[head] += w
            continue
        for rest, w2 in engine_prefixes(world, ctx + head, settings, n - len(head)).items():
            out[head + rest] += w * w2
    return out


def target_prefixes(world: World, ctx: tuple, settings: Sampler, n: int) -> dict:
    p = target(world.base(ctx), settings)
    if n == 1:
        return {(t,): float(p[t]) for t in range(world.vocab) if p[t] > 0}
    return {(t,) + rest: float(p[t]) * w for t in range(world.vocab) if p[t] > 0
            for rest, w in target_prefixes(world, ctx + (t,), settings, n - 1).items()}


def first_tokens(prefixes: dict) -> dict:
    out = defaultdict(float)
    for k, w in prefixes.items():
        out[k[:1]] += w
    return out


def max_gap(a: dict, b: dict) -> float:
    return max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


IRREGULAR = (((((),), ()), ((),), (), ()))  # root: 4 children; the best has 2, the next 1
CASES = {
    "chain": (World(5, chain(3)), Sampler(1.0)),
    "chain_t07": (World(6, chain(4), seed=1), Sampler(0.7)),
    "width2": (World(5, uniform_shape(2, 2, 2), seed=2), Sampler(1.0)),
    "width3_t07": (World(5, uniform_shape(3, 2), seed=3), Sampler(0.7)),
    "width4_irregular": (World(6, IRREGULAR, seed=4), Sampler(1.0)),
    "draft_equals_target": (World(5, uniform_shape(3, 2), draft="same", seed=5), Sampler(1.0)),
    "draft_disjoint": (World(5, uniform_shape(3, 2), draft="reversed", seed=6),
                       Sampler(1.0, top_k=2)),
    "top_p": (World(5, uniform_shape(3, 2), seed=10), Sampler(1.0, top_p=0.8)),
    "top_k": (World(6, uniform_shape(4, 1), seed=8), Sampler(0.7, top_k=3)),
    "top_p_and_top_k": (World(6, uniform_shape(4, 2), seed=9), Sampler(1.3, top_p=0.9, top_k=4)),
}


@pytest.mark.parametrize("case", CASES)
def test_first_three_tokens_follow_the_target_exactly(case):
    world, settings = CASES[case]
    ctx = (0,)
    got = engine_prefixes(world, ctx, settings, 3)
    assert abs(sum(got.values()) - 1.0) < TOL  # every branch visited once
    want = target_prefixes(world, ctx, settings, 3)
    assert max_gap(got, want) < TOL, case
    assert max_gap(first_tokens(got), target_prefixes(world, ctx, settings, 1)) < TOL


def test_disjoint_draft_never_gets_a_token_accepted():
    """All root candidates lie outside the top-2 support: every outcome is the bonus alone."""
    world, settings = CASES["draft_disjoint"]
    step = draft_step(world, (0,))
    support = set(torch.nonzero(target(step.logits[0], settings)).flatten().tolist())
    assert not support & set(step.tokens[1:4].tolist())
    assert all(len(t) == 1 and t[0] in support for t in step_outcomes(step, settings))


@pytest.mark.parametrize("case", ["chain", "width4_irregular", "top_p"])
def test_the_enumeration_catches_a_biased_acceptance(case, monkeypatch):
    """The check has teeth: the same enumeration of an acceptance that takes candidate x with
    probability sqrt(odds) > odds misses the target."""
    fair = verify.acceptance_odds
    monkeypatch.setattr(verify, "acceptance_odds", lambda *args: fair(*args).sqrt())
    world, settings = CASES[case]
    got = engine_prefixes(world, (0,), settings, 2)
    assert abs(sum(got.values()) - 1.0) < TOL
    assert max_gap(got, target_prefixes(world, (0,), settings, 2)) > 0.01


def ratio_rule_first_token(p: torch.Tensor, q: torch.Tensor, candidates: list[int]) -> torch.Tensor:
    """P(first token) when candidate x is accepted with min(1, p(x)/q(x)) and a rejection leaves
    p <- norm(max(p - q, 0)) and q <- q without x, renormalised: recursive rejection sampling,
    lossless for candidates drawn from q, here applied to fixed candidates."""
    out, stay = torch.zeros_like(p), 1.0
    for x in candidates:
        a = min(1.0, float(p[x] / q[x]))
        out[x] += stay * a
        stay *= 1.0 - a
        if stay == 0.0:
            break
        p = (p - q).clamp(min=0.0)
        p, q = p / p.sum(), q.index_fill(0, torch.tensor([x]), 0.0)
        q = q / q.sum()
    return out + stay * p


def test_draft_ratio_rule_is_not_lossless_for_top_k_candidates():
    """With the draft's own probabilities in the acceptance test, the top-3 candidates of one
    root come out with the wrong probabilities (with q = p and one candidate x, it even emits x
    always); the engine's point-mass rule on the same step gives the target."""
    world, settings = World(5, uniform_shape(3), seed=3), Sampler(1.0)
    step = draft_step(world, (0,))
    p = target(step.logits[0], settings)
    q = torch.softmax(world.base((0,)).double() + world._randn((0,), 2).double(), dim=-1)
    candidates = step.tokens[1:].tolist()
    assert candidates == torch.topk(q, 3).indices.tolist()
    assert float((ratio_rule_first_token(p, q, candidates) - p).abs().max()) > 0.01
    got = first_tokens(step_outcomes(step, settings))
    assert max_gap(got, target_prefixes(world, (0,), settings, 1)) < TOL


def test_a_zero_probability_candidate_is_never_accepted():
    """A draft token outside the top-k support must be rejected even when its uniform draw is 0
    (torch.rand can return exactly 0.0)."""
    world = World(5, chain(1), draft="reversed")
    step = draft_step(world, (0,))
    state = state_for(Sampler(1.0, top_k=2))
    assert state.probs(step.logits[0])[step.tokens[1]] == 0.0
    zeros = torch.zeros(step.retrieve.shape[1], step.tokens.shape[0])
    acc = accept_sampling(step.logits, step.tokens, step.retrieve, state, zeros)
    assert acc.accept_length == 0 and state.probs(step.logits[0])[acc.tokens[0]] > 0


def test_the_bonus_draw_never_lands_on_a_token_of_weight_zero():
    """u * total rounding up to the total still picks a token of positive weight."""
    weights = torch.tensor([0.0, 0.3, 0.7, 0.0])
    assert int(verify.inverse_cdf(weights, torch.tensor(1.0))) == 2
    assert int(verify.inverse_cdf(weights, torch.tensor(0.0))) == 1

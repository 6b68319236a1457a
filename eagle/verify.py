"""Verification: which drafted path does the base model accept, and which token follows it.

Greedy: a path's accepted length is the longest prefix of draft tokens equal to the base argmax at
the previous node; the first row with the maximum length wins; the bonus token is the base argmax
after the last accepted node. Sampling (temperature > 0) follows upstream EAGLE: walk the tree level
by level, accept child x with probability p_base(x), on rejection zero p(x) and renormalise; the
residual (or, past the last level, the fresh) distribution samples the bonus token. The siblings
are the draft's top-k, a deterministic function of the context, so the draft is a point mass on
each candidate in turn (q(x) = 1) and this sequential test samples p_base exactly.

Both run on the device with fixed shapes and no host read, so a captured step replays either.
Sampling spends a fixed block of uniform draws per step (`accept_sampling_on_device`), from a
generator of its own (`SamplerState`) that CUDA graphs advance as eager calls do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor


class Acceptance(NamedTuple):
    path: Tensor  # [a+1] node indices on the device, root first
    tokens: list[int]  # the a accepted draft tokens followed by the bonus token (a+1 ids)

    @property
    def accept_length(self) -> int:
        return len(self.tokens) - 1


class AcceptResult(NamedTuple):
    """An acceptance with fixed shapes, all on the device (C = retrieve width): greedy's as
    computed there, a sampled one padded to this form."""

    path: Tensor  # [C] node indices, root first; entries past `count` are 0
    tokens: Tensor  # [C] accepted draft tokens then the bonus token; entries past `count` are 0
    count: Tensor  # 0-d int64: accepted draft tokens + 1


ARGMAX_PARTS = 64  # `first_argmax` cuts a row into up to this many parts


def first_argmax(x: Tensor) -> Tensor:
    """`x.argmax(dim=-1)`, the first of equal maxima, in two passes: the maxima of equal parts of
    each row, then the first part holding the largest. A GPU reduces one long row in one block of
    threads (35 µs for a 128k vocabulary on an H200); parts of it fill the device."""
    v = x.shape[-1]
    parts = math.gcd(v, ARGMAX_PARTS)
    if parts == 1:
        return x.argmax(dim=-1)
    best, at = x.unflatten(-1, (parts, v // parts)).max(dim=-1)  # the first maximum of each part
    part = best.argmax(dim=-1, keepdim=True)
    return (part * (v // parts) + at.gather(-1, part)).squeeze(-1)


def accept_greedy_on_device(logits: Tensor, tokens: Tensor, retrieve: Tensor) -> AcceptResult:
    """logits: [T+1, V] base logits per node; tokens: [T+1]; retrieve: [R, C] (-1 padded).

    No host synchronisation: the tokens that come out are the base's own choices along the
    winning path (an accepted draft token equals the base argmax before it), bonus included."""
    pad = torch.full((1,), -1, dtype=torch.long, device=tokens.device)
    pred = first_argmax(logits)  # [T+1] base choice after each node
    cand = torch.cat((tokens, pad))[retrieve]  # [R, C]; index -1 hits the pad
    pred_at = torch.cat((pred, pad))[retrieve]  # [R, C]
    agree = (cand[:, 1:] == pred_at[:, :-1]) & (retrieve[:, 1:] >= 0)  # padding never agrees
    run = agree.long().cumprod(dim=1).sum(dim=1)  # [R]
    best = run.argmax().view(1)  # first row of maximum length (index_select: no host read)
    length = run.max()
    keep = torch.arange(retrieve.shape[1], device=tokens.device) <= length  # [C]
    zero = torch.zeros_like(keep, dtype=torch.long)
    path, toks = retrieve.index_select(0, best)[0], pred_at.index_select(0, best)[0]
    return AcceptResult(torch.where(keep, path, zero), torch.where(keep, toks, zero), length + 1)


def read_accepted(count: Tensor, tokens: Tensor) -> list[int]:
    """The first `count` (0-d) of `tokens` [C] on the host, in one device->host copy."""
    host = torch.cat((count[None], tokens)).tolist()
    return host[1:1 + host[0]]


def accept_greedy(logits: Tensor, tokens: Tensor, retrieve: Tensor) -> Acceptance:
    """`accept_greedy_on_device` read back to the host."""
    res = accept_greedy_on_device(logits, tokens, retrieve)
    accepted = read_accepted(res.count, res.tokens)
    return Acceptance(res.path[: len(accepted)], accepted)


@dataclass(frozen=True)
class Sampler:
    """Sampling settings: upstream's logits processing (temperature, then top-p, then top-k) and
    the seed of the random draws."""

    temperature: float
    top_p: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("Sampler needs temperature > 0 (use greedy decoding otherwise)")
        if not 0.0 <= self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError("top_p must be in [0, 1] and top_k >= 0")

    @property
    def shape(self) -> tuple[bool, int]:
        """What a captured sampling step depends on: whether top-p applies, and top-k (a shape).
        The temperature and top-p values are read from device buffers at every replay."""
        return (0.0 < self.top_p < 1.0, self.top_k)


class SamplerState:
    """What a sampling step reads, at fixed addresses: temperature and top-p on the device, the
    settings' shape, and a random generator on the device, seeded by `load` for each call."""

    def __init__(self, device: torch.device):
        self.temperature = torch.ones((), device=device)
        self.top_p = torch.ones((), device=device)
        self.generator = torch.Generator(device=device)
        self.shape: tuple[bool, int] = (False, 0)

    def load(self, sampler: Sampler) -> None:
        self.temperature.fill_(sampler.temperature)
        self.top_p.fill_(sampler.top_p)
        self.generator.manual_seed(sampler.seed)
        self.shape = sampler.shape

    def probs(self, logits: Tensor) -> Tensor:
        """logits [V] -> probabilities [V] (float32, on the logits' device)."""
        x = logits.float() / self.temperature
        use_top_p, top_k = self.shape
        if use_top_p:
            srt, order = torch.sort(x)
            cum = torch.softmax(srt, dim=-1).cumsum(dim=-1)
            drop = cum <= 1 - self.top_p
            drop[-1:].fill_(False)  # keep at least the most likely token (a kernel: no host copy)
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        if top_k > 0:
            kth = torch.topk(x, min(top_k, x.shape[-1])).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        return torch.softmax(x, dim=-1)

    def draws(self, *shape: int) -> Tensor:
        """Uniform draws in [0, 1) of `shape` from this state's generator."""
        return torch.rand(shape, generator=self.generator, device=self.temperature.device)

    def sample(self, logits: Tensor) -> Tensor:
        """One token (0-d, on the device) from the processed `logits` [V]."""
        return inverse_cdf(self.probs(logits), self.draws())


def inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """The token (0-d) whose cumulative interval of `weights` [V] (any positive total) holds
    u * total, u (0-d) in [0, 1): token t with probability weights[t] / total, never a token of
    weight 0 (a rounding overshoot of the total lands on the last token of positive weight)."""
    cdf = weights.cumsum(dim=-1)
    t = torch.searchsorted(cdf, (u * cdf[-1]).view(1), right=True)[0]
    order = torch.arange(weights.shape[-1], device=weights.device)
    return torch.minimum(t, ((weights > 0).long() * order).argmax())


def children_of(retrieve: Tensor, node: Tensor, depth: int, n: int) -> Tensor:
    """[n] bool (n = T+1 nodes): the children of `node` (0-d), at column `depth` of `retrieve`."""
    below = retrieve[:, depth + 1]
    hit = (retrieve[:, depth] == node) & (below >= 0)
    slot = torch.where(hit, below, torch.full_like(below, n))  # slot n collects the misses
    return torch.zeros(n + 1, dtype=torch.bool, device=retrieve.device).scatter_(0, slot, True)[:n]


def residual(p: Tensor, tokens: Tensor, children: Tensor) -> Tensor:
    """p [V] with the children's tokens (tokens [T+1] at nodes where `children`) zeroed."""
    v = p.shape[-1]
    slot = torch.where(children, tokens, torch.full_like(tokens, v))
    hit = torch.zeros(v + 1, dtype=torch.bool, device=p.device).scatter_(0, slot, True)[:v]
    return p.masked_fill(hit, 0.0)


def candidate_odds(p: Tensor, tokens: Tensor, children: Tensor) -> Tensor:
    """[T+1]: the probability of accepting each child (in node order) once the earlier children are
    rejected: p(x) over the mass p has left after zeroing the earlier children's tokens (0 for a
    token an earlier child holds, 0 off the children). When the children hold all of p's mass,
    the last child of positive mass is accepted surely (so rounding never rejects them all)."""
    order = torch.arange(tokens.shape[0], device=tokens.device)
    earlier = (tokens[:, None] == tokens[None, :]) & children[None, :] & (order[None, :] < order[:, None])
    mass = torch.where(children & ~earlier.any(dim=1), p.index_select(0, tokens), 0.0)
    left = p.sum() - (mass.cumsum(dim=0) - mass)
    odds = torch.where(mass > 0, mass / left.clamp(min=torch.finfo(p.dtype).tiny), 0.0).clamp(max=1.0)
    last = ((mass > 0).long() * order).argmax()
    covered = residual(p, tokens, children).sum() <= 0
    return torch.where(covered & (order == last) & (mass > 0), 1.0, odds)


def accept_sampling_on_device(logits: Tensor, tokens: Tensor, retrieve: Tensor,
                              state: SamplerState, draws: Optional[Tensor] = None) -> AcceptResult:
    """The sampled acceptance with fixed shapes and no host read (C = retrieve width). At depth d,
    from the last accepted node: child n is accepted when draws[d, n] < its odds
    (`candidate_odds`), the first accepted in node order wins; none accepted, the bonus token is
    drawn from the residual by inverse CDF with draws[0, 0] (the root's slot, never a child's),
    and the walk stops.

    draws: [C, T+1] uniforms in [0, 1) (more rows are ignored); default: drawn from `state`'s
    generator."""
    n, c, dev = tokens.shape[0], retrieve.shape[1], tokens.device
    draws = state.draws(c, n) if draws is None else draws
    cur, count = torch.zeros((), dtype=torch.long, device=dev), torch.ones((), dtype=torch.long, device=dev)
    alive = torch.ones((), dtype=torch.bool, device=dev)
    path, out = torch.zeros(c, dtype=torch.long, device=dev), torch.zeros(c, dtype=torch.long, device=dev)
    none = torch.zeros(n, dtype=torch.bool, device=dev)
    stop_p, stop_children = None, none
    for d in range(c):
        p = state.probs(logits.index_select(0, cur.view(1))[0])
        children = children_of(retrieve, cur, d, n) if d < c - 1 else none
        accepted = draws[d] < candidate_odds(p, tokens, children)
        took, chosen = alive & accepted.any(), accepted.long().argmax()
        stops = alive & ~took
        stop_p = p if stop_p is None else torch.where(stops, p, stop_p)
        stop_children = torch.where(stops, children, stop_children)
        count = torch.where(stops, d + 1, count)
        if d < c - 1:
            path[d + 1] = torch.where(took, chosen, 0)
            out[d] = torch.where(took, tokens.index_select(0, chosen.view(1))[0], 0)
        cur, alive = torch.where(took, chosen, cur), took
    bonus = inverse_cdf(residual(stop_p, tokens, stop_children), draws[0, 0])
    out = torch.where(torch.arange(c, device=dev) == count - 1, bonus, out)
    return AcceptResult(path, out, count)


def accept_sampling(logits: Tensor, tokens: Tensor, retrieve: Tensor, state: SamplerState,
                    draws: Optional[Tensor] = None) -> Acceptance:
    """`accept_sampling_on_device` read back to the host."""
    res = accept_sampling_on_device(logits, tokens, retrieve, state, draws)
    accepted = read_accepted(res.count, res.tokens)
    return Acceptance(res.path[: len(accepted)], accepted)

"""Verification: which drafted path does the base model accept, and which token follows it.

Greedy: a path's accepted length is the longest prefix of draft tokens equal to the base argmax at
the previous node; the first row with the maximum length wins; the bonus token is the base argmax
after the last accepted node. Sampling (temperature > 0) follows upstream EAGLE: walk the tree level
by level, accept child x with probability p_base(x), on rejection zero p(x) and renormalise; the
residual (or, past the last level, the fresh) distribution samples the bonus token. The siblings
are the draft's top-k, a deterministic function of the context, so the draft is a point mass on
each candidate in turn (q(x) = 1) and this sequential test samples p_base exactly.

Both run on the device with fixed shapes and no host read, so a captured step replays either.
Sampling processes the T+1 rows of logits in one batched pass and computes every node's odds at
once (`acceptance_odds`), so the walk is a gather per level; it spends a fixed block of uniform
draws per step (`accept_sampling_on_device`), from a generator of its own (`SamplerState`) that
CUDA graphs advance as eager calls do, and its cumulative sums run in a fixed order
(`cumsum_rows`), so that a replayed step draws what an eager one draws. On a GPU's fused path the
processing and the acceptance run through torch.compile (`compiled`): the same function in a few
generated kernels, eager and captured alike.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

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
    settings' shape, and a random generator on the device, seeded by `load` for each call; and
    whether its processing and acceptance run compiled (`compiled`)."""

    def __init__(self, device: torch.device):
        self.temperature = torch.ones((), device=device)
        self.top_p = torch.ones((), device=device)
        self.generator = torch.Generator(device=device)
        self.shape: tuple[bool, int] = (False, 0)
        self.compiled = False

    def load(self, sampler: Sampler, compiled: bool = False) -> None:
        """Settings and a fresh seed for one call; `compiled`: run the sampling functions through
        `torch.compile` (a GPU's fused path: a few generated kernels instead of ~120 small ones)."""
        self.temperature.fill_(sampler.temperature)
        self.top_p.fill_(sampler.top_p)
        self.generator.manual_seed(sampler.seed)
        self.shape = sampler.shape
        self.compiled = compiled

    def run(self, fn: Callable[..., Any], *args: Tensor) -> Any:
        """fn(*args, temperature, top_p, use_top_p, top_k), compiled where `compiled`."""
        return (compiled(fn) if self.compiled else fn)(*args, self.temperature, self.top_p,
                                                         *self.shape)

    def probs(self, logits: Tensor) -> Tensor:
        """logits [..., V] -> probabilities [..., V] (`processed_probs` with these settings)."""
        return self.run(processed_probs, logits)

    def draws(self, *shape: int) -> Tensor:
        """Uniform draws in [0, 1) of `shape` from this state's generator."""
        return torch.rand(shape, generator=self.generator, device=self.temperature.device)

    def sample(self, logits: Tensor) -> Tensor:
        """One token (0-d, on the device) from the processed `logits` [V]."""
        return self.run(sample_token, logits, self.draws())


@functools.cache
def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` through torch.compile, one graph (the settings' shape, given as Python values, is
    specialised on: a compilation per shape and tensor size). Up to 64 compilations each, not
    torch's default 8, past which it would run `fn` uncompiled: the tokens drawn at a near-tie
    would then hang on how many shapes the process had met before."""
    return torch._dynamo.config.patch(recompile_limit=64)(
        torch.compile(fn, fullgraph=True, dynamic=False))


def processed_probs(logits: Tensor, temperature: Tensor, top_p: Tensor, use_top_p: bool,
                    top_k: int) -> Tensor:
    """logits [..., V] -> probabilities [..., V] (float32, on the logits' device), row by row:
    temperature, then top-p (when `use_top_p`), then top-k (when > 0). Top-p sorts the logits as
    they come (the temperature keeps their order; half precision keys sort faster)."""
    x = logits.float() / temperature
    if use_top_p:
        order = torch.sort(logits, dim=-1).indices
        cum = cumsum_rows(torch.softmax(x.gather(-1, order), dim=-1))
        drop = cum <= 1 - top_p
        drop[..., -1:].fill_(False)  # keep at least the most likely token (no host copy)
        x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    if top_k > 0:
        kth = torch.topk(x, min(top_k, x.shape[-1]), dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return torch.softmax(x, dim=-1)


def sample_token(logits: Tensor, u: Tensor, temperature: Tensor, top_p: Tensor, use_top_p: bool,
                 top_k: int) -> Tensor:
    """One token (0-d) from the processed `logits` [V], by inverse CDF at the uniform u (0-d)."""
    return inverse_cdf(processed_probs(logits, temperature, top_p, use_top_p, top_k), u)


SCAN_BLOCK = 1024  # most entries per block of `cumsum_rows`


def cumsum_rows(x: Tensor) -> Tensor:
    """Inclusive cumulative sums of x [..., V] along the last axis, the same bits on every run.

    On CUDA, torch.cumsum over one row runs CUB's single-pass scan, whose float additions group
    differently from run to run (a block adds its predecessors' sums as they become ready): two
    runs over the same probabilities can differ in the last bit, and an inverse-CDF draw near a
    boundary then picks another token. Here each row is cut into blocks of up to SCAN_BLOCK
    scanned as the rows of a 2-D tensor (one fixed order), and each block adds the sum of the
    blocks before it (a reduction, in a fixed order too); the entries past the last whole block
    are scanned apart and add the sum of all blocks. (No padding to whole blocks: torch.compile's
    fused comparison of a padded scan was measured wrong in its last block on a CPU.)"""
    v = x.shape[-1]
    k = min(SCAN_BLOCK, max(1, v // 2))
    b = v // k  # at least two whole blocks unless v is 1: one would be a single row again
    blocks = x[..., : b * k].unflatten(-1, (b, k)).cumsum(dim=-1)  # [..., B, k]
    order = torch.arange(b, device=x.device)
    before = torch.where(order[None, :] < order[:, None], blocks[..., None, :, -1], 0.0).sum(-1)
    whole = (blocks + before[..., None]).flatten(-2)
    return torch.cat((whole, x[..., b * k:].cumsum(dim=-1) + whole[..., -1:]), dim=-1)


def inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """The token (0-d) whose cumulative interval of `weights` [V] (any positive total) holds
    u * total, u (0-d) in [0, 1): token t with probability weights[t] / total, never a token of
    weight 0 (where rounding lands on one, past the total or at a block boundary of
    `cumsum_rows`, the last token of positive weight). The token is the count of cumulative sums
    at or below the target (a fused reduction: torch.compile's searchsorted failed to compile on
    a cumulative sum of whole blocks, torch 2.11 on CUDA)."""
    cdf = cumsum_rows(weights)
    t = (cdf <= u * cdf[-1]).sum(-1, keepdim=True).clamp(max=weights.shape[-1] - 1)
    order = torch.arange(weights.shape[-1], device=weights.device)
    last = ((weights > 0).long() * order).argmax()
    return torch.where(weights.index_select(0, t)[0] > 0, t[0], last)


class TreeLinks(NamedTuple):
    parent: Tensor  # [N] each node's parent; N for the root and for nodes on no path
    depth: Tensor  # [N] each node's depth, 0 for the root


def tree_links(retrieve: Tensor, n: int) -> TreeLinks:
    """The parent and depth of each of the n nodes, read from the paths `retrieve` [R, C]
    (-1 padded; a node on several paths writes the same values each time)."""
    child = retrieve[:, 1:]
    slot = torch.where(child >= 0, child, n).flatten()  # slot n collects the padding
    cols = torch.arange(1, retrieve.shape[1], device=retrieve.device).expand_as(child).flatten()
    parent = torch.full((n + 1,), n, dtype=torch.long, device=retrieve.device)
    depth = torch.zeros(n + 1, dtype=torch.long, device=retrieve.device)
    return TreeLinks(parent.scatter_(0, slot, retrieve[:, :-1].flatten())[:n],
                     depth.scatter_(0, slot, cols)[:n])


def residual(p: Tensor, tokens: Tensor, children: Tensor) -> Tensor:
    """p [V] with the children's tokens (tokens [T+1] at nodes where `children`) zeroed."""
    v = p.shape[-1]
    slot = torch.where(children, tokens, torch.full_like(tokens, v))
    hit = torch.zeros(v + 1, dtype=torch.bool, device=p.device).scatter_(0, slot, True)[:v]
    return p.masked_fill(hit, 0.0)


def acceptance_odds(probs: Tensor, tokens: Tensor, parent: Tensor) -> Tensor:
    """[N]: the probability of accepting node n when the walk tests it, at its parent once its
    earlier siblings (node order) were rejected: its token's probability over the mass its
    parent's distribution has left after zeroing the earlier siblings' tokens (probs [N, V]: row
    m the distribution after node m). 0 for a token an earlier sibling holds and for the root.
    When the siblings hold all of the parent's mass, the last of positive mass is accepted surely
    (so rounding never rejects them all): that is counted, not summed."""
    n = tokens.shape[0]
    order = torch.arange(n, device=tokens.device)
    child = parent < n
    row = torch.where(child, parent, 0)
    sib = (parent[:, None] == parent[None, :]) & child[:, None]  # [N, N]: m shares n's parent
    earlier = sib & (order[None, :] < order[:, None])
    repeat = (earlier & (tokens[:, None] == tokens[None, :])).any(dim=1)
    mass = torch.where(child & ~repeat, probs[row, tokens], 0.0)
    left = probs.sum(dim=-1)[row] - torch.where(earlier, mass[None, :], 0.0).sum(dim=1)
    odds = torch.where(mass > 0, mass / left.clamp(min=torch.finfo(probs.dtype).tiny), 0.0)
    positive = sib & (mass[None, :] > 0)  # n's siblings (n included) of positive mass
    covered = positive.sum(dim=1) == (probs > 0).sum(dim=-1)[row]
    last = (mass > 0) & ~(positive & (order[None, :] > order[:, None])).any(dim=1)
    return torch.where(covered & last, 1.0, odds.clamp(max=1.0))


def accept_sampling_on_device(logits: Tensor, tokens: Tensor, retrieve: Tensor,
                              state: SamplerState, draws: Optional[Tensor] = None) -> AcceptResult:
    """The sampled acceptance with fixed shapes and no host read (C = retrieve width):
    `sampled_walk` with `state`'s settings, compiled where the state says.

    draws: [C, T+1] uniforms in [0, 1) (more rows are ignored); default: drawn from `state`'s
    generator."""
    n, c = tokens.shape[0], retrieve.shape[1]
    draws = state.draws(c, n) if draws is None else draws
    return state.run(sampled_walk, logits, tokens, retrieve, draws)


def sampled_walk(logits: Tensor, tokens: Tensor, retrieve: Tensor, draws: Tensor,
                 temperature: Tensor, top_p: Tensor, use_top_p: bool, top_k: int) -> AcceptResult:
    """Child n at depth d+1 is accepted when draws[d, n] < its odds (`acceptance_odds`); the walk
    goes from the root to the first accepted child (node order) of each node it reaches; where
    none is, the bonus token is drawn from that node's residual by inverse CDF with draws[0, 0]
    (the root's slot, never a child's). Every node's odds come from one batched pass over the T+1
    rows, so the walk itself is one gather per level."""
    n, c, dev = tokens.shape[0], retrieve.shape[1], tokens.device
    probs = processed_probs(logits, temperature, top_p, use_top_p, top_k)  # [T+1, V]
    links = tree_links(retrieve, n)
    order = torch.arange(n, device=dev)
    tested = draws[(links.depth - 1).clamp(min=0), order]  # a child's draw: its parent's level
    accepted = (tested < acceptance_odds(probs, tokens, links.parent)) & (links.parent < n)
    first = torch.where(accepted[None, :] & (links.parent[None, :] == order[:, None]),
                        order[None, :], n).amin(dim=1)  # [T+1] each node's first accepted child
    after = torch.where(first < n, first, order)  # a node without one: the walk stays there
    steps = [torch.zeros(1, dtype=torch.long, device=dev)]
    for _ in range(c - 1):
        steps.append(after.index_select(0, steps[-1]))
    path = torch.cat(steps)  # [C] root first, its last node repeated once the walk stopped
    count = 1 + (path[1:] != path[:-1]).sum()
    stop_p = probs.index_select(0, steps[-1])[0]
    bonus = inverse_cdf(residual(stop_p, tokens, links.parent == steps[-1]), draws[0, 0])
    col = torch.arange(c, device=dev)
    taken = torch.cat((tokens.index_select(0, path[1:]), steps[0]))  # [C] the next node's token
    out = torch.where(col < count - 1, taken, torch.where(col == count - 1, bonus, 0))
    return AcceptResult(torch.where(col < count, path, 0), out, count)


def accept_sampling(logits: Tensor, tokens: Tensor, retrieve: Tensor, state: SamplerState,
                    draws: Optional[Tensor] = None) -> Acceptance:
    """`accept_sampling_on_device` read back to the host."""
    res = accept_sampling_on_device(logits, tokens, retrieve, state, draws)
    accepted = read_accepted(res.count, res.tokens)
    return Acceptance(res.path[: len(accepted)], accepted)

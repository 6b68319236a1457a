"""Verification: which drafted path does the base model accept, and which token follows it.

Greedy: a path's accepted length is the longest prefix of draft tokens equal to the base argmax at
the previous node; the first row with the maximum length wins; the bonus token is the base argmax
after the last accepted node. Sampling (temperature > 0) follows upstream EAGLE: walk the tree level
by level, accept child x with probability p_base(x), on rejection zero p(x) and renormalise; the
residual (or, past the last level, the fresh) distribution samples the bonus token. The siblings
are the draft's top-k, a deterministic function of the context, so the draft is a point mass on
each candidate in turn (q(x) = 1) and this sequential test samples p_base exactly.
"""
from __future__ import annotations

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


def accept_greedy_on_device(logits: Tensor, tokens: Tensor, retrieve: Tensor) -> AcceptResult:
    """logits: [T+1, V] base logits per node; tokens: [T+1]; retrieve: [R, C] (-1 padded).

    No host synchronisation: the tokens that come out are the base's own choices along the
    winning path (an accepted draft token equals the base argmax before it), bonus included."""
    pad = torch.full((1,), -1, dtype=torch.long, device=tokens.device)
    pred = logits.argmax(dim=-1)  # [T+1] base choice after each node
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


@dataclass
class Sampler:
    """Upstream's logits processing (temperature, then top-p, then top-k) with a seeded generator."""

    temperature: float
    top_p: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("Sampler needs temperature > 0 (use greedy decoding otherwise)")
        if not 0.0 <= self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError("top_p must be in [0, 1] and top_k >= 0")
        self.generator = torch.Generator().manual_seed(self.seed)

    def probs(self, logits: Tensor) -> Tensor:
        """logits: [V] -> probabilities [V], float32 on the CPU."""
        x = logits.float().cpu() / self.temperature
        if 0.0 < self.top_p < 1.0:
            srt, order = torch.sort(x)
            cum = torch.softmax(srt, dim=-1).cumsum(dim=-1)
            drop = cum <= 1 - self.top_p
            drop[-1] = False  # keep at least the most likely token
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        if self.top_k > 0:
            kth = torch.topk(x, min(self.top_k, x.shape[-1])).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        return torch.softmax(x, dim=-1)

    def uniform(self) -> float:
        return torch.rand((), generator=self.generator).item()

    def accept(self, prob: float) -> bool:
        """True with probability `prob`: a uniform draw in [0, 1) strictly below it, so a token of
        probability 0 (truncated by top-p / top-k, or already rejected) is never accepted."""
        return self.uniform() < prob

    def sample(self, p: Tensor) -> int:
        return int(torch.multinomial(p, 1, generator=self.generator))


def accept_sampling(logits: Tensor, tokens: Tensor, retrieve: Tensor, sampler: Sampler) -> Acceptance:
    """Children are tried in increasing node order, so the result does not depend on row order."""
    paths = [row for row in retrieve.tolist() if row[0] == 0]
    toks = tokens.tolist()
    path: list[int] = [0]
    while True:
        col = len(path)
        paths = [r for r in paths if len(r) > col and r[col - 1] == path[-1]]
        children = sorted({r[col] for r in paths if r[col] >= 0})
        p = sampler.probs(logits[path[-1]])
        chosen: Optional[int] = None
        for child in children:
            x = toks[child]
            if sampler.accept(p[x].item()):
                chosen = child
                break
            p[x] = 0.0
            p = p / p.sum()
        if chosen is None:
            bonus = sampler.sample(p)
            break
        path.append(chosen)
    accepted = [toks[n] for n in path[1:]]
    return Acceptance(torch.tensor(path, device=tokens.device), accepted + [bonus])

"""Realistic EAGLE-3 draft trees without a model, for benchmarks and tests.

`expand_tree` grows the candidate set with the engine's own `Candidates` (as `Drafter.step` does)
and selects the tree the same way; only the log-probs come from a callable instead of the draft
head. `random_tree` feeds it log-softmax of random logits.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..config import TreeConfig
from .select import Candidates, DraftTree, top_of

ChildLogProbs = Callable[[int], Tensor]  # level -> [top_k, V] log-probs of each frontier node


def expand_tree(root_log_probs: Tensor, children: ChildLogProbs, tree: TreeConfig,
                root_token: Optional[Tensor] = None) -> DraftTree:
    """root_log_probs: [V] draft log-probs after the root; `children(i)` for i in 0..depth-1 gives
    the next level's log-probs, one row per frontier node in frontier order. Tokens are the
    vocabulary ids (no draft-to-target mapping); `root_token` [1] defaults to 0."""
    cands = Candidates(top_of(root_log_probs, tree.top_k), tree.top_k)
    for i in range(tree.depth):
        cands.expand(top_of(children(i), tree.top_k))
    dev = root_log_probs.device
    root = torch.zeros(1, dtype=torch.long, device=dev) if root_token is None else root_token
    return cands.select(root, tree)


def random_tree(tree: TreeConfig, generator: torch.Generator, vocab: int = 32000,
                sharpness: float = 8.0) -> DraftTree:
    """A draft tree from log_softmax(sharpness * N(0, 1) logits) over `vocab` (the EAGLE-3
    Llama-3.1-8B head's draft vocabulary), drawn on the generator's device.

    sharpness 8 makes the distributions peaked like a trained head's: at total_token 60, depth 5,
    top_k 10 every tree reaches the full depth with about 26 leaves (sharpness 3 gives bushy
    trees of depth 3-4 with about 46 leaves)."""
    dev = generator.device

    def log_probs(*shape: int) -> Tensor:
        logits = torch.randn(*shape, vocab, generator=generator, device=dev) * sharpness
        return torch.log_softmax(logits, dim=-1)

    return expand_tree(log_probs(), lambda _level: log_probs(tree.top_k), tree)


def fit_tree_config(total_token: int, depth: int, top_k: int) -> TreeConfig:
    """The smallest depth >= `depth` whose top_k + depth * top_k^2 candidates hold total_token - 1
    nodes (top_k kept), as a validated `TreeConfig`."""
    if total_token < 2 or depth < 1 or top_k < 1:
        raise ValueError("total_token must be >= 2, depth and top_k >= 1")
    while top_k + depth * top_k ** 2 < total_token - 1:
        depth += 1
    return TreeConfig(total_token, depth, top_k)

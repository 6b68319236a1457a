"""Turning scored draft candidates into a tree: the best T nodes, each with its parent's index.

Candidates are numbered as drafting produced them: the top_k children of the root first, then
top_k*top_k per level, so a parent always has a smaller candidate index than its children.
Everything here stays on the device with fixed shapes (no host synchronisation).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..config import TreeConfig


class DraftTree(NamedTuple):
    tokens: Tensor  # [T+1] target ids; index 0 is the root (the token the base already chose)
    parents: Tensor  # [T] int64; parents[i] is the node index (0 = root) of node i+1's parent


def select_tree(root: Tensor, scores: Tensor, tokens: Tensor, group_parent: Tensor,
                tree: TreeConfig) -> DraftTree:
    """root: [1]; scores/tokens: [N] per candidate; group_parent: [N // top_k] candidate index + 1
    of the parent shared by each group of top_k siblings (0 = the root)."""
    # best T by score; a stable sort breaks exact ties by candidate index, so a child whose
    # log-prob rounds to 0 never displaces its (equal-scored) parent
    best = torch.sort(scores, descending=True, stable=True).indices[:tree.num_nodes]
    picked = torch.sort(best).values  # [T], parents first
    parent_cand = group_parent[picked // tree.top_k]  # [T] candidate index + 1, 0 = root
    parent_node = torch.searchsorted(picked, parent_cand - 1) + 1  # its node index among picked
    parents = torch.where(parent_cand == 0, torch.zeros_like(parent_node), parent_node)
    return DraftTree(torch.cat((root, tokens[picked])), parents)


class TopK(NamedTuple):
    values: Tensor  # [..., k] log-probabilities, best first
    indices: Tensor  # [..., k] their draft-vocabulary ids


def top_of(log_probs: Tensor, k: int) -> TopK:
    """The k best entries of log-probs [..., V] along the last axis."""
    top = torch.topk(log_probs, k)
    return TopK(top.values, top.indices)


class Candidates:
    """Scored candidates, grown level by level the way upstream drafting does.

    The root's top_k children come first; each `expand` takes the top_k children (log-probs and
    ids) of each of the current top_k frontier nodes, scores them by cumulative log-prob, keeps
    all of them as candidates and makes the best top_k the next frontier. Ids stay in the draft
    vocabulary until `select` maps them.
    """

    def __init__(self, root_top: TopK, top_k: int):
        values, ids = root_top  # [k] each
        dev = values.device
        self.k, self.level = top_k, 0
        self.scores, self.frontier = values, torch.arange(top_k, device=dev)  # [k], [k]
        self.frontier_ids = ids  # [k] draft ids of the frontier nodes
        self.all_scores, self.all_ids = [values], [ids]
        self.group_parent = [torch.zeros(1, dtype=torch.long, device=dev)]

    def expand(self, top: TopK) -> Tensor:
        """top: the k best children of each frontier node ([k, k] each), one row per node in
        frontier order. Returns [k]: the row (old frontier position) each new frontier node
        descends from."""
        k = self.k
        # candidate index (+1) of each old frontier node: its k children form one group
        offset = 1 + (k if self.level > 0 else 0) + k * k * max(0, self.level - 1)
        self.group_parent.append(self.frontier + offset)
        values, children = top
        cum = values + self.scores[:, None]  # [k, k]
        best = torch.topk(cum.view(-1), k)
        self.frontier, self.scores = best.indices, best.values
        ids = children.reshape(-1)  # [k*k]
        self.frontier_ids = ids[self.frontier]
        self.all_scores.append(cum.view(-1))
        self.all_ids.append(ids)
        self.level += 1
        return self.frontier // k

    def select(self, root: Tensor, tree: TreeConfig,
               to_target: Callable[[Tensor], Tensor] = lambda ids: ids) -> DraftTree:
        """root: [1] target id of the root token."""
        return select_tree(root, torch.cat(self.all_scores), to_target(torch.cat(self.all_ids)),
                           torch.cat(self.group_parent), tree)

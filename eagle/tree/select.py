"""Turning scored draft candidates into a tree: the best T nodes, each with its parent's index.

Candidates are numbered as drafting produced them: the top_k children of the root first, then
top_k*top_k per level, so a parent always has a smaller candidate index than its children.
Everything here stays on the device with fixed shapes (no host synchronisation).
"""
from __future__ import annotations

from typing import NamedTuple

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
    picked = torch.sort(torch.topk(scores, tree.num_nodes).indices).values  # [T], parents first
    parent_cand = group_parent[picked // tree.top_k]  # [T] candidate index + 1, 0 = root
    parent_node = torch.searchsorted(picked, parent_cand - 1) + 1  # its node index among picked
    parents = torch.where(parent_cand == 0, torch.zeros_like(parent_node), parent_node)
    return DraftTree(torch.cat((root, tokens[picked])), parents)

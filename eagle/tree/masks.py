"""Tree buffers (attention mask, position ids, retrieve indices) and the `--mask-impl` registry.

Contract shared by every implementation: `parents` is an int64 tensor [T] on the model's device,
`parents[i]` in [0, i] being the parent node of node i+1 (node 0 is the root). The result holds
- `mask` [T+1, T+1] bool: row i marks node i and all of its ancestors;
- `position_ids` [T+1] int64: each node's depth (row sum - 1);
- `retrieve_indices` [R, C] int64: one root-to-leaf path of node indices per row, leaves in
  increasing node order, padded with -1. Implementations may add rows of -1 after the real ones
  and -1 columns up to `max_depth + 1`, so that their shapes need no host round trip.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

Section = Callable[[str], AbstractContextManager]


def no_section(_name: str) -> AbstractContextManager:
    return nullcontext()


class TreeBuffers(NamedTuple):
    mask: Tensor  # [T+1, T+1] bool
    position_ids: Tensor  # [T+1] int64
    retrieve_indices: Tensor  # [R, C] int64, -1 padded


BuildFn = Callable[[Tensor, int, Section], TreeBuffers]


@dataclass(frozen=True)
class MaskImpl:
    name: str
    build: BuildFn  # (parents [T], max_depth, section) -> TreeBuffers
    sync_free: bool  # True: no host round trip anywhere in `build`
    summary: str


MASK_IMPLS: dict[str, MaskImpl] = {}


def register(name: str, sync_free: bool, summary: str) -> Callable[[BuildFn], BuildFn]:
    def wrap(fn: BuildFn) -> BuildFn:
        MASK_IMPLS[name] = MaskImpl(name, fn, sync_free, summary)
        return fn
    return wrap


def get_mask_impl(name: str) -> MaskImpl:
    try:
        return MASK_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown mask implementation {name!r}; choose one of "
                         f"{', '.join(MASK_IMPLS)}") from None


def build_tree_buffers(parents: Tensor, max_depth: int, impl: str = "rebuild",
                       section: Section = no_section) -> TreeBuffers:
    return get_mask_impl(impl).build(parents, max_depth, section)


def leaf_paths(parent_list: list[int], depth_list: list[int]) -> list[list[int]]:
    """Root-to-leaf node paths (host lists), leaves in increasing node order, -1 padded.

    With T >= 1 there is always a leaf: the last node has no children (children follow parents)."""
    width = max(depth_list) + 1
    has_child = set(parent_list)
    rows = []
    for leaf in range(1, len(parent_list) + 1):
        if leaf in has_child:
            continue
        row, node = [-1] * width, leaf
        for d in range(depth_list[leaf], -1, -1):
            row[d] = node
            node = parent_list[node - 1] if node else 0
        rows.append(row)
    return rows


@register("rebuild", sync_free=False,
          summary="upstream: one .tolist(), O(T^2) row ORs on the CPU, copy to the device")
def build_rebuild(parents: Tensor, max_depth: int, section: Section = no_section) -> TreeBuffers:
    dev, t = parents.device, parents.shape[0]
    with section("tree_mask"):
        parent_list = parents.tolist()
        mask = torch.eye(t + 1, dtype=torch.bool)
        mask[:, 0] = True
        for i, p in enumerate(parent_list):
            mask[i + 1] |= mask[p]
        positions = mask.sum(dim=1) - 1
        mask_dev, positions_dev = mask.to(dev), positions.to(dev)
    with section("retrieve_indices"):
        paths = leaf_paths(parent_list, positions.tolist())
        retrieve = torch.tensor(paths, dtype=torch.long).to(dev)
    return TreeBuffers(mask_dev, positions_dev, retrieve)

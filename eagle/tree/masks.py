"""Tree buffers (attention mask, position ids, retrieve indices) and the `--mask-impl` registry.

Contract shared by every implementation: `parents` is an int64 tensor [T] on the model's device,
`parents[i]` in [0, i] being the parent node of node i+1 (node 0 is the root). The result holds
- `mask` [T+1, T+1] bool: row i marks node i and all of its ancestors;
- `position_ids` [T+1] int64: each node's depth (row sum - 1);
- `retrieve_indices` [R, C] int64: one root-to-leaf path of node indices per row, leaves in
  increasing node order, padded with -1. Implementations may add rows of -1 after the real ones
  and -1 columns up to `max_depth + 1`, so that their shapes need no host round trip.

Implementations: `rebuild` (upstream) and `incremental` read the parents on
the host; `vectorized` (tensor ops) and `triton` (one kernel launch, `triton_tree.py`) never sync
and return fixed shapes ([T, max_depth+1] retrieve indices).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..fused import has_triton
from ..profiling import TimeSection, no_section


class TreeBuffers(NamedTuple):
    mask: Tensor  # [T+1, T+1] bool
    position_ids: Tensor  # [T+1] int64
    retrieve_indices: Tensor  # [R, C] int64, -1 padded


BuildFn = Callable[[Tensor, int, TimeSection], TreeBuffers]
Requirement = Callable[[torch.device], Optional[str]]  # device -> why the impl cannot run, or None


class MaskImplUnavailable(RuntimeError):
    """A registered implementation that cannot run here (no CUDA device, package missing)."""


def runs_anywhere(_device: torch.device) -> Optional[str]:
    return None


@dataclass(frozen=True)
class MaskImpl:
    name: str
    build: BuildFn  # (parents [T], max_depth, section) -> TreeBuffers
    sync_free: bool  # True: no host round trip anywhere in `build`
    summary: str
    unavailable: Requirement = runs_anywhere


MASK_IMPLS: dict[str, MaskImpl] = {}


def register(name: str, sync_free: bool, summary: str,
             unavailable: Requirement = runs_anywhere) -> Callable[[BuildFn], BuildFn]:
    def wrap(fn: BuildFn) -> BuildFn:
        MASK_IMPLS[name] = MaskImpl(name, fn, sync_free, summary, unavailable)
        return fn
    return wrap


def available_mask_impls(device: torch.device) -> list[str]:
    """Names of the registered implementations that can run on `device`, in registry order."""
    return [name for name, impl in MASK_IMPLS.items() if impl.unavailable(torch.device(device)) is None]


def known_mask_impl(name: str) -> bool:
    return name in MASK_IMPLS


def get_mask_impl(name: str, device: Optional[torch.device] = None) -> MaskImpl:
    """The implementation registered as `name` (`ValueError` naming the registered ones when there
    is none); given a `device`, `MaskImplUnavailable` naming the alternatives when it cannot run
    there. Every check of a mask implementation's name goes through here."""
    try:
        impl = MASK_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown mask implementation {name!r}; choose one of "
                         f"{', '.join(MASK_IMPLS)}") from None
    reason = impl.unavailable(torch.device(device)) if device is not None else None
    if reason is not None:
        others = [n for n in available_mask_impls(device) if n != name]
        raise MaskImplUnavailable(f"mask implementation {name!r} cannot run here: {reason}; "
                                  f"use one of: {', '.join(others)}")
    return impl


def build_tree_buffers(parents: Tensor, max_depth: int, impl: str = "rebuild",
                       section: TimeSection = no_section) -> TreeBuffers:
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
def build_rebuild(parents: Tensor, max_depth: int, section: TimeSection = no_section) -> TreeBuffers:
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


@register("incremental", sync_free=False,
          summary="device buffer, one .item() per row, parent row clone")
def build_incremental(parents: Tensor, max_depth: int, section: TimeSection = no_section) -> TreeBuffers:
    """The mask built row by row on the device: each row is its parent's row plus itself.

    Cost: T host syncs (one `.item()` per row) plus T row copies of T+1 elements, so O(T^2) work
    and T round trips; the retrieve indices then cost two `.tolist()` syncs (upstream way). No
    `parent >= 0` guard: the contract makes every parent >= 0.
    """
    dev, t = parents.device, parents.shape[0]
    with section("tree_mask"):
        mask = torch.eye(t + 1, dtype=torch.bool, device=dev)
        mask[:, 0] = True
        for i in range(t):
            parent = parents[i].item()
            mask[i + 1] = mask[parent].clone()
            mask[i + 1, i + 1] = True
        positions = mask.sum(dim=1) - 1  # [T+1] depth of each node
    with section("retrieve_indices"):
        paths = leaf_paths(parents.tolist(), positions.tolist())
        retrieve = torch.tensor(paths, dtype=torch.long, device=dev)
    return TreeBuffers(mask, positions, retrieve)


def ancestor_table(parents: Tensor, max_depth: int) -> Tensor:
    """[T+1, max_depth+1] int64: column s holds each node's s-th ancestor, 0 once past the root.

    All nodes climb together: max_depth gathers of T+1 elements, no host sync. Nodes deeper
    than `max_depth` are cut off (the caller promises none exist)."""
    up = torch.cat((parents.new_zeros(1), parents))  # [T+1] parent of each node; the root's is 0
    steps = [torch.arange(up.shape[0], device=up.device)]
    for _ in range(max_depth):
        steps.append(up.gather(0, steps[-1]))
    return torch.stack(steps, dim=1)


def leaf_rows(parents: Tensor, table: Tensor, positions: Tensor) -> Tensor:
    """[T, W] root-to-leaf paths of the leaves in increasing node order, then rows of -1.

    `table` is `ancestor_table` [T+1, W]. Fixed shapes, no host sync: each node gets an output
    row (leaves by cumsum rank, the other nodes after them) and one `index_copy_` moves them."""
    t, width = parents.shape[0], table.shape[1]
    has_child = torch.zeros(t + 1, dtype=torch.bool, device=parents.device)
    leaf = ~has_child.scatter_(0, parents, True)[1:]  # [T] nodes 1..T without children
    is_leaf = leaf.long()
    row = torch.where(leaf, is_leaf.cumsum(0), is_leaf.sum() + (1 - is_leaf).cumsum(0)) - 1  # [T]
    back = positions[1:, None] - torch.arange(width, device=parents.device)  # [T, W] climb to col c
    paths = table[1:].gather(1, back.clamp(min=0))  # [T, W] ancestor at depth c of each node
    paths = paths.masked_fill((back < 0) | ~leaf[:, None], -1)
    return torch.empty_like(paths).index_copy_(0, row, paths)


@register("vectorized", sync_free=True,
          summary="tensor ops on the device, no host sync: all nodes climb together (depth+1 gathers)")
def build_vectorized(parents: Tensor, max_depth: int, section: TimeSection = no_section) -> TreeBuffers:
    """Every node climbs its parent chain at once: max_depth gathers, one scatter for the mask.

    Cost: O(T * max_depth) work in about max_depth + 15 kernel launches, no host sync, shapes
    fixed by T and max_depth ([T, max_depth+1] retrieve indices, -1 padded). Requires every node
    depth <= max_depth (true for drafted trees: `TreeConfig.max_depth`)."""
    t = parents.shape[0]
    with section("tree_mask"):
        table = ancestor_table(parents, max_depth)  # [T+1, D+1]
        mask = torch.zeros(t + 1, t + 1, dtype=torch.bool, device=parents.device)
        mask.scatter_(1, table, True)
        positions = (table != 0).sum(dim=1)  # [T+1] steps taken before reaching the root
    with section("retrieve_indices"):
        retrieve = leaf_rows(parents, table, positions)
    return TreeBuffers(mask, positions, retrieve)


def triton_unavailable(device: torch.device) -> Optional[str]:
    """Why the Triton kernel cannot run on `device`, or None."""
    if device.type != "cuda":
        return f"it needs a CUDA device (got {device.type})"
    if not has_triton():
        return "the triton package is not installed (pip install triton)"
    return None


@register("triton", sync_free=True,
          summary="one Triton kernel launch writes mask, positions and retrieve indices (CUDA only)",
          unavailable=triton_unavailable)
def build_triton(parents: Tensor, max_depth: int, section: TimeSection = no_section) -> TreeBuffers:
    """One kernel launch (see `eagle.tree.triton_tree`); shapes and ordering as `vectorized`.

    Cost: a single launch, no host sync, no memset: O((T+1)^2) mask bytes written once plus
    O(T * depth) climbing. Profiled as one "tree_mask" section, which includes the retrieve
    indices. Raises `MaskImplUnavailable` without CUDA or without triton."""
    get_mask_impl("triton", parents.device)
    from .triton_tree import tree_buffers_triton

    with section("tree_mask"):
        mask, positions, retrieve = tree_buffers_triton(parents, max_depth)
    return TreeBuffers(mask, positions, retrieve)

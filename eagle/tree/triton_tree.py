"""The tree buffers (mask, position ids, retrieve indices) from ONE Triton kernel launch.

Imported lazily by `eagle.tree.masks` (the `triton` mask implementation), so importing `eagle`
never needs triton. The launch has 1 + ceil((T+1) / ROWS) programs:

- every program loads the parents into registers once; climbing a parent chain is then a
  `tl.gather` from registers, not a dependent load from global memory;
- program 0 counts each node's children (`tl.histogram` of the parents), ranks the leaves with a
  cumulative sum, climbs every node to the root at once for its depth (the position id), then
  writes each leaf's root-to-leaf path into its row of the retrieve indices and -1 everywhere
  else (rows of the non-leaves go after the leaves);
- programs 1.. each own ROWS mask rows: their nodes climb to the root together, OR-ing the
  visited ancestors into a register tile that is stored once per column block.

Every output element is written exactly once, so the buffers come from `torch.empty` with no
memset launch and no barrier. With `TRITON_INTERPRET=1` set before triton is imported, the same
kernel runs in Triton's interpreter on CPU tensors (used by the tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE = 2048  # mask elements per program and column block: ROWS * COLS


@triton.jit
def _tree_buffers_kernel(parents_ptr, mask_ptr, pos_ptr, retrieve_ptr, T, WIDTH,
                         ROWS: tl.constexpr, COLS: tl.constexpr, NODES: tl.constexpr):
    """parents: [T] int64; mask: [T+1, T+1] bool; pos: [T+1] int64; retrieve: [T, WIDTH] int64."""
    n = T + 1
    nodes = tl.arange(0, NODES)
    real = (nodes >= 1) & (nodes < n)  # drafted nodes 1..T
    # par[v]: parent of node v (0 for the root and padding); climbs gather from registers
    par = tl.load(parents_ptr + nodes - 1, mask=real, other=0).to(tl.int32)
    pid = tl.program_id(0)
    if pid == 0:
        leaf = real & (tl.histogram(par, NODES, mask=real) == 0)
        inner = real & ~leaf
        n_leaf = tl.sum(leaf.to(tl.int32), axis=0)
        row = tl.where(leaf, tl.cumsum(leaf.to(tl.int32), axis=0) - 1,
                       n_leaf + tl.cumsum(inner.to(tl.int32), axis=0) - 1)  # [NODES] output row
        anc = tl.where(nodes < n, nodes, 0)
        depth = tl.zeros([NODES], dtype=tl.int32)
        while tl.max(anc, axis=0) > 0:
            depth += (anc > 0).to(tl.int32)
            anc = tl.gather(par, anc, axis=0)
        tl.store(pos_ptr + nodes, depth, mask=nodes < n)
        row_ptr = retrieve_ptr + row.to(tl.int64) * WIDTH  # [NODES]
        anc = tl.where(leaf, nodes, 0)
        for s in range(0, WIDTH):
            tl.store(row_ptr + s, -1, mask=real & (inner | (depth < s)))  # padding
            col = depth - s  # the ancestor s steps up sits at column depth - s
            tl.store(row_ptr + col, anc, mask=leaf & (col >= 0) & (col < WIDTH))
            anc = tl.gather(par, anc, axis=0)
    else:
        rows = (pid - 1) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < n
        for c0 in range(0, n, COLS):
            cols = c0 + tl.arange(0, COLS)
            anc = tl.where(row_ok, rows, 0)
            hit = anc[:, None] == cols[None, :]  # [ROWS, COLS]
            floor = tl.maximum(c0, 1)  # ancestors only decrease: stop once all are left of c0
            while tl.max(anc, axis=0) >= floor:
                anc = tl.gather(par, anc, axis=0)
                hit = hit | (anc[:, None] == cols[None, :])
            ptrs = mask_ptr + rows.to(tl.int64)[:, None] * n + cols[None, :]
            tl.store(ptrs, hit, mask=row_ok[:, None] & (cols < n)[None, :])


def launch_shape(t: int, tile: int = TILE) -> tuple[int, int, int, int]:
    """(NODES, COLS, ROWS, num_warps) for a tree of T drafted nodes; `tile` a power of two."""
    nodes = max(32, triton.next_power_of_2(t + 1))  # one lane per node in program 0
    cols = min(nodes, tile)
    return nodes, cols, max(1, tile // cols), 8 if nodes >= 1024 else 4


def tree_buffers_triton(parents: Tensor, max_depth: int,
                        tile: int = TILE) -> tuple[Tensor, Tensor, Tensor]:
    """parents: [T] int64 -> mask [T+1, T+1] bool, positions [T+1] int64, retrieve
    [T, max_depth+1] int64 (leaves in node order first, -1 padding), in one launch, no sync.

    `tile` (a power of two) sets the mask elements per program; any value gives the same result.
    Nodes deeper than `max_depth` keep a correct mask and position but their paths are cut."""
    t = parents.shape[0]
    parents = parents.contiguous()
    mask = torch.empty(t + 1, t + 1, dtype=torch.bool, device=parents.device)
    positions = torch.empty(t + 1, dtype=torch.long, device=parents.device)
    retrieve = torch.empty(t, max_depth + 1, dtype=torch.long, device=parents.device)
    nodes, cols, rows, warps = launch_shape(t, tile)
    grid = (1 + triton.cdiv(t + 1, rows),)
    _tree_buffers_kernel[grid](parents, mask, positions, retrieve, t, max_depth + 1,
                               ROWS=rows, COLS=cols, NODES=nodes, num_warps=warps)
    return mask, positions, retrieve

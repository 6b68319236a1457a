"""Triton kernels of the draft's selection, re-exported by `eagle.fused_triton` (the one namespace
`eagle.fused.ops()` returns): `top_log_probs`, the k best log-probabilities per row, and
`draft_level_mask`, a draft level's ancestors and attention mask, one or two launches each."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _top_block_kernel(x_ptr, x_row, val_ptr, idx_ptr, max_ptr, sum_ptr, n, K: tl.constexpr,
                      BLOCK: tl.constexpr):
    """Program (r, b): block b of row r; its K largest values (best first, the lower index first
    among equals), its maximum and its sum of exp(x - maximum)."""
    r = tl.program_id(0)
    b = tl.program_id(1)
    blocks = tl.num_programs(1)
    offs = b * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + r.to(tl.int64) * x_row + offs, mask=offs < n,
                other=float("-inf")).to(tl.float32)
    top = tl.max(x, axis=0)
    ref = tl.where(top == float("-inf"), 0.0, top)
    tl.store(max_ptr + r * blocks + b, top)
    tl.store(sum_ptr + r * blocks + b, tl.sum(tl.exp(x - ref), axis=0))
    out = (r * blocks + b) * K
    free = offs < n  # entries not picked yet (a picked -inf must not be picked again)
    for j in tl.static_range(K):
        left = tl.where(free, x, float("-inf"))
        best = tl.max(left, axis=0)
        at = tl.min(tl.where(free & (left == best), offs, blocks * BLOCK), axis=0)
        tl.store(val_ptr + out + j, best)
        tl.store(idx_ptr + out + j, at)
        free = free & (offs != at)


@triton.jit
def _top_merge_kernel(val_ptr, idx_ptr, max_ptr, sum_ptr, out_val, out_idx, blocks,
                      K: tl.constexpr, NB: tl.constexpr, C: tl.constexpr):
    """Program r: the K best of row r's block candidates, as log-probabilities."""
    r = tl.program_id(0)
    b = tl.arange(0, NB)
    top = tl.load(max_ptr + r * blocks + b, mask=b < blocks, other=float("-inf"))
    part = tl.load(sum_ptr + r * blocks + b, mask=b < blocks, other=0.0)
    peak = tl.max(top, axis=0)
    log_sum = tl.log(tl.sum(part * tl.exp(top - peak), axis=0))
    c = tl.arange(0, C)
    have = c < blocks * K
    vals = tl.load(val_ptr + r * blocks * K + c, mask=have, other=float("-inf"))
    ids = tl.load(idx_ptr + r * blocks * K + c, mask=have, other=0)
    free = have
    for j in tl.static_range(K):
        left = tl.where(free, vals, float("-inf"))
        best = tl.max(left, axis=0)
        pos = tl.min(tl.where(free & (left == best), c, C), axis=0)  # blocks in order: lower id
        tl.store(out_val + r * K + j, (best - peak) - log_sum)
        tl.store(out_idx + r * K + j, tl.sum(tl.where(c == pos, ids, 0), axis=0))
        free = free & (c != pos)


TOP_BLOCK = 2048  # vocabulary entries per program of `top_log_probs`


def top_log_probs(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of log_softmax(logits) along the last axis, best first (the lower
    index first among equal values): (float32 log-probabilities, int64 indices), each [..., k].

    Two launches, whatever the vocabulary: each block of TOP_BLOCK entries keeps its k best with
    its maximum and exponential sum, then one program per row merges them (what
    `torch.log_softmax(logits.float(), -1).topk(k)` computes in ~25 launches)."""
    n = logits.shape[-1]
    rows = logits.numel() // n
    x = logits.reshape(rows, n)
    x = x if x.stride(-1) == 1 else x.contiguous()  # rows may be strided, not their elements
    blocks = triton.cdiv(n, TOP_BLOCK)
    dev = logits.device
    cand_val = torch.empty(rows, blocks, k, dtype=torch.float32, device=dev)
    cand_idx = torch.empty(rows, blocks, k, dtype=torch.int64, device=dev)
    top, part = torch.empty(2, rows, blocks, dtype=torch.float32, device=dev)
    _top_block_kernel[(rows, blocks)](x, x.stride(0), cand_val, cand_idx, top, part, n, K=k,
                                      BLOCK=TOP_BLOCK, num_warps=4)
    values = torch.empty(rows, k, dtype=torch.float32, device=dev)
    ids = torch.empty(rows, k, dtype=torch.int64, device=dev)
    _top_merge_kernel[(rows,)](cand_val, cand_idx, top, part, values, ids, blocks, K=k,
                               NB=triton.next_power_of_2(blocks),
                               C=triton.next_power_of_2(blocks * k), num_warps=4)
    shape = (*logits.shape[:-1], k)
    return values.view(shape), ids.view(shape)


@triton.jit
def _draft_mask_kernel(prev_ptr, rows_ptr, ctx_ptr, level_ptr, mask_ptr, prev_span, width,
                       K: tl.constexpr, HAS_PREV: tl.constexpr, SPAN_BLOCK: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Program (r, b): frontier node r of a level. Its ancestor row is its parent's row of the
    previous level (parent = rows[r]) followed by the identity; program b = 0 stores it. Window
    columns b*BLOCK..: the accepted slots before ctx, then the level nodes from ctx on."""
    r = tl.program_id(0)
    span = prev_span + K
    parent = tl.load(rows_ptr + r) if HAS_PREV else 0
    if tl.program_id(1) == 0:
        j = tl.arange(0, SPAN_BLOCK)
        seen = j == prev_span + r
        if HAS_PREV:
            seen = seen | (tl.load(prev_ptr + parent * prev_span + j, mask=j < prev_span,
                                   other=0) != 0)
        tl.store(level_ptr + r * span + j, seen, mask=j < span)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rel = cols - tl.load(ctx_ptr)
    seen = (rel < 0) | (rel == prev_span + r)
    if HAS_PREV:
        seen = seen | (tl.load(prev_ptr + parent * prev_span + rel,
                               mask=(rel >= 0) & (rel < prev_span), other=0) != 0)
    tl.store(mask_ptr + r * width + cols, seen, mask=cols < width)


def draft_level_mask(prev: Tensor | None, rows: Tensor | None, ctx: Tensor, k: int,
                     width: int) -> tuple[Tensor, Tensor]:
    """One launch for a draft level's masks. prev: [k, span] bool, the previous level's
    ancestor rows (None at the first level); rows: [k] int64, the previous-level row each node
    descends from; ctx: 0-d int64, the accepted slots' count. Returns the level's ancestor rows
    [k, span + k] (cat(prev[rows], eye(k)); eye(k) at the first level) and the mask [k, width]:
    slots < ctx, and the level nodes at ctx.. that are the row's ancestors or itself."""
    has_prev = prev is not None
    span = prev.shape[1] if has_prev else 0
    level = torch.empty(k, span + k, dtype=torch.bool, device=ctx.device)
    mask = torch.empty(k, width, dtype=torch.bool, device=ctx.device)
    block = min(1024, triton.next_power_of_2(width))
    _draft_mask_kernel[(k, triton.cdiv(width, block))](
        prev.contiguous() if has_prev else level, rows if has_prev else ctx, ctx, level, mask,
        span, width, K=k, HAS_PREV=has_prev, SPAN_BLOCK=triton.next_power_of_2(span + k),
        BLOCK=block, num_warps=4)
    return level, mask

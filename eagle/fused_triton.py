"""Triton kernels that fuse the pointwise work of a Llama forward, one launch each.

Imported lazily by `eagle.fused`, so importing `eagle` never needs triton. They replace ~30 of the
~40 few-microsecond kernels a layer runs per decoding step, much of what a graph-captured step
costs beyond reading the weights:
- `rms_norm`: RMSNorm (float32 statistics, rounded to the input dtype, then times the weight),
  optionally after a residual add whose sum it also stores;
- `rope_into_cache`: rotary embedding of the new queries and keys, keys and values written
  straight into their cache slots, queries laid out head-major ([H, S, D]);
- `silu_mul`: SiLU(gate) * up; `attention`: grouped-query attention over the cache window with
  the boolean mask, in chunks merged in a fixed order; and, from `fused_triton_draft`,
  `top_log_probs` and `draft_level_mask`, the draft's selection.

Each kernel rounds where PyTorch's separate kernels round, and none lets the compiler contract a
multiply and an add (`enable_fp_fusion=False`): the rotary and residual arithmetic is bit for bit
PyTorch's; RMSNorm's row sum, the attention and the log-softmax add in other orders, and SiLU's
exponential may differ in the last bit of float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused_triton_draft import draft_level_mask, top_log_probs  # noqa: F401 (the draft's kernels)


def unit_stride(rows: Tensor) -> Tensor:
    """`rows` ([R, n]) itself when its elements are adjacent within a row, else a copy."""
    return rows if rows.stride(-1) == 1 else rows.contiguous()


@triton.jit
def _rms_norm_kernel(x_ptr, delta_ptr, sum_ptr, w_ptr, out_ptr, n, x_row, delta_row, out_row, eps,
                     HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row: [sum = x + delta;] out = w * (row / rms(row)) in the input dtype."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n
    x = tl.load(x_ptr + row * x_row + cols, mask=inside, other=0.0)
    if HAS_DELTA:
        x = x + tl.load(delta_ptr + row * delta_row + cols, mask=inside, other=0.0)
        tl.store(sum_ptr + row * n + cols, x, mask=inside)
    h = x.to(tl.float32)
    inv = tl.math.rsqrt(tl.sum(h * h, axis=0) / n + eps)
    normed = (h * inv).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0)
    tl.store(out_ptr + row * out_row + cols, w.to(tl.float32) * normed.to(tl.float32),
             mask=inside)


def rms_norm(x: Tensor, weight: Tensor, eps: float, delta: Tensor | None = None,
             out: Tensor | None = None) -> tuple:
    """x, delta: [..., n] (copied where a row's elements are not adjacent). Returns
    (x + delta, or x itself without delta; normed). `out`: where the normed rows go (x's shape
    and the result dtype; rows may be strided, e.g. one half of a wider buffer), else new."""
    n = x.shape[-1]
    rows = x.numel() // n
    xs = unit_stride(x.reshape(rows, n))
    if out is None:
        out = torch.empty(x.shape, dtype=torch.result_type(weight, x), device=x.device)
    elif out.shape != x.shape or out.stride(-1) != 1:
        raise ValueError(f"rms_norm: out must have x's shape {list(x.shape)} and adjacent elements "
                         f"within a row, got {list(out.shape)} with strides {out.stride()}")
    out_rows = out.view(rows, n)
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device) if delta is not None else x
    ds = unit_stride(delta.reshape(rows, n)) if delta is not None else xs
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(rows,)](xs, ds, total, weight, out_rows, n, xs.stride(0), ds.stride(0),
                              out_rows.stride(0), eps, HAS_DELTA=delta is not None, BLOCK=block,
                              num_warps=8 if block >= 4096 else 4, enable_fp_fusion=False)
    return total, out


@triton.jit
def _rope_into_cache_kernel(q_ptr, k_ptr, v_ptr, q_row, k_row, v_row, pos_ptr, cos_ptr, sin_ptr,
                            table_len, q_out, k_cache, v_cache, start_ptr, start, s_len, max_len,
                            H: tl.constexpr, HALF: tl.constexpr, START_ON_DEVICE: tl.constexpr):
    """Program (i, j): token i; j < H rotates query head j into q_out[j, i]; j >= H rotates key
    head j - H into its cache slot start + i and copies the value head beside it. The angles are
    the rows of the cos/sin tables at the token's position."""
    i = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    d = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + i)
    row = tl.where((pos >= 0) & (pos < table_len), pos, 0) * 2 * HALF  # never read past a table
    c1 = tl.load(cos_ptr + row + d)
    c2 = tl.load(cos_ptr + row + HALF + d)
    s1 = tl.load(sin_ptr + row + d)
    s2 = tl.load(sin_ptr + row + HALF + d)
    if j < H:
        src = q_ptr + i * q_row + j * 2 * HALF
        dst = q_out + (j * s_len + i) * 2 * HALF
    else:
        g = j - H
        first = tl.load(start_ptr) if START_ON_DEVICE else start
        slot = (g * max_len + first + i).to(tl.int64) * 2 * HALF
        v_src = v_ptr + i * v_row + g * 2 * HALF
        tl.store(v_cache + slot + d, tl.load(v_src + d))
        tl.store(v_cache + slot + HALF + d, tl.load(v_src + HALF + d))
        src = k_ptr + i * k_row + g * 2 * HALF
        dst = k_cache + slot
    x1 = tl.load(src + d)
    x2 = tl.load(src + HALF + d)
    dt = x1.dtype
    # x * cos + cat(-x2, x1) * sin, rounded after each operation as PyTorch's kernels round
    lo = (x1 * c1).to(dt) + (-x2 * s1).to(dt)
    hi = (x2 * c2).to(dt) + (x1 * s2).to(dt)
    tl.store(dst + d, lo.to(dt))
    tl.store(dst + HALF + d, hi.to(dt))


def rope_into_cache(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, cos: Tensor, sin: Tensor,
                    k_cache: Tensor, v_cache: Tensor, start) -> Tensor:
    """q: [S, H*D], k, v: [S, Hkv*D] (rows may be strided views of one fused projection; D/2 a
    power of two, see `eagle.fused.rope_fits`); positions: [S] int64 rope positions; cos, sin:
    [L, D] tables indexed by position (`Rotary.table`; a position outside them reads row 0);
    k_cache, v_cache: [Hkv, max_len, D] contiguous; start: the first slot (an int or a 0-d device
    tensor). Writes the rotated keys and the values to slots start..start+S and returns the
    rotated queries as [H, S, D]."""
    s, d = positions.shape[0], cos.shape[1]
    h, n_kv, max_len = q.shape[1] // d, k_cache.shape[0], k_cache.shape[1]
    q, k, v = unit_stride(q), unit_stride(k), unit_stride(v)
    q_out = torch.empty(h, s, d, dtype=q.dtype, device=q.device)
    on_device = isinstance(start, Tensor)
    _rope_into_cache_kernel[(s, h + n_kv)](
        q, k, v, q.stride(0), k.stride(0), v.stride(0), positions.contiguous(), cos.contiguous(),
        sin.contiguous(), cos.shape[0], q_out, k_cache, v_cache, start if on_device else q_out,
        0 if on_device else start, s, max_len, H=h, HALF=d // 2, START_ON_DEVICE=on_device,
        num_warps=1, enable_fp_fusion=False)
    return q_out


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, g_row, u_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    g = tl.load(g_ptr + row * g_row + cols, mask=inside, other=0.0)
    u = tl.load(u_ptr + row * u_row + cols, mask=inside, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)
    tl.store(out_ptr + row * n + cols, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype),
             mask=inside)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """gate, up: [S, n] (rows may be strided views of one fused projection) -> [S, n]."""
    s, n = gate.shape
    gate, up = unit_stride(gate), unit_stride(up)
    out = torch.empty(s, n, dtype=gate.dtype, device=gate.device)
    block = 1024
    _silu_mul_kernel[(s, triton.cdiv(n, block))](gate, up, out, n, gate.stride(0), up.stride(0),
                                                 BLOCK=block, num_warps=4, enable_fp_fusion=False)
    return out


ATTENTION_KEYS = 64  # keys per tile of `attention`
ATTENTION_PROGRAMS = 128  # about one program per SM of an H100; the window is split to reach it


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_ptr, max_ptr, sum_ptr,
                      start_ptr, start, n_rows, s_len, rep, chunk, width, kv_head, mask_row,
                      out_row, scale, D: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_W: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr,
                      START_ON_DEVICE: tl.constexpr):
    """Program (g, b, c): query rows b*BLOCK_R.. of KV head g over window slots c*chunk.. .
    Folded row r of group g is query head g*rep + r // S of token r % S. Without SPLIT the
    program covers the whole window and writes the output; with it, the partial output, its row
    maxima and exponential sums go to `_combine_kernel`. Tiles at or past slot start + S (no row
    may see them) are skipped: a skipped tile would have added exact zeros."""
    g = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < n_rows
    token = rows % s_len
    d = tl.arange(0, D)
    q = tl.load(q_ptr + (g * n_rows + rows).to(tl.int64)[:, None] * D + d[None, :],
                mask=live[:, None], other=0.0)
    keys = k_ptr + g.to(tl.int64) * kv_head
    values = v_ptr + g.to(tl.int64) * kv_head
    best = tl.full([BLOCK_R], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, D], tl.float32)
    lo = tl.program_id(2) * chunk
    first = tl.load(start_ptr) if START_ON_DEVICE else start
    hi = tl.minimum(lo + chunk, first + s_len)  # slots from start + S on are never seen
    for t in range(0, tl.cdiv(hi - lo, BLOCK_W)):
        cols = lo + t * BLOCK_W + tl.arange(0, BLOCK_W)
        inside = cols < width
        k = tl.load(keys + cols[:, None] * D + d[None, :], mask=inside[:, None], other=0.0)
        if IEEE:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        seen = tl.load(mask_ptr + token.to(tl.int64)[:, None] * mask_row + cols[None, :],
                       mask=live[:, None] & inside[None, :], other=0)
        scores = tl.where(seen != 0, scores * scale, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        ref = tl.where(new_best == float("-inf"), 0.0, new_best)  # a row that saw nothing yet
        p = tl.exp(scores - ref[:, None])
        keep = tl.exp(best - ref)
        total = total * keep + tl.sum(p, axis=1)
        v = tl.load(values + cols[:, None] * D + d[None, :], mask=inside[:, None], other=0.0)
        if IEEE:
            acc = acc * keep[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * keep[:, None] + tl.dot(p.to(v.dtype), v)
        best = new_best
    if SPLIT:
        at = (tl.program_id(2) * tl.num_programs(0) + g) * n_rows + rows
        tl.store(part_ptr + at.to(tl.int64)[:, None] * D + d[None, :], acc, mask=live[:, None])
        tl.store(max_ptr + at, best, mask=live)
        tl.store(sum_ptr + at, total, mask=live)
    else:
        out = acc / tl.where(total > 0, total, 1.0)[:, None]
        head = g * rep + rows // s_len
        dst = out_ptr + token.to(tl.int64)[:, None] * out_row + (head * D)[:, None] + d[None, :]
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=live[:, None])


@triton.jit
def _combine_kernel(part_ptr, max_ptr, sum_ptr, out_ptr, n_rows, s_len, rep, splits, out_row,
                    D: tl.constexpr):
    """Program (g, r): folded row r of KV head g, its partial results merged in split order."""
    g = tl.program_id(0)
    r = tl.program_id(1)
    stride = tl.num_programs(0) * n_rows
    at = g * n_rows + r
    d = tl.arange(0, D)
    best = tl.load(max_ptr + at)
    for c in range(1, splits):
        best = tl.maximum(best, tl.load(max_ptr + c * stride + at))
    ref = tl.where(best == float("-inf"), 0.0, best)
    acc = tl.zeros([D], tl.float32)
    total = tl.full([], 0.0, tl.float32)
    for c in range(0, splits):
        w = tl.exp(tl.load(max_ptr + c * stride + at) - ref)
        acc += w * tl.load(part_ptr + (c * stride + at).to(tl.int64) * D + d)
        total += w * tl.load(sum_ptr + c * stride + at)
    out = acc / tl.where(total > 0, total, 1.0)
    head = g * rep + r // s_len
    tl.store(out_ptr + (r % s_len).to(tl.int64) * out_row + head * D + d,
             out.to(out_ptr.dtype.element_ty))


def attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, mask: Tensor, start=None) -> Tensor:
    """Grouped-query attention of the new tokens over a window of the cache, softmax scale
    1/sqrt(D), float32 statistics and accumulation.

    q: [H, S, D] (D a power of two, at least 16 for the matrix products; `rope_into_cache`'s
    layout); k_cache, v_cache: [Hkv, max_len,
    D] contiguous; mask: [S, W] bool over slots 0..W-1 (True = may attend). Returns [S, H*D], the
    heads side by side as the output projection reads them; a row that may attend to nothing gets
    zeros. The window is cut into a fixed number of chunks (by shape alone), whose partial results
    merge in a fixed order, so equal inputs give equal outputs bit for bit. start: the new tokens'
    first slot (an int or a 0-d device tensor), when the mask sees no slot from start + S on: the
    key tiles there are not read, and the result is the same bit for bit; None: all are read."""
    h, s, d = q.shape
    n_kv, width = k_cache.shape[0], mask.shape[1]
    rows = h // n_kv * s  # query rows per KV head
    block_r = min(64, max(16, triton.next_power_of_2(rows)))
    row_blocks = triton.cdiv(rows, block_r)
    tiles = triton.cdiv(width, ATTENTION_KEYS)
    splits = min(tiles, max(1, ATTENTION_PROGRAMS // (n_kv * row_blocks)))
    chunk = triton.cdiv(tiles, splits) * ATTENTION_KEYS
    splits = triton.cdiv(width, chunk)
    mask = unit_stride(mask)
    out = torch.empty(s, h * d, dtype=q.dtype, device=q.device)
    if splits > 1:
        part = torch.empty(splits, n_kv, rows, d, dtype=torch.float32, device=q.device)
        best, total = torch.empty(2, splits, n_kv, rows, dtype=torch.float32, device=q.device)
    else:
        part = best = total = out
    on_device = isinstance(start, Tensor)
    _attention_kernel[(n_kv, row_blocks, splits)](
        q.contiguous(), k_cache, v_cache, mask, out, part, best, total,
        start if on_device else out, 0 if on_device else (width if start is None else start), rows,
        s, h // n_kv, chunk, width, k_cache.stride(0), mask.stride(0), out.stride(0), d ** -0.5,
        D=d, BLOCK_R=block_r, BLOCK_W=ATTENTION_KEYS, SPLIT=splits > 1,
        IEEE=q.dtype == torch.float32, START_ON_DEVICE=on_device, num_warps=4)
    if splits > 1:
        _combine_kernel[(n_kv, rows)](part, best, total, out, rows, s, h // n_kv, splits,
                                      out.stride(0), D=d, num_warps=1)
    return out


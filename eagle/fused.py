"""Which kernels a forward runs: fused ones on CUDA, PyTorch's separate ones elsewhere.

On a CUDA device with triton installed, the Llama layers (base and draft) run RMSNorm, rotary
embedding with the cache write, and SiLU * up as one Triton launch each (`eagle.fused_triton`),
and their query/key/value and gate/up projections as one matrix product each over weights
stacked once (`stack_weights`). Everywhere else, and inside `unfused()`, they run the PyTorch
operations they always ran, so CPU results do not depend on this module.

EAGLE decoding on the fused path runs its matrix products through cuBLASLt (`eagle_blas`): on an
H100 its kernels for the verify's ~61 rows and the draft's few rows are faster than those torch's
default picks, while plain decoding is faster with the default.

Both paths compute the same function; in float16 they can part at near-ties (RMSNorm's row sum
and the stacked products add in other orders). Graphs and eager decoding share the path, so
their tokens stay equal; the settings of an answer file name the path (`kernels`).
"""
from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from functools import lru_cache
from typing import ContextManager, Iterator, Optional

import torch
from torch import Tensor, nn

# switched for a block by `_switched`; eagle_blas: torch's preferred BLAS library in EAGLE decoding
_flags = {"enabled": True, "sdpa_only": False, "eagle_blas": "cublaslt"}


@lru_cache(maxsize=None)
def has_triton() -> bool:
    """Whether the triton package is importable (looked up once)."""
    return importlib.util.find_spec("triton") is not None


def active(device: torch.device) -> bool:
    """Whether forwards on `device` run the fused kernels now."""
    return _flags["enabled"] and device.type == "cuda" and has_triton()


def describe(device: torch.device) -> str:
    """The kernel path on `device`, as answer files record it."""
    return "fused (triton)" if active(device) else "torch"


@contextmanager
def _switched(flag: str, value: object) -> Iterator[None]:
    before, _flags[flag] = _flags[flag], value
    try:
        yield
    finally:
        _flags[flag] = before


def unfused() -> ContextManager[None]:
    """Run PyTorch's separate kernels inside this block, on every device (for comparisons)."""
    return _switched("enabled", False)


def attention_active(device: torch.device) -> bool:
    """Whether attention on `device` runs the fused Triton kernel now (not pinned to SDPA)."""
    return active(device) and not _flags["sdpa_only"]


def sdpa_only() -> ContextManager[None]:
    """Run attention through scaled_dot_product_attention inside this block (a pinned backend)."""
    return _switched("sdpa_only", True)


def eagle_blas_name(device: torch.device) -> Optional[str]:
    """The BLAS library EAGLE decoding on `device` prefers (None: torch's default). Only NVIDIA's
    CUDA builds: ROCm builds also call their devices "cuda", and it was measured on an H100."""
    on_nvidia = device.type == "cuda" and torch.version.hip is None
    return _flags["eagle_blas"] if on_nvidia and active(device) else None


def eagle_blas_label(device: torch.device) -> str:
    """`eagle_blas_name(device)` as settings and reports name it."""
    return eagle_blas_name(device) or "torch default"


def preferring_blas(library: Optional[str]) -> ContextManager[None]:
    """EAGLE decoding prefers `library` (None: torch's default) inside this block (for
    comparisons)."""
    return _switched("eagle_blas", library)


@contextmanager
def eagle_blas(device: torch.device) -> Iterator[None]:
    """Inside this block torch prefers `eagle_blas_name(device)` for matrix products (restored
    after). Eager and captured EAGLE steps both run inside it, so they share their kernels."""
    name = eagle_blas_name(device)
    if name is None:
        yield
        return
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def rope_fits(head_dim: int) -> bool:
    """Whether the fused rotary kernel takes this head size (its halves are power-of-two ranges,
    as in every Llama); attention with another head size keeps PyTorch's rotary."""
    half = head_dim // 2
    return head_dim % 2 == 0 and half > 0 and half & (half - 1) == 0


def ops():
    """The Triton kernels (imported on first use)."""
    from . import fused_triton

    return fused_triton


def stack_weights(linears: tuple[nn.Linear, ...]) -> Optional[Tensor]:
    """One [sum of out_features, in_features] tensor of the weights of `linears` (bias-free, one
    dtype and device), which become views of it: loading or editing a weight in place shows in
    the stack. None where the weights cannot be stacked."""
    weights = [lin.weight for lin in linears]
    if any(lin.bias is not None for lin in linears) or \
            len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    with torch.inference_mode(False), torch.no_grad():  # weights must stay ordinary tensors
        stack = torch.cat([w.detach() for w in weights])
    row = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = stack[row:row + rows]
        row += rows
    return stack


def stacked(stack: Optional[Tensor], linears: tuple[nn.Linear, ...]) -> bool:
    """Whether `stack` still holds the weights of `linears` (a move, cast or reassignment of any
    of them since `stack_weights` breaks the link; the forward then uses them one by one)."""
    if stack is None:
        return False
    base, row = stack.data_ptr(), 0
    for lin in linears:
        w = lin.weight
        if w.data_ptr() != base + row * stack.stride(0) * stack.element_size() or \
                w.dtype != stack.dtype:
            return False
        row += w.shape[0]
    return True

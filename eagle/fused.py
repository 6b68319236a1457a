"""Helpers of the fused path (`eagle.backend.Kernels` decides where it runs): whether triton is
installed, the Triton kernels themselves (`ops`, imported on first use), and projection weights
stacked into one tensor so that query/key/value and gate/up run as one matrix product each."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor, nn


@lru_cache(maxsize=None)
def has_triton() -> bool:
    """Whether the triton package is importable (looked up once)."""
    return importlib.util.find_spec("triton") is not None


def rope_fits(head_dim: int) -> bool:
    """Whether the fused rotary kernel takes this head size (its halves are power-of-two ranges,
    as in every Llama); attention with another head size keeps PyTorch's rotary."""
    half = head_dim // 2
    return head_dim % 2 == 0 and half > 0 and half & (half - 1) == 0


@lru_cache(maxsize=None)
def ops():
    """The Triton kernels (imported on first use; one lookup, not an import, every call after)."""
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

"""The kernels a model runs, chosen once where the model is built (`Kernels`).

A `Kernels` value is immutable; `EaModel` installs its own on the base and head modules it holds
(`install`), and every forward reads the one its modules hold, so two models built with different
kernels run side by side in one process. Modules built outside a model hold `Kernels()`: the
fused path where it can run (CUDA with triton), PyTorch's separate operations elsewhere.

Fused path: RMSNorm, rotary embedding with the cache write and SiLU * up run as one Triton launch
each (`eagle.fused_triton`), the query/key/value and gate/up projections as one matrix product each
over stacked weights (`eagle.fused.stack_weights`), and, unless a named SDPA backend is pinned,
attention as one Triton kernel. EAGLE steps on the fused path prefer cuBLASLt for their matrix
products (measured faster on an H100 for the verify's ~61 rows and the draft's few rows; plain
decoding is faster with torch's default). On the fused path, sampling's logits processing and
tree acceptance run through `torch.compile` (`compile_sampling`, on by default;
`eagle.verify.compiled`): a few generated kernels instead of about 120 small ones per step. Both
paths compute the same function, but their float roundings differ, so their sampled tokens (and
in float16 their greedy ones) can part at near-ties: answer files name the path (`describe`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from .config import ConfigError
from .fused import has_triton

# --attention-backend names (besides "auto") -> torch's SDPBackend members
ATTENTION_BACKENDS = {"math": "MATH", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                      "flash": "FLASH_ATTENTION"}


@dataclass(frozen=True)
class Kernels:
    fused: bool = True  # the fused path where it can run; False: PyTorch's operations everywhere
    attention: str = "auto"  # "auto" or a pinned SDPA backend (ATTENTION_BACKENDS)
    eagle_blas: Optional[str] = "cublaslt"  # BLAS library EAGLE steps prefer; None: torch's default
    compile_sampling: bool = True  # on the fused path, sampling runs through torch.compile

    def __post_init__(self) -> None:
        if self.attention != "auto" and self.attention not in ATTENTION_BACKENDS:
            raise ConfigError(f"unknown attention backend {self.attention!r}; choose auto or one "
                              f"of {', '.join(ATTENTION_BACKENDS)}")

    def install(self, module: nn.Module) -> None:
        """Make every submodule of `module` that runs kernels run these."""
        for m in module.modules():
            if hasattr(m, "kernels"):
                m.kernels = self

    def active(self, device: torch.device) -> bool:
        """Whether forwards on `device` run the fused kernels."""
        return self.fused and device.type == "cuda" and has_triton()

    def sampling_compiled(self, device: torch.device) -> bool:
        """Whether sampling on `device` (its logits processing and tree acceptance) runs compiled."""
        return self.compile_sampling and self.active(device)

    def describe(self, device: torch.device) -> str:
        """The kernel path on `device`, as answer files record it."""
        if not self.active(device):
            return "torch"
        return "fused (triton)" + (", sampling compiled" if self.compile_sampling else "")

    def attention_active(self, device: torch.device) -> bool:
        """Whether attention on `device` runs the fused Triton kernel (no SDPA backend pinned)."""
        return self.active(device) and self.attention == "auto"

    def resolve_attention(self, device: torch.device) -> Optional[str]:
        """The attention kernel that runs: a pinned SDPA backend as given; "auto" is the Triton
        kernel on the fused path, else SDPA's `efficient` on CUDA (both reproduce their output bit
        for bit run to run; the cuDNN kernel torch would pick for these masks does not) and
        torch's own choice (None) elsewhere."""
        if self.attention != "auto":
            return self.attention
        if device.type != "cuda":
            return None
        return "triton" if self.active(device) else "efficient"

    def attention_context(self, device: torch.device) -> AbstractContextManager:
        """A context in which SDPA runs `resolve_attention(device)`; with the Triton kernel, SDPA
        (for head sizes the kernel does not take) stays on `efficient`."""
        resolved = self.resolve_attention(device)
        if resolved is None:
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        name = "efficient" if resolved == "triton" else resolved
        return sdpa_kernel(getattr(SDPBackend, ATTENTION_BACKENDS[name]))

    def eagle_blas_name(self, device: torch.device) -> Optional[str]:
        """The BLAS library EAGLE decoding on `device` prefers (None: torch's default). Only on
        NVIDIA's CUDA builds (ROCm builds also call their devices "cuda"; measured on an H100)."""
        on_nvidia = device.type == "cuda" and torch.version.hip is None
        return self.eagle_blas if on_nvidia and self.active(device) else None

    def eagle_blas_label(self, device: torch.device) -> str:
        """`eagle_blas_name(device)` as settings and reports name it."""
        return self.eagle_blas_name(device) or "torch default"

    @contextmanager
    def blas_context(self, device: torch.device) -> Iterator[None]:
        """Torch prefers `eagle_blas_name(device)` for matrix products inside (restored after).
        Eager and captured EAGLE steps both run inside it, so they share their kernels."""
        name = self.eagle_blas_name(device)
        if name is None:
            yield
            return
        before = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library(name)
        try:
            yield
        finally:
            torch.backends.cuda.preferred_blas_library(before)

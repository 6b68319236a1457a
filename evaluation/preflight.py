"""Checks that run before any model is loaded: a settings error costs seconds, not a model load.

`check_runtime` needs no checkpoint (device, dtype, mask implementations and attention backend
available here); `check_checkpoints` reads the checkpoints' config.json files only (a head given as
the base, or the two paths swapped); `check_tokenizer` loads the tokenizer alone; `check_writable`
creates the answer files' directories.
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import NamedTuple

import torch

from eagle.ea_model import resolve_device as eagle_device

from .run_settings import GenConfig, GenError

log = logging.getLogger(__name__)


class Runtime(NamedTuple):
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    try:
        return eagle_device(name)
    except ValueError as exc:
        raise GenError(f"--device {name}: {exc}") from exc


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (Linux) / architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "cpu"


def head_dim(cfg: GenConfig) -> int:
    """The base model's attention head size from its config (128, Llama-3's, when unreadable)."""
    from eagle.config import ConfigError, ModelArgs
    from eagle.presets import PRESETS

    if cfg.preset is not None:
        return PRESETS[cfg.preset][0].head_dim
    try:
        return ModelArgs.from_json(Path(cfg.base_model_path) / "config.json").head_dim
    except ConfigError:  # not there yet (a script builds it later) or broken: loading will say
        return 128


def check_attention_backend(cfg: GenConfig, runtime: Runtime) -> None:
    """Refuse a backend (pinned, or auto's choice) that cannot run the engine's attention here."""
    from eagle.backend import Kernels

    device, dtype = runtime
    kernels = Kernels(attention=cfg.attention_backend)
    if kernels.resolve_attention(device) is None:
        return
    q = torch.zeros(1, 2, 3, head_dim(cfg), device=device, dtype=dtype)  # [1, H, S, D]
    k = torch.zeros(1, 2, 5, head_dim(cfg), device=device, dtype=dtype)
    mask = torch.zeros(3, 5, device=device, dtype=dtype)  # an additive bias, like the engine's
    try:
        with kernels.attention_context(device):
            torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise GenError(f"--attention-backend {cfg.attention_backend} cannot run the engine's "
                       f"attention on {device.type} in {str(dtype).removeprefix('torch.')} "
                       f"({reason}); choose auto or another backend") from None


def check_runtime(cfg: GenConfig) -> Runtime:
    """Device, dtype, CUDA graphs, every member's mask implementation and the attention backend,
    here."""
    from eagle.tree.masks import MaskImplUnavailable, get_mask_impl

    device = resolve_device(cfg.device)
    runtime = Runtime(device, resolve_dtype(cfg.dtype, device))
    if cfg.cuda_graph == "on" and device.type != "cuda":
        raise GenError(f"--cuda-graph on needs a CUDA device, and --device {cfg.device} is "
                       f"{device.type} here; use --cuda-graph off")
    if cfg.drafts:
        for impl in dict.fromkeys(cfg.mask_impls):
            try:
                get_mask_impl(impl, device)
            except MaskImplUnavailable as exc:
                raise GenError(f"--mask-impl {impl}: {exc}") from None
    check_attention_backend(cfg, runtime)
    return runtime


def check_checkpoints(cfg: GenConfig) -> None:
    """A draft head given as the base model, a base given as the head, or the two swapped."""
    from eagle.checkpoint import checkpoint_kind

    if cfg.preset is not None:
        return
    base, head = cfg.base_model_path, cfg.ea_model_path
    base_kind = checkpoint_kind(base)
    head_kind = checkpoint_kind(head) if head else None
    if base_kind is not None and base_kind.head:
        if head_kind is not None and not head_kind.head:
            raise GenError(f"--base-model-path and --ea-model-path look swapped: {base} holds "
                           f"{base_kind.why} and {head} {head_kind.why}; pass the base model as "
                           f"--base-model-path and the draft head as --ea-model-path")
        raise GenError(f"--base-model-path {base} holds {base_kind.why}, not a base model; pass "
                       f"the Llama checkpoint as --base-model-path")
    if cfg.drafts and head_kind is not None and not head_kind.head:
        raise GenError(f"--ea-model-path {head} holds {head_kind.why}, not an EAGLE-3 draft head; "
                       f"pass the head's directory as --ea-model-path")


def load_tokenizer(cfg: GenConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(cfg.tokenizer_path or cfg.base_model_path))


def model_vocab_size(cfg: GenConfig) -> int:
    from eagle.config import ModelArgs
    from eagle.presets import PRESETS

    if cfg.preset is not None:
        return PRESETS[cfg.preset][0].vocab_size
    return ModelArgs.from_json(Path(cfg.base_model_path) / "config.json").vocab_size


def check_tokenizer(tokenizer, cfg: GenConfig) -> None:
    """A chat template, and ids that fit the model's vocabulary."""
    where = cfg.tokenizer_path or cfg.base_model_path
    if not getattr(tokenizer, "chat_template", None):
        raise GenError(f"the tokenizer of {where} has no chat template; pass --tokenizer-path DIR "
                       f"with a Llama-3 chat template")
    vocab = model_vocab_size(cfg)
    if len(tokenizer) > vocab:
        raise GenError(f"the tokenizer of {where} has {len(tokenizer)} tokens, more than the "
                       f"model's vocabulary ({vocab}); use a tokenizer whose ids fit the model")
    if vocab > len(tokenizer):
        log.warning("model vocabulary (%d) exceeds the tokenizer's (%d): ids beyond it are left out "
                    "of the answer text (token_ids keep them)", vocab, len(tokenizer))


def check_writable(paths: list[Path]) -> None:
    """Each answer file's directory exists (created here) and the file is not a directory."""
    for path in paths:
        if path.is_dir():
            raise GenError(f"--answer-file {path} is a directory; name a .jsonl file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GenError(f"cannot create the directory of --answer-file {path} "
                           f"({exc.strerror}); choose a writable place") from None
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise GenError(f"--answer-file {path} is not writable here; choose a writable place")

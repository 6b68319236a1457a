"""Checks that run before any model is loaded: a settings error costs seconds, not a model load.

`resolve` runs once per run and returns what it found (`Resolved`), which settings and loading read
from then on: the device and dtype (`check_runtime`: mask implementations and attention backend
available here), each checkpoint's config.json read once (`check_checkpoints`: a head given as the
base, or the two paths swapped), the answer files' directories created (`check_writable`).
`load_tokenizer` loads the tokenizer alone and checks it, when there is something to answer.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch

from eagle.ea_model import resolve_device as eagle_device

from .run_settings import GenConfig, GenError

log = logging.getLogger(__name__)


if TYPE_CHECKING:
    from eagle.config import ModelArgs


class Runtime(NamedTuple):
    device: torch.device
    dtype: torch.dtype


class Checkpoints(NamedTuple):
    """The checkpoints' config.json files, each read once; None for a preset, for no head, or
    when unreadable (loading then says why)."""
    base: Optional[dict]
    head: Optional[dict]


@dataclass(frozen=True)
class Resolved:
    """What the checks found, passed along to the settings and the loading."""
    runtime: Runtime
    device_name: str
    checkpoints: Checkpoints
    model: Optional["ModelArgs"]  # the base's shapes; None when its config is unreadable


def resolve_device(name: str, error: type[ValueError] = GenError) -> torch.device:
    """--device NAME: auto, the GPU when there is one, else the CPU; a device that is absent here
    raises `error` (the command's user-error type) naming it."""
    try:
        return eagle_device(name)
    except ValueError as exc:
        raise error(f"--device {name}: {exc}") from None


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


def read_checkpoints(cfg: GenConfig) -> Checkpoints:
    from eagle.checkpoint import config_of

    if cfg.preset is not None:
        return Checkpoints(None, None)
    return Checkpoints(config_of(cfg.base_model_path),
                       config_of(cfg.ea_model_path) if cfg.ea_model_path else None)


def model_args(cfg: GenConfig, checkpoints: Checkpoints) -> Optional["ModelArgs"]:
    """The base model's shapes: the preset's, or from its config (None when unusable)."""
    from eagle.config import ConfigError, ModelArgs
    from eagle.presets import PRESETS

    if cfg.preset is not None:
        return PRESETS[cfg.preset][0]
    try:
        return ModelArgs.from_hf_dict(checkpoints.base) if checkpoints.base is not None else None
    except ConfigError:  # broken: loading will say
        return None


def check_attention_backend(cfg: GenConfig, runtime: Runtime, head_dim: int = 128) -> None:
    """Refuse a backend (pinned, or auto's choice) that cannot run the engine's attention here,
    at the model's attention head size (Llama-3's 128 when unknown)."""
    from eagle.backend import Kernels

    device, dtype = runtime
    kernels = Kernels(attention=cfg.attention_backend)
    if kernels.resolve_attention(device) is None:
        return
    q = torch.zeros(1, 2, 3, head_dim, device=device, dtype=dtype)  # [1, H, S, D]
    k = torch.zeros(1, 2, 5, head_dim, device=device, dtype=dtype)
    mask = torch.zeros(3, 5, device=device, dtype=dtype)  # an additive bias, like the engine's
    try:
        with kernels.attention_context(device):
            torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise GenError(f"--attention-backend {cfg.attention_backend} cannot run the engine's "
                       f"attention on {device.type} in {str(dtype).removeprefix('torch.')} "
                       f"({reason}); choose auto or another backend") from None


def check_runtime(cfg: GenConfig, model: Optional["ModelArgs"] = None) -> Runtime:
    """Device, dtype, CUDA graphs, every member's mask implementation and the attention backend
    (at `model`'s head size), here."""
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
    check_attention_backend(cfg, runtime, model.head_dim if model is not None else 128)
    return runtime


def check_checkpoints(cfg: GenConfig, checkpoints: Checkpoints) -> None:
    """A draft head given as the base model, a base given as the head, or the two swapped."""
    from eagle.checkpoint import kind_of

    base, head = cfg.base_model_path, cfg.ea_model_path
    base_kind, head_kind = kind_of(checkpoints.base), kind_of(checkpoints.head)
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


def resolve(cfg: GenConfig) -> Resolved:
    """Every check that needs no model, once: runtime, checkpoints (each config.json read once),
    the answer files' directories."""
    checkpoints = read_checkpoints(cfg)
    model = model_args(cfg, checkpoints)
    runtime = check_runtime(cfg, model)
    check_checkpoints(cfg, checkpoints)
    check_writable([m.cfg.answer_file for m in cfg.members()])
    return Resolved(runtime, device_name(runtime.device), checkpoints, model)


def load_tokenizer(cfg: GenConfig, resolved: Resolved):
    """The tokenizer, checked: a chat template, and ids that fit the model's vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(cfg.tokenizer_path or cfg.base_model_path))
    check_tokenizer(tokenizer, cfg, resolved.model)
    return tokenizer


def check_tokenizer(tokenizer, cfg: GenConfig, model: Optional["ModelArgs"]) -> None:
    from eagle.config import ModelArgs

    where = cfg.tokenizer_path or cfg.base_model_path
    if not getattr(tokenizer, "chat_template", None):
        raise GenError(f"the tokenizer of {where} has no chat template; pass --tokenizer-path DIR "
                       f"with a Llama-3 chat template")
    if model is None:  # an unusable config: reading it again raises what is wrong with it
        model = ModelArgs.from_json(Path(cfg.base_model_path) / "config.json")
    vocab = model.vocab_size
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

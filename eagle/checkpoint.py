"""Strict loading of Hugging Face Llama checkpoints and EAGLE-3 draft checkpoints.

Both formats: a directory with `config.json` and weights as `model.safetensors`,
`model.safetensors.index.json` (sharded), `pytorch_model.bin` or `pytorch_model.bin.index.json`.
A missing, unexpected or mis-shaped tensor is an error that names it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from torch import Tensor, nn

from .config import ModelArgs
from .draft import Eagle3Draft
from .llama import LlamaForCausalLM

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Buffers some older checkpoints carry that the model recomputes instead of loading.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint directory whose files or tensors do not match what the model expects."""


def weight_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (directory / s).exists()]
            if missing:
                raise CheckpointError(f"{path} lists shards that are absent: {', '.join(missing)}")
            return [directory / s for s in shards]
        return [path]
    raise CheckpointError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def read_tensors(files: Iterable[Path], device: torch.device) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                state.update({k: f.get_tensor(k) for k in f.keys()})
        else:
            state.update(torch.load(path, map_location=device, weights_only=True))
    return {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}


def check_state(expected: dict[str, Tensor], state: dict[str, Tensor], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped tensors: {'; '.join(shapes)}")
    if problems:
        raise CheckpointError(f"{what}: " + " | ".join(problems))


def assign_state(module: nn.Module, state: dict[str, Tensor], dtype: torch.dtype,
                 device: torch.device) -> None:
    """Load into a module built on the meta device; floats take `dtype`, other tensors keep theirs."""
    expected = module.state_dict()
    cast = {}
    for k in list(state):  # pop as we go: at most one tensor exists twice
        v = state.pop(k)
        cast[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else expected[k].dtype)
    module.load_state_dict(cast, strict=True, assign=True)


def load_base(path: Path, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    args = ModelArgs.from_json(Path(path) / "config.json")
    with torch.device("meta"):
        model = LlamaForCausalLM(args)
    expected = model.state_dict()
    state = read_tensors(weight_files(path), device)
    if args.tie_word_embeddings:  # the head reuses the embedding; a checkpoint may or may not store it
        expected.pop("lm_head.weight")
        state.pop("lm_head.weight", None)
    check_state(expected, state, f"base model {path}")
    if args.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    assign_state(model, state, dtype, device)
    model.tie_weights()
    log.info("loaded base model from %s (%d layers, hidden %d)", path, args.num_hidden_layers,
             args.hidden_size)
    return model.eval()


def load_draft(path: Path, dtype: torch.dtype, device: torch.device) -> Eagle3Draft:
    args = ModelArgs.from_json(Path(path) / "config.json")
    if args.num_hidden_layers != 1:
        log.warning("draft config says num_hidden_layers=%d; EAGLE-3 heads have one layer",
                    args.num_hidden_layers)
    with torch.device("meta"):
        head = Eagle3Draft(args)
    state = read_tensors(weight_files(path), device)
    if args.draft_vocab_size == args.vocab_size and "d2t" not in state and "t2d" not in state:
        state["d2t"] = torch.zeros(args.draft_vocab_size, dtype=torch.long)  # identity mapping
        state["t2d"] = torch.ones(args.vocab_size, dtype=torch.bool)
    check_state(head.state_dict(), state, f"EAGLE-3 draft {path}")
    assign_state(head, state, dtype, device)
    log.info("loaded EAGLE-3 draft from %s (draft vocab %d of %d)", path, args.draft_vocab_size,
             args.vocab_size)
    return head.eval()

"""The referee's reference forward: the base model alone (never a draft head), run by transformers'
own `LlamaForCausalLM`, holding exactly the weights the judged runs held, at the referee's precision.

The weights are loaded in the runs' dtype first and only then cast up (float16 -> float64 is exact),
so the referee judges the model that ran: a checkpoint stored in bf16 and run in fp16 is judged with
its fp16-rounded weights, and a random preset with the weights `eagle.presets.build_random` drew
for that dtype and seed. A checkpoint directory loads with transformers' `from_pretrained` (an
implementation independent of the engine's); a `preset:NAME` is built by the engine's preset
builder and its weights are copied into transformers' model.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

log = logging.getLogger(__name__)

PRESET_PREFIX = "preset:"
PAD_ID = 0  # right padding: causal attention never lets a real token see it


def referee_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: float64 on the CPU, float32 on CUDA (GPUs run float64 at a small fraction of float32's
    speed, and float32's rounding is far below any half-precision margin)."""
    if name == "auto":
        return torch.float64 if device.type == "cpu" else torch.float32
    return getattr(torch, name)


def load_reference(base: str, run_dtype: torch.dtype, dtype: torch.dtype, device: torch.device,
                   seed: int, drawn_on: str = "cpu"):
    """transformers' LlamaForCausalLM with the runs' weights (`run_dtype`), cast to `dtype`;
    `drawn_on`: the device type the runs drew a preset's random weights on (they differ by device)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 keeps 10 bits: a float16's rounding
    if base.startswith(PRESET_PREFIX):
        return _preset_reference(base[len(PRESET_PREFIX):], run_dtype, dtype, device, seed, drawn_on)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=run_dtype)
    log.info("reference: %s (transformers, weights as run in %s, computing in %s on %s)", base,
             _name(run_dtype), _name(dtype), device)
    return model.to(device=device, dtype=dtype).eval()


def _preset_reference(preset: str, run_dtype: torch.dtype, dtype: torch.dtype,
                      device: torch.device, seed: int, drawn_on: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from eagle.presets import PRESETS, build_random

    from .referee_judge import RefereeError

    draw = device if device.type == drawn_on else torch.device(drawn_on)
    if drawn_on == "cuda" and not torch.cuda.is_available():
        raise RefereeError(f"the runs drew the preset's random weights on {drawn_on}; the same "
                           f"weights can only be drawn there: run the referee on a {drawn_on} "
                           f"machine")
    ours = build_random(preset, run_dtype, draw, seed, draft=False)[0].state_dict()
    config = LlamaConfig(**PRESETS[preset][0].to_hf_dict())
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    theirs = model.state_dict()
    if set(ours) != set(theirs):
        raise RefereeError(f"preset {preset}: tensors {sorted(set(ours) ^ set(theirs))[:3]} do not "
                           f"map onto transformers' Llama")
    with torch.no_grad():
        for name, tensor in theirs.items():
            tensor.copy_(ours.pop(name))  # cast up exactly, one tensor at a time
    log.info("reference: preset %s seed %d (its weights as drawn on %s in %s, in transformers' "
             "Llama, computing in %s on %s)", preset, seed, drawn_on, _name(run_dtype),
             _name(dtype), device)
    return model.eval()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length (longest first) so that each batch's padded size,
    rows x longest row, stays within `batch_tokens` (a longer row goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def next_token_logits(model, prefixes: Sequence[Sequence[int]], batch_tokens: int) -> list[Tensor]:
    """The logits [vocab] after each prefix, in order: one forward per prefix, batched with right
    padding; the head projects only each row's last real position."""
    device = model.lm_head.weight.device
    out: list[Tensor] = [torch.empty(0)] * len(prefixes)
    with tqdm(total=len(prefixes), desc="referee", unit="turn") as bar:
        for group in batches([len(p) for p in prefixes], batch_tokens):
            width = len(prefixes[group[0]])
            ids = torch.full((len(group), width), PAD_ID, dtype=torch.long)  # [B, S]
            mask = torch.zeros((len(group), width), dtype=torch.long)  # [B, S]
            for row, i in enumerate(group):
                ids[row, :len(prefixes[i])] = torch.tensor(prefixes[i])
                mask[row, :len(prefixes[i])] = 1
            hidden = model.model(input_ids=ids.to(device),
                                 attention_mask=mask.to(device)).last_hidden_state  # [B, S, H]
            last = torch.tensor([len(prefixes[i]) - 1 for i in group], device=device)  # [B]
            logits = model.lm_head(hidden[torch.arange(len(group), device=device), last])  # [B, V]
            for row, i in enumerate(group):
                out[i] = logits[row].cpu()
            bar.update(len(group))
    return out

"""Random-weight models at real shapes, built in memory: GPU timing with nothing to download.

Timings of the tree machinery do not depend on weight values (acceptance lengths do: a random
draft head is accepted about as often as chance allows).

What fits on one 80 GB card (weights in fp16/bf16; the engine runs on one device):
- `llama3.1-8b`: base 8.0 B parameters (16.1 GB) + head 0.42 B with its 32k draft vocabulary
  (0.85 GB; it reads the base's embedding) + KV cache 128 KiB per token: fits with ample room.
- `llama3.3-70b`: base 70.6 B parameters (141 GB) does not fit on one 80 GB card, nor on one
  141 GB H200 once the KV cache (320 KiB per token) and activations are added, so `build_random`
  and `preset_model` cannot build it on such a card. Sharded over two GPUs (`eagle.parallel`,
  under torchrun: `parallel.build_random` builds each rank's shard of the same weights) a rank
  holds 36.3 B parameters (72.7 GB: half of every decoder layer, the embedding and lm_head
  whole) and 160 KiB of KV cache per token. Its head alone (1.6 B parameters, 3.2 GB, 0.79 B of
  them its own embedding; KV cache 4 KiB per token) fits anywhere, and every rank holds it whole.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelArgs, RopeConfig, TreeConfig
from .draft import Eagle3Draft
from .llama import LlamaForCausalLM

LLAMA31_ROPE = RopeConfig(theta=500000.0, scaling={
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192})

PRESETS: dict[str, tuple[ModelArgs, ModelArgs]] = {
    # meta-llama/Llama-3.1-8B-Instruct and yuhuili/EAGLE3-LLaMA3.1-Instruct-8B shapes
    "llama3.1-8b": (
        ModelArgs(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                  rope=LLAMA31_ROPE, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)),
        ModelArgs(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                  rope=LLAMA31_ROPE, draft_vocab_size=32000),
    ),
    # meta-llama/Llama-3.3-70B-Instruct and yuhuili/EAGLE3-LLaMA3.3-Instruct-70B shapes. The head
    # is narrower than its target (hidden 6144 vs target_hidden_size 8192: fc maps 3 x 8192 to
    # 6144) and has its own embedding; 48 heads of 128, 8 KV heads, intermediate 16384, draft
    # vocabulary 32000. The head's config.json could not be consulted when this preset was
    # written: these head sizes are as that head is commonly reported (SGLang PR #4716 and
    # vLLM issue #18906 confirm only that its hidden size differs from the target's); check
    # them against the checkpoint's config.json before relying on them.
    "llama3.3-70b": (
        ModelArgs(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072,
                  rope=LLAMA31_ROPE, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)),
        ModelArgs(vocab_size=128256, hidden_size=6144, intermediate_size=16384, num_hidden_layers=1,
                  num_attention_heads=48, num_key_value_heads=8, max_position_embeddings=2048,
                  rope=LLAMA31_ROPE, draft_vocab_size=32000, target_hidden_size=8192),
    ),
    # the 8B's structure (32 layers, 32 query and 8 KV heads, a one-layer head with its own draft
    # vocabulary) at a small width: host work per step on a CPU (`benchmarks.host_overhead`)
    "llama3.1-8b-mini": (
        ModelArgs(vocab_size=2048, hidden_size=512, intermediate_size=1792, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                  rope=LLAMA31_ROPE),  # no stop token: every run decodes its budget
        ModelArgs(vocab_size=2048, hidden_size=512, intermediate_size=1792, num_hidden_layers=1,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                  rope=LLAMA31_ROPE, draft_vocab_size=512),
    ),
    # a small model with the same structure, for CPU tests
    "tiny": (
        ModelArgs(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                  rope=LLAMA31_ROPE, eos_token_ids=(1,)),
        ModelArgs(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                  rope=LLAMA31_ROPE, draft_vocab_size=128),
    ),
}


def random_vocab_map(draft_vocab: int, vocab: int, generator: torch.Generator) -> tuple:
    """A real `d2t`/`t2d` pair: a sorted random subset of target ids makes the draft vocabulary."""
    chosen = torch.sort(torch.randperm(vocab, generator=generator)[:draft_vocab]).values
    d2t = chosen - torch.arange(draft_vocab)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[chosen] = True
    return d2t, t2d


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, std: float = 0.02) -> None:
    """Deterministic N(0, std) matrices and unit norm weights, drawn on the module's device."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32) * std)


def build_random(preset: str, dtype: torch.dtype, device: torch.device, seed: int = 0,
                 draft: bool = True):
    """(base, head) with random weights at the preset's shapes; head is None when not `draft`.
    The base's weights depend only on `seed`, with or without the head."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base_args, draft_args = PRESETS[preset]
    with torch.device(device):
        base = LlamaForCausalLM(base_args).to(dtype)
    randomize_(base, seed)
    return base.eval(), random_head(draft_args, dtype, device, seed) if draft else None


def random_head(args: ModelArgs, dtype: torch.dtype, device: torch.device,
                seed: int = 0) -> Eagle3Draft:
    """The draft head `build_random` gives with this (base) seed."""
    with torch.device(device):
        head = Eagle3Draft(args).to(dtype)
    randomize_(head, seed + 1)
    if args.draft_vocab_size != args.vocab_size:
        d2t, t2d = random_vocab_map(args.draft_vocab_size, args.vocab_size,
                                    torch.Generator().manual_seed(seed + 2))
        head.d2t.copy_(d2t)
        head.t2d.copy_(t2d)
    return head.eval()


def preset_model(preset: str, tree: TreeConfig, mask_impl: str = "rebuild",
                 dtype: torch.dtype = torch.float16, device="auto", seed: int = 0,
                 max_length: int = 4096, cuda_graph=None, attention: str = "auto"):
    """An `EaModel` with random weights (no tokenizer: feed token ids)."""
    from .ea_model import EaModel, resolve_device

    base, head = build_random(preset, dtype, resolve_device(device), seed)
    return EaModel(base, head, tree, mask_impl, None, max_length, cuda_graph, attention)

"""Training of the tiny checkpoints: the base on the corpus, then the EAGLE-3 head on the base's
greedy predictions from its auxiliary hidden states (see `eagle.build.tiny`)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelArgs
from ..draft import Eagle3Draft
from ..llama import Attention, LlamaForCausalLM, apply_rotary
from ..presets import LLAMA31_ROPE, randomize_
from .corpus import BOS, EOT, EOT_TEXT

log = logging.getLogger(__name__)

@dataclass
class TinySpec:
    """Sizes and training budget; the defaults build both checkpoints in ~25 s on 2 CPU cores.

    The base is as deep under its one-layer head as Llama-3.1-8B (32 layers) and narrow, so that
    on a CPU, as on a GPU, a layer's cost is mostly fixed per call and verifying a draft tree costs
    not much more than decoding one token: what EAGLE's speedup rests on."""

    seed: int = 0
    documents: int = 3000  # corpus size: ~230k tokens
    bpe_vocab: int = 1024  # regular tokens (256 bytes + merges); the special tokens follow
    hidden: int = 32  # narrow: a 60-token tree verifies at ~1.7x one token's cost, not ~2.2x at 64
    intermediate: int = 96
    layers: int = 32  # as Llama-3.1-8B under its one-layer head; aux layers 2, 16, 29
    grown_from: int = 8  # trained at this depth first, then grown to `layers` (see `grow`)
    heads: int = 2
    kv_heads: int = 1  # grouped-query attention, as in Llama 3
    draft_vocab: int = 512  # half the BPE vocabulary (upstream: 32k of 128k)
    seq_len: int = 128  # long windows: benchmark prompts run to hundreds of tokens
    batch: int = 8
    base_steps: int = 200
    base_lr: float = 1e-2  # high, for a tiny model on a tiny budget (loss ~0.45 after 200 steps)
    grow_steps: int = 40  # all `layers` trained together after growing
    grow_lr: float = 2e-3
    draft_steps: int = 150
    draft_lr: float = 1e-2
    draft_unroll: int = 4  # EAGLE-3 "training-time test" steps
    draft_format: str = "safetensors"
    wide_head: bool = False  # a head 3/4 as wide as the base, with its own embedding (as 70B's)
    stray_embedding: str = ""  # "random" / "copy": also save an embed_tokens.weight in the head

    def __post_init__(self) -> None:
        if self.layers < 7:
            raise ValueError("layers must be >= 7 so that aux layers 2, L//2, L-3 are distinct")
        if self.grown_from < 1 or self.layers % self.grown_from:
            raise ValueError(f"layers ({self.layers}) must be a multiple of grown_from "
                             f"({self.grown_from})")
        if not 0 < self.draft_vocab < self.bpe_vocab:
            raise ValueError("draft_vocab must be in (0, bpe_vocab)")
        if self.draft_format not in ("safetensors", "bin"):
            raise ValueError("draft_format must be 'safetensors' or 'bin'")
        if self.stray_embedding not in ("", "random", "copy"):
            raise ValueError("stray_embedding must be '', 'random' or 'copy'")
        if self.wide_head and self.stray_embedding:
            raise ValueError("a wide head carries its own embedding: it has no stray one")
        if self.head_hidden % self.heads:
            raise ValueError(f"the head's hidden size {self.head_hidden} must be a multiple of "
                             f"heads ({self.heads})")

    @property
    def head_hidden(self) -> int:
        """The draft head's hidden size: the base's, or 3/4 of it for a wide-target head."""
        return self.hidden * 3 // 4 if self.wide_head else self.hidden


# ---------------------------------------------------------------------------------------------
# Models and their batched training forwards (the engine's forward takes one sequence and a cache).

def model_args(spec: TinySpec, tok) -> tuple[ModelArgs, ModelArgs]:
    vocab = tok.get_vocab_size()
    base = ModelArgs(vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                     num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                     num_key_value_heads=spec.kv_heads, max_position_embeddings=131072,
                     rope=LLAMA31_ROPE, bos_token_id=tok.token_to_id(BOS),
                     eos_token_ids=(tok.token_to_id(EOT_TEXT), tok.token_to_id(EOT)))
    draft = ModelArgs(vocab_size=vocab, hidden_size=spec.head_hidden,
                      intermediate_size=spec.intermediate,
                      num_hidden_layers=1, num_attention_heads=spec.heads,
                      num_key_value_heads=spec.kv_heads, max_position_embeddings=2048,
                      rope=LLAMA31_ROPE, draft_vocab_size=spec.draft_vocab,
                      target_hidden_size=spec.hidden)
    return base, draft


def attend(attn: Attention, x: Tensor, cos: Tensor, sin: Tensor, past: Optional[tuple],
           mask: Optional[Tensor]) -> tuple[Tensor, tuple]:
    """Batched `Attention.forward` without a cache. x: [B, S, in]; past: earlier (k, v), each
    [B, Hkv, P, D], or None; mask: [S, P + S] bool, or None for causal. Returns the output and all
    keys/values (past + new)."""
    b, s, _ = x.shape
    q = attn.q_proj(x).view(b, s, attn.n_heads, attn.head_dim).transpose(1, 2)  # [B, H, S, D]
    k = attn.k_proj(x).view(b, s, attn.n_kv, attn.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
    v = attn.v_proj(x).view(b, s, attn.n_kv, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if past is not None:
        k, v = torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)  # [B, Hkv, P + S, D]
    rep = attn.n_heads // attn.n_kv
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                         v.repeat_interleave(rep, 1), attn_mask=mask,
                                         is_causal=mask is None)  # [B, H, S, D]
    return attn.o_proj(out.transpose(1, 2).reshape(b, s, -1)), (k, v)


def base_forward(model: LlamaForCausalLM, ids: Tensor) -> tuple[Tensor, Tensor]:
    """ids [B, S] -> logits [B, S, V] and EAGLE-3 aux states [B, S, 3H], causal, from position 0."""
    x = model.model.embed_tokens(ids)  # [B, S, H]
    cos, sin = model.rotary(torch.arange(ids.shape[1]), x.dtype)
    saved = {}
    for i, layer in enumerate(model.model.layers):
        if i in model.aux_layers:
            saved[i] = x
        x = x + attend(layer.self_attn, layer.input_layernorm(x), cos, sin, None, None)[0]
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    aux = torch.cat([saved[i] for i in model.aux_layers], dim=-1)
    return model.lm_head(model.model.norm(x)), aux


def draft_forward(head: Eagle3Draft, emb: Tensor, h: Tensor, positions: Tensor,
                  past: Optional[tuple], mask: Optional[Tensor]) -> tuple[Tensor, tuple]:
    """Batched `Eagle3Draft.forward`: emb [B, S, H]; h [B, S, 3H] (fc applied) or [B, S, H]."""
    if h.shape[-1] != head.args.hidden_size:
        h = head.fc(h)
    layer = head.midlayer
    cos, sin = head.rotary(positions, emb.dtype)
    x = torch.cat((layer.input_layernorm(emb), layer.hidden_norm(h)), dim=-1)  # [B, S, 2H]
    out, kv = attend(layer.self_attn, x, cos, sin, past, mask)
    h = h + out
    return h + layer.mlp(layer.post_attention_layernorm(h)), kv


# ---------------------------------------------------------------------------------------------
# Training: the base on the corpus, then the head on the base's greedy predictions.

def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))


def windows(stream: Tensor, count: int, length: int, gen: torch.Generator) -> Tensor:
    """`count` random windows [count, length] of the token stream."""
    starts = torch.randint(0, stream.shape[0] - length, (count,), generator=gen)
    return stream[starts[:, None] + torch.arange(length)]


def optimize(params: list, steps: int, peak: float, loss_at: Callable[[int], Tensor]) -> float:
    """AdamW on the `lr_at` schedule with gradient clipping; returns the last 10% steps' mean loss."""
    opt = torch.optim.AdamW(params, lr=peak, betas=(0.9, 0.95), weight_decay=0.0)
    tail = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak)
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    return sum(tail) / len(tail)


def train_base(model: LlamaForCausalLM, stream: Tensor, spec: TinySpec, gen: torch.Generator,
               steps: int, lr: float) -> float:
    """Next-token cross-entropy on random corpus windows; returns the final training loss (mean of
    the last 10% of steps)."""
    def loss_at(step: int) -> Tensor:
        ids = windows(stream, spec.batch, spec.seq_len + 1, gen)  # [B, S+1]
        logits, _ = base_forward(model, ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    model.train()
    loss = optimize(list(model.parameters()), steps, lr, loss_at)
    model.eval()
    return loss


@torch.no_grad()
def grow(model: LlamaForCausalLM, factor: int) -> LlamaForCausalLM:
    """`factor` times deeper, computing the same function: each layer is followed by factor - 1
    copies of itself whose output projections (o_proj, down_proj) are zero, so they add nothing
    to the residual stream until trained (progressive stacking)."""
    grown = LlamaForCausalLM(replace(model.args,
                                     num_hidden_layers=model.args.num_hidden_layers * factor))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.layers.")}
    for i, layer in enumerate(model.model.layers):
        for j in range(factor):
            for name, w in layer.state_dict().items():
                zero = j > 0 and name.endswith(("o_proj.weight", "down_proj.weight"))
                state[f"model.layers.{i * factor + j}.{name}"] = \
                    torch.zeros_like(w) if zero else w.clone()
    grown.load_state_dict(state)
    return grown


def trained_base(args: ModelArgs, stream: Tensor, spec: TinySpec,
                 gen: torch.Generator) -> LlamaForCausalLM:
    """The base, trained at `spec.grown_from` layers, then grown to `args.num_hidden_layers` and
    trained further with all its layers: a deep base at the cost of a shallow one."""
    base = LlamaForCausalLM(replace(args, num_hidden_layers=spec.grown_from))
    randomize_(base, spec.seed)
    loss = train_base(base, stream, spec, gen, spec.base_steps, spec.base_lr)
    log.info("base: %d layers, %d steps, final training loss %.3f", spec.grown_from,
             spec.base_steps, loss)
    if args.num_hidden_layers != spec.grown_from:
        base = grow(base, args.num_hidden_layers // spec.grown_from)
        loss = train_base(base, stream, spec, gen, spec.grow_steps, spec.grow_lr)
        log.info("base: grown to %d layers, %d steps, final training loss %.3f",
                 args.num_hidden_layers, spec.grow_steps, loss)
    return base


def vocab_map(stream: Tensor, vocab: int, draft_vocab: int) -> tuple[Tensor, Tensor]:
    """d2t [D], t2d [V]: the D most frequent target ids (ties: lower id first), sorted by id."""
    counts = torch.bincount(stream, minlength=vocab)
    order = torch.sort(-counts, stable=True).indices  # by frequency, ties by id
    chosen = torch.sort(order[:draft_vocab]).values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[chosen] = True
    return chosen - torch.arange(draft_vocab), t2d


@torch.no_grad()
def init_head(head: Eagle3Draft, base: LlamaForCausalLM, d2t: Tensor, t2d: Tensor) -> None:
    """Set the vocabulary map and start the head's output layer from the base's (its draft
    vocabulary rows): the head's hidden state learns to play the base's next final hidden state.
    A head of another width keeps its random output layer."""
    head.d2t.copy_(d2t)
    head.t2d.copy_(t2d)
    if head.embed_tokens is None:
        head.lm_head.weight.copy_(base.lm_head.weight[t2d])
        head.norm.weight.copy_(base.model.norm.weight)


@dataclass
class DraftData:
    """Teacher-forced EAGLE-3 inputs from the base on corpus windows of S + steps tokens."""

    tokens: Tensor  # [N, S + steps] corpus ids
    aux: Tensor  # [N, S + steps, 3H] base aux states
    targets: Tensor  # [N, S + steps] the base's greedy next token as a draft id (-100: none)


@torch.no_grad()
def draft_data(base: LlamaForCausalLM, stream: Tensor, t2d: Tensor, count: int, length: int,
               gen: torch.Generator) -> DraftData:
    tokens = windows(stream, count, length, gen)
    logits, aux = base_forward(base, tokens)
    to_draft = torch.full(t2d.shape, -100, dtype=torch.long)
    to_draft[t2d] = torch.arange(int(t2d.sum()))
    return DraftData(tokens, aux, to_draft[logits.argmax(-1)])


def draft_loss(head: Eagle3Draft, embed: torch.nn.Embedding, data: DraftData, rows: Tensor,
               unroll: int) -> tuple[Tensor, Tensor]:
    """EAGLE-3 training-time test: at position t, step j sees token t+1+j and (j = 0) fc(aux[t]) or
    (j > 0) its own previous output, attends to step-0 keys <= t plus its own earlier steps at t, and
    predicts the base's greedy token after t+1+j. Returns the loss and the top-1 hit rate."""
    s = data.tokens.shape[1] - unroll
    tokens, h = data.tokens[rows], data.aux[rows, :s]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    eye = torch.eye(s, dtype=torch.bool)
    past, losses, hits = None, [], []
    for j in range(unroll):
        mask = torch.cat([causal] + [eye] * j, dim=1)  # [S, (j+1)S]
        h, past = draft_forward(head, embed(tokens[:, 1 + j:s + 1 + j]), h, torch.arange(s) + j,
                                past, mask)
        logits = head.lm_head(head.norm(h))  # [B, S, D]
        target = data.targets[rows, 1 + j:s + 1 + j]
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100))
        hits.append((logits.argmax(-1) == target).float().mean())
    return torch.stack(losses).mean(), torch.stack(hits)


def train_draft(head: Eagle3Draft, base: LlamaForCausalLM, stream: Tensor, spec: TinySpec,
                gen: torch.Generator) -> float:
    """Distil the base's greedy next tokens into the head; returns the first draft step's top-1
    agreement with the base on windows kept out of training (a token outside the draft vocabulary
    counts as a miss)."""
    unroll, embed = spec.draft_unroll, head.token_embedding(base.model.embed_tokens)
    data = draft_data(base, stream, head.t2d, 16 * spec.batch, spec.seq_len + unroll, gen)
    held_out = torch.arange(spec.batch)
    train_rows = data.tokens.shape[0] - spec.batch

    def loss_at(step: int) -> Tensor:
        rows = spec.batch + torch.randint(0, train_rows, (spec.batch,), generator=gen)
        return draft_loss(head, embed, data, rows, unroll)[0]

    base.requires_grad_(False)
    head.train()
    optimize(list(head.parameters()), spec.draft_steps, spec.draft_lr, loss_at)
    head.eval()
    with torch.no_grad():
        hits = draft_loss(head, embed, data, held_out, unroll)[1]
    log.info("draft head: top-1 agreement with the base %s (per unrolled step, unseen windows)",
             ", ".join(f"{h:.2f}" for h in hits.tolist()))
    return hits[0].item()

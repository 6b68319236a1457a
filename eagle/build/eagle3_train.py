"""EAGLE-3 head training on self-distilled conversations (`eagle.build.distill`).

The recipe of EAGLE-3: the head reads the base's fused low, mid and high hidden states (the inputs
of base layers 2, L//2 and L-3, as the engine feeds them) through `fc`; a training-time test
unrolls it over `unroll` draft steps, step j > 0 reading its own previous output and attending to
the step-0 keys up to its position plus its own earlier steps there, as a drafted tree branch does;
it predicts the base's greedy next token over a reduced draft vocabulary, the most frequent
answer tokens, mapped by `d2t`/`t2d`. Losses count answer positions only and weigh step j by
`step_decay ** j`. The base is a frozen transformers Llama; the head is the engine's `Eagle3Draft`,
so its state dict is the published layout.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from eagle.backend import Kernels
from eagle.config import ModelArgs, RopeConfig, aux_layer_inputs
from eagle.draft import Eagle3Draft
from eagle.llama import apply_rotary

from .distill import Samples

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TrainSpec:
    seed: int = 0
    draft_vocab: int = 8192
    unroll: int = 6  # a 60/5/10 tree's branches are up to 6 drafted tokens deep
    steps: int = 3000
    batch: int = 32
    max_len: int = 512  # conversations are cut to this many tokens
    lr: float = 1e-3
    warmup: int = 100
    step_decay: float = 0.8
    held_out: int = 128  # samples kept out of training, for the accuracy per step
    time_limit_s: Optional[float] = None  # the schedule ends by this time if not by `steps`


@dataclass
class TrainLog:
    """Per logged step: step, loss, top-1 accuracy per unrolled step on the batch."""

    rows: list = field(default_factory=list)
    held_out_accuracy: list = field(default_factory=list)
    vocab_coverage: float = 0.0  # share of answer tokens inside the draft vocabulary
    steps: int = 0  # steps taken


def head_args(cfg: dict, draft_vocab: int) -> ModelArgs:
    """The head's shapes: one layer at the base's width, the base's rope."""
    return ModelArgs(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                     intermediate_size=cfg["intermediate_size"], num_hidden_layers=1,
                     num_attention_heads=cfg["num_attention_heads"],
                     num_key_value_heads=cfg["num_key_value_heads"],
                     rms_norm_eps=cfg["rms_norm_eps"],
                     max_position_embeddings=cfg["max_position_embeddings"],
                     rope=RopeConfig(theta=cfg["rope_theta"]), draft_vocab_size=draft_vocab)


def vocab_map(samples: Samples, vocab: int, draft_vocab: int,
              always: tuple = ()) -> tuple[Tensor, Tensor, float]:
    """d2t [D], t2d [V] over the most frequent answer tokens (ties: lower id), `always` ids
    included; and the share of answer tokens they cover."""
    answers = torch.tensor([t for ids, s in zip(samples.ids, samples.answer_start)
                            for t in ids[s:]], dtype=torch.long)
    counts = torch.bincount(answers, minlength=vocab).double()
    counts[list(always)] = math.inf
    chosen = torch.sort(torch.sort(-counts, stable=True).indices[:draft_vocab]).values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[chosen] = True
    coverage = float(t2d[answers].float().mean())
    return chosen - torch.arange(draft_vocab), t2d, coverage


@torch.no_grad()
def init_head(head: Eagle3Draft, base, d2t: Tensor, t2d: Tensor, seed: int) -> None:
    """Seeded normal(0, 0.02) linear weights, unit norms; the output layer starts from the base's
    (tied) output rows of the draft vocabulary and its final norm."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in head.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    head.d2t.copy_(d2t)
    head.t2d.copy_(t2d)
    head.lm_head.weight.copy_(base.lm_head.weight.detach().float().cpu()[t2d])
    head.norm.weight.copy_(base.model.norm.weight.detach().float().cpu())


def batch_of(samples: Samples, rows: list[int], max_len: int, pad: int,
             device: torch.device) -> tuple[Tensor, Tensor]:
    """ids [B, S] right-padded and answer [B, S]: position p holds an answer token."""
    seqs = [samples.ids[r][:max_len] for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    answer = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (s, r) in enumerate(zip(seqs, rows)):
        ids[i, :len(s)] = torch.tensor(s)
        answer[i, samples.answer_start[r]:len(s)] = True
    return ids.to(device), answer.to(device)


@torch.no_grad()
def base_features(base, ids: Tensor, aux_layers: tuple) -> tuple[Tensor, Tensor]:
    """The base's aux states [B, S, 3H] (inputs of `aux_layers`) and greedy next tokens [B, S]."""
    out = base(input_ids=ids, output_hidden_states=True)
    aux = torch.cat([out.hidden_states[i] for i in aux_layers], dim=-1)
    return aux, out.logits.argmax(-1)


def draft_attention(head: Eagle3Draft, x: Tensor, positions: Tensor, past: Optional[tuple],
                    mask: Tensor) -> tuple[Tensor, tuple]:
    """The head's attention, batched: x [B, S, 2H]; past keys/values [B, Hkv, P, D] or None;
    mask [S, P + S] bool. Returns the output and all keys/values."""
    attn = head.midlayer.self_attn
    b, s, _ = x.shape
    q = attn.q_proj(x).view(b, s, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, attn.n_kv, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, attn.n_kv, attn.head_dim).transpose(1, 2)
    cos, sin = head.rotary(positions, q.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if past is not None:
        k, v = torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return attn.o_proj(out.transpose(1, 2).reshape(b, s, -1)), (k, v)


def ahead(x: Tensor, j: int, fill) -> Tensor:
    """x[:, t + 1 + j] at each position t of x [B, S], `fill` past the end."""
    return F.pad(x[:, 1 + j:], (0, 1 + j), value=fill)


def unrolled_loss(head: Eagle3Draft, embed, ids: Tensor, answer: Tensor, aux: Tensor,
                  greedy: Tensor, spec: TrainSpec) -> tuple[Tensor, Tensor]:
    """Training-time test over `spec.unroll` steps. At position t, step j reads token t+1+j (and
    fc(aux[t]) at j = 0, else its previous output) at rope position t+j, and predicts the base's
    greedy token after t+1+j; counted where that token is an answer token. Returns the weighted
    loss and the top-1 accuracy per step."""
    b, s = ids.shape
    to_draft = torch.full((head.args.vocab_size,), IGNORE, dtype=torch.long, device=ids.device)
    to_draft[head.t2d] = torch.arange(head.args.draft_vocab_size, device=ids.device)
    layer, dev = head.midlayer, ids.device
    causal = torch.ones(s, s, dtype=torch.bool, device=dev).tril()
    eye = torch.eye(s, dtype=torch.bool, device=dev)
    h, past, losses, accs = head.fc(aux), None, [], []
    for j in range(spec.unroll):
        tok = ahead(ids, j, 0)
        x = torch.cat((layer.input_layernorm(embed(tok)), layer.hidden_norm(h)), dim=-1)
        mask = torch.cat([causal] + [eye] * j, dim=1)
        out, past = draft_attention(head, x, torch.arange(s, device=dev) + j, past, mask)
        h = h + out
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = head.lm_head(head.norm(h)).float()  # [B, S, D]
        counted = ahead(answer, j + 1, False)  # the predicted token (t+2+j) is an answer token
        target = torch.where(counted, to_draft[ahead(greedy, j, 0)], IGNORE)
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
                      * spec.step_decay ** j)
        valid = counted.sum().clamp(min=1)
        accs.append(((logits.argmax(-1) == target) & counted).sum() / valid)
    return torch.stack(losses).sum(), torch.stack(accs)


def progress(step: int, elapsed: float, spec: TrainSpec) -> float:
    """How far training is, 0..1: by steps, or by the time limit when that comes first (the
    schedule then still ends annealed; the log records the steps taken)."""
    by_time = elapsed / spec.time_limit_s if spec.time_limit_s else 0.0
    return max(step / spec.steps, by_time)


def lr_at(step: int, done: float, spec: TrainSpec) -> float:
    """Linear warm-up over `spec.warmup` steps, then cosine decay to 5% of the peak."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    return spec.lr * (0.05 + 0.475 * (1 + math.cos(math.pi * min(1.0, done))))


def train(base, cfg: dict, samples: Samples, spec: TrainSpec,
          eos_id: int) -> tuple[Eagle3Draft, TrainLog]:
    """A head trained on `samples` with the frozen `base` (transformers Llama on its device).
    The head's modules run PyTorch's operations (`Kernels(fused=False)`): the fused kernels have
    no backward."""
    return fit(base, cfg, samples, spec, eos_id)


def fit(base, cfg: dict, samples: Samples, spec: TrainSpec,
        eos_id: int) -> tuple[Eagle3Draft, TrainLog]:
    dev = base.device
    torch.manual_seed(spec.seed)
    args = head_args(cfg, spec.draft_vocab)
    d2t, t2d, coverage = vocab_map(samples, args.vocab_size, spec.draft_vocab, (eos_id,))
    head = Eagle3Draft(args)
    Kernels(fused=False).install(head)
    init_head(head, base, d2t, t2d, spec.seed)
    head.to(dev).train()
    embed = base.model.embed_tokens
    aux_layers = aux_layer_inputs(cfg["num_hidden_layers"], ())
    record = TrainLog(vocab_coverage=coverage)
    log.info("draft vocabulary %d of %d covers %.1f%% of answer tokens; aux layers %s",
             spec.draft_vocab, args.vocab_size, 100 * coverage, aux_layers)
    gen = torch.Generator().manual_seed(spec.seed)
    n, held = len(samples.ids), min(spec.held_out, len(samples.ids) // 10)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start, step = time.perf_counter(), 0
    while progress(step, time.perf_counter() - start, spec) < 1.0:
        rows = (held + torch.randint(0, n - held, (spec.batch,), generator=gen)).tolist()
        ids, answer = batch_of(samples, rows, spec.max_len, eos_id, dev)
        aux, greedy = base_features(base, ids, aux_layers)
        lr = lr_at(step, progress(step, time.perf_counter() - start, spec), spec)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss, acc = unrolled_loss(head, embed, ids, answer, aux.float(), greedy, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0:
            record.rows.append({"step": step, "loss": loss.item(), "lr": lr,
                                "accuracy": [round(a, 4) for a in acc.tolist()],
                                "seconds": round(time.perf_counter() - start, 1)})
            log.info("step %d loss %.3f acc %s", step, loss.item(),
                     " ".join(f"{a:.2f}" for a in acc.tolist()))
        step += 1
    record.steps = step
    log.info("trained %d steps in %.0f s", step, time.perf_counter() - start)
    head.eval()
    record.held_out_accuracy = held_out(head, base, embed, samples, held, spec, aux_layers, eos_id)
    return head, record


@torch.no_grad()
def held_out(head, base, embed, samples: Samples, held: int, spec: TrainSpec, aux_layers: tuple,
             eos_id: int) -> list[float]:
    """Top-1 accuracy per unrolled step on the held-out samples (their answer positions)."""
    accs = []
    for first in range(0, held, spec.batch):
        rows = list(range(first, min(held, first + spec.batch)))
        ids, answer = batch_of(samples, rows, spec.max_len, eos_id, base.device)
        aux, greedy = base_features(base, ids, aux_layers)
        with torch.autocast(base.device.type, dtype=torch.bfloat16,
                            enabled=base.device.type == "cuda"):
            accs.append(unrolled_loss(head, embed, ids, answer, aux.float(), greedy, spec)[1])
    mean = torch.stack(accs).mean(0).tolist()
    log.info("held-out top-1 accuracy per step: %s", " ".join(f"{a:.3f}" for a in mean))
    return mean

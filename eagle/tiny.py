"""Tiny Llama-3-style base + EAGLE-3 draft checkpoints, built from scratch in seconds on a CPU.

`python -m eagle.tiny --out DIR [--seed N]` writes
- DIR/base: a Hugging Face Llama checkpoint (config.json, model.safetensors, generation_config.json)
  with a byte-level BPE tokenizer, the Llama-3 special tokens and chat template;
- DIR/draft: an EAGLE-3 head in the published layout (config.json + model.safetensors or
  pytorch_model.bin) whose draft vocabulary is the corpus's most frequent tokens.
The base is trained briefly on an English corpus generated below, then the head is distilled on the
base's greedy predictions from its auxiliary hidden states, so acceptance lengths mean something.
The corpus and tokenizer are fixed; the weights follow `--seed`, byte for byte on one machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelArgs
from .draft import Eagle3Draft
from .llama import Attention, LlamaForCausalLM, apply_rotary
from .presets import LLAMA31_ROPE, randomize_
from .tiny_corpus import BOS, EOT, EOT_TEXT, corpus

log = logging.getLogger(__name__)

# Llama-3's special tokens in their published order (ids 128000.. there, right after the BPE here).
SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 11)),
)
# Llama-3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# meta-llama/Meta-Llama-3-8B-Instruct's chat template.
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")


@dataclass
class TinySpec:
    """Sizes and training budget; the defaults build both checkpoints in ~20 s on 2 CPU cores."""

    seed: int = 0
    documents: int = 3000  # corpus size: ~230k tokens
    bpe_vocab: int = 1024  # regular tokens (256 bytes + merges); the special tokens follow
    hidden: int = 64
    intermediate: int = 192
    layers: int = 8  # EAGLE-3 reads the inputs of layers 2, L//2, L-3: here 2, 4, 5
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention, as in Llama 3
    draft_vocab: int = 512  # half the BPE vocabulary (upstream: 32k of 128k)
    seq_len: int = 64
    batch: int = 8
    base_steps: int = 200
    base_lr: float = 1e-2  # high, for a tiny model on a tiny budget (loss ~0.55 after 200 steps)
    draft_steps: int = 150
    draft_lr: float = 1e-2
    draft_unroll: int = 4  # EAGLE-3 "training-time test" steps; 2 -> mean acceptance ~2.6, 4 -> ~5
    draft_format: str = "safetensors"

    def __post_init__(self) -> None:
        if self.layers < 7:
            raise ValueError("layers must be >= 7 so that aux layers 2, L//2, L-3 are distinct")
        if not 0 < self.draft_vocab < self.bpe_vocab:
            raise ValueError("draft_vocab must be in (0, bpe_vocab)")
        if self.draft_format not in ("safetensors", "bin"):
            raise ValueError("draft_format must be 'safetensors' or 'bin'")


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE with Llama-3's pre-tokenizer, then the special tokens after it.

def train_tokenizer(texts: Sequence[str], bpe_vocab: int):
    """A `tokenizers.Tokenizer` with `bpe_vocab` BPE tokens, then SPECIAL_TOKENS in Llama-3 order."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))  # Llama 3 matches whole words before merging
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    plain = (piece for text in texts for piece in specials.split(text) if piece)
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(plain, trainer)
    if tok.get_vocab_size() != bpe_vocab:
        raise RuntimeError(f"the corpus gave {tok.get_vocab_size()} BPE tokens, not {bpe_vocab}: "
                           "lower bpe_vocab or enlarge the corpus")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def tokenizer_config(tok) -> dict:
    """tokenizer_config.json for `PreTrainedTokenizerFast` (bos/eos and chat template as Llama 3)."""
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                         "rstrip": False, "single_word": False, "special": True}
               for t in SPECIAL_TOKENS}
    return {"added_tokens_decoder": decoder, "bos_token": BOS, "eos_token": EOT,
            "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast"}


def encode_corpus(tok, texts: Sequence[str]) -> Tensor:
    """All documents' ids, concatenated: [N] int64 (each starts with <|begin_of_text|>)."""
    ids = [i for enc in tok.encode_batch(list(texts), add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Models and their batched training forwards (the engine's forward takes one sequence and a cache).

def model_args(spec: TinySpec, tok) -> tuple[ModelArgs, ModelArgs]:
    vocab = tok.get_vocab_size()
    base = ModelArgs(vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                     num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                     num_key_value_heads=spec.kv_heads, max_position_embeddings=131072,
                     rope=LLAMA31_ROPE, bos_token_id=tok.token_to_id(BOS),
                     eos_token_ids=(tok.token_to_id(EOT_TEXT), tok.token_to_id(EOT)))
    draft = ModelArgs(vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
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
        if i in model.args.aux_layers:
            saved[i] = x
        x = x + attend(layer.self_attn, layer.input_layernorm(x), cos, sin, None, None)[0]
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    aux = torch.cat([saved[i] for i in model.args.aux_layers], dim=-1)
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


def train_base(model: LlamaForCausalLM, stream: Tensor, spec: TinySpec,
               gen: torch.Generator) -> float:
    """Next-token cross-entropy on random corpus windows; returns the final training loss (mean of
    the last 10% of steps)."""
    def loss_at(step: int) -> Tensor:
        ids = windows(stream, spec.batch, spec.seq_len + 1, gen)  # [B, S+1]
        logits, _ = base_forward(model, ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    model.train()
    loss = optimize(list(model.parameters()), spec.base_steps, spec.base_lr, loss_at)
    model.eval()
    return loss


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
    vocabulary rows): the head's hidden state learns to play the base's next final hidden state."""
    head.d2t.copy_(d2t)
    head.t2d.copy_(t2d)
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
    unroll = spec.draft_unroll
    data = draft_data(base, stream, head.t2d, 16 * spec.batch, spec.seq_len + unroll, gen)
    held_out = torch.arange(spec.batch)
    train_rows = data.tokens.shape[0] - spec.batch

    def loss_at(step: int) -> Tensor:
        rows = spec.batch + torch.randint(0, train_rows, (spec.batch,), generator=gen)
        return draft_loss(head, base.model.embed_tokens, data, rows, unroll)[0]

    base.requires_grad_(False)
    head.train()
    optimize(list(head.parameters()), spec.draft_steps, spec.draft_lr, loss_at)
    head.eval()
    with torch.no_grad():
        hits = draft_loss(head, base.model.embed_tokens, data, held_out, unroll)[1]
    log.info("draft head: top-1 agreement with the base %s (per unrolled step, unseen windows)",
             ", ".join(f"{h:.2f}" for h in hits.tolist()))
    return hits[0].item()


# ---------------------------------------------------------------------------------------------
# Files.

def base_config(args: ModelArgs) -> dict:
    """config.json of a Llama-3.1-style `LlamaForCausalLM` (transformers field names)."""
    return {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": args.bos_token_id, "eos_token_id": list(args.eos_token_ids),
            "head_dim": args.head_dim, "hidden_act": "silu", "hidden_size": args.hidden_size,
            "initializer_range": 0.02, "intermediate_size": args.intermediate_size,
            "max_position_embeddings": args.max_position_embeddings, "mlp_bias": False,
            "model_type": "llama", "num_attention_heads": args.num_attention_heads,
            "num_hidden_layers": args.num_hidden_layers,
            "num_key_value_heads": args.num_key_value_heads, "pretraining_tp": 1,
            "rms_norm_eps": args.rms_norm_eps, "rope_scaling": args.rope.scaling,
            "rope_theta": args.rope.theta, "tie_word_embeddings": args.tie_word_embeddings,
            "torch_dtype": "float32", "use_cache": True, "vocab_size": args.vocab_size}


def draft_config(args: ModelArgs, base: ModelArgs) -> dict:
    """config.json of an EAGLE-3 head (upstream `LlamaForCausalLMEagle3` fields)."""
    return {"architectures": ["LlamaForCausalLMEagle3"], "bos_token_id": base.bos_token_id,
            "eos_token_id": base.eos_token_ids[0], "hidden_act": "silu",
            "hidden_size": args.hidden_size, "initializer_range": 0.02,
            "intermediate_size": args.intermediate_size,
            "max_position_embeddings": args.max_position_embeddings, "model_type": "llama",
            "num_attention_heads": args.num_attention_heads, "num_hidden_layers": 1,
            "num_key_value_heads": args.num_key_value_heads, "rms_norm_eps": args.rms_norm_eps,
            "rope_scaling": args.rope.scaling, "rope_theta": args.rope.theta,
            "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
            "vocab_size": args.vocab_size, "draft_vocab_size": args.draft_vocab_size,
            "target_hidden_size": args.target_hidden_size}


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s", path)


def write_weights(module: torch.nn.Module, directory: Path, fmt: str = "safetensors") -> Path:
    """The module's state dict under its own (checkpoint) names, as safetensors or a torch .bin."""
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    if fmt == "bin":
        path = directory / "pytorch_model.bin"
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = directory / "model.safetensors"
        save_file(state, str(path), metadata={"format": "pt"})
    log.info("wrote %s (%d tensors, %.2f MB)", path, len(state), path.stat().st_size / 1e6)
    return path


def write_base(directory: Path, model: LlamaForCausalLM, tok) -> None:
    args = model.args
    write_json(directory / "config.json", base_config(args))
    write_json(directory / "generation_config.json",
               {"bos_token_id": args.bos_token_id, "eos_token_id": list(args.eos_token_ids)})
    write_weights(model, directory)
    tok.save(str(directory / "tokenizer.json"))
    log.info("wrote %s", directory / "tokenizer.json")
    write_json(directory / "tokenizer_config.json", tokenizer_config(tok))
    write_json(directory / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOT})


def prepare_dirs(out: Path, force: bool) -> tuple[Path, Path]:
    """DIR/base and DIR/draft, empty; a non-empty one is an error unless `force` (then replaced)."""
    dirs = (out / "base", out / "draft")
    for d in dirs:
        if d.is_dir() and any(d.iterdir()):
            if not force:
                raise FileExistsError(f"{d} is not empty; pass --force to replace it")
            log.warning("replacing %s (--force)", d)
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
    return dirs


# ---------------------------------------------------------------------------------------------
# Entry points.

def build(out: Path, spec: Optional[TinySpec] = None, force: bool = False) -> Path:
    """Write DIR/base and DIR/draft; returns DIR. Runs on one CPU thread: at these sizes that is
    about as fast as two, immune to oversubscription, and keeps the float sums in a fixed order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(Path(out), spec or TinySpec(), force)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, spec: TinySpec, force: bool) -> Path:
    base_dir, draft_dir = prepare_dirs(out, force)
    log.info("building tiny checkpoints in %s (seed %d)", out, spec.seed)
    t0 = time.perf_counter()
    texts = list(corpus(spec.documents))
    tok = train_tokenizer(texts, spec.bpe_vocab)
    stream = encode_corpus(tok, texts)
    log.info("corpus: %d documents, %d tokens; vocabulary %d (%d BPE + %d special)", len(texts),
             stream.shape[0], tok.get_vocab_size(), spec.bpe_vocab, len(SPECIAL_TOKENS))
    base_args, head_args = model_args(spec, tok)
    gen = torch.Generator().manual_seed(spec.seed)  # all randomness; the global RNG is untouched
    base, head = LlamaForCausalLM(base_args), Eagle3Draft(head_args)
    randomize_(base, spec.seed)
    randomize_(head, spec.seed + 1)
    loss = train_base(base, stream, spec, gen)
    log.info("base: %d steps, final training loss %.3f (%.1f s so far)", spec.base_steps, loss,
             time.perf_counter() - t0)
    init_head(head, base, *vocab_map(stream, base_args.vocab_size, spec.draft_vocab))
    train_draft(head, base, stream, spec, gen)
    write_base(base_dir, base, tok)
    write_json(draft_dir / "config.json", draft_config(head_args, base_args))
    write_weights(head, draft_dir, spec.draft_format)
    log.info("built %s in %.1f s", out, time.perf_counter() - t0)
    return out


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eagle-tiny", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  eagle-tiny --out /tmp/tiny\n"
               "  python -m eagle.tiny --out /tmp/tiny --seed 1 --draft-format bin --force")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="writes DIR/base (HF Llama + tokenizer) and DIR/draft (EAGLE-3 head)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="weights' seed (default 0)")
    parser.add_argument("--draft-format", choices=("safetensors", "bin"), default="safetensors",
                        help="draft weights as model.safetensors (default) or pytorch_model.bin")
    parser.add_argument("--force", action="store_true",
                        help="replace a non-empty DIR/base or DIR/draft")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        build(args.out, TinySpec(seed=args.seed, draft_format=args.draft_format), args.force)
    except FileExistsError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

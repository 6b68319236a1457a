"""Tiny Llama-3-style base + EAGLE-3 draft checkpoints, built from scratch in seconds on a CPU.

`build(DIR, spec)` writes
- DIR/base: a Hugging Face Llama checkpoint (config.json, model.safetensors, generation_config.json)
  with a byte-level BPE tokenizer, the Llama-3 special tokens and chat template;
- DIR/draft: an EAGLE-3 head in the published layout (config.json + model.safetensors or
  pytorch_model.bin) whose draft vocabulary is the corpus's most frequent tokens; with
  `wide_head` one 3/4 as wide as the base with its own embedding (`target_hidden_size`, as the
  Llama-3.3-70B head), with `stray_embedding` "random" or "copy" one that also carries an
  `embed_tokens.weight` (random, or the base's), as older published heads do;
- DIR/build.json, last: the spec it was built with, which marks the directory complete.
The base (32 narrow layers under the one-layer head, as deep as Llama-3.1-8B) is trained briefly
on the English corpus of `eagle.build.corpus` at 8 layers, grown to 32 and trained further; then
the head is distilled on the base's greedy predictions (`eagle.build.train`), so acceptance
lengths mean something.
The corpus and tokenizer are fixed; the weights follow the seed, byte for byte on one machine.
`python -m eagle.tiny` is the command line.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..config import ModelArgs
from ..draft import Eagle3Draft
from ..llama import LlamaForCausalLM
from ..presets import randomize_
from .corpus import BOS, EOT, corpus
from .train import TinySpec, init_head, model_args, train_draft, trained_base, vocab_map

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


def write_weights(module: torch.nn.Module, directory: Path, fmt: str = "safetensors",
                  extra: Optional[dict] = None) -> Path:
    """The module's state dict under its own (checkpoint) names, plus `extra` tensors, as
    safetensors or a torch .bin."""
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    state.update(extra or {})
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


def stray_embedding(spec: TinySpec, base: LlamaForCausalLM) -> dict:
    """{} or {"embed_tokens.weight": a copy of the base's, or a random one of its shape}."""
    if not spec.stray_embedding:
        return {}
    weight = base.model.embed_tokens.weight.detach()
    if spec.stray_embedding == "random":
        gen = torch.Generator().manual_seed(spec.seed + 3)
        weight = torch.randn(weight.shape, generator=gen) * 0.02
    return {"embed_tokens.weight": weight.clone().contiguous()}


RECORD = "build.json"  # written last: its presence marks a complete build


def build_record(spec: TinySpec) -> dict:
    return {"builder": "eagle.build.tiny", "spec": dataclasses.asdict(spec)}


def is_complete(out: Path, spec: TinySpec) -> bool:
    """Whether DIR holds a finished build of `spec`. A finished build of another spec, or a
    non-empty DIR/base or DIR/draft without the record of a finished build, is a
    `FileExistsError` that says to pass --force."""
    record = out / RECORD
    if record.is_file():
        try:
            found = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            found = None
        if found == build_record(spec):
            return True
        raise FileExistsError(f"{out} holds tiny checkpoints built with other settings "
                              f"({record}); pass --force to replace them")
    for d in (out / "base", out / "draft"):
        if d.is_dir() and any(d.iterdir()):
            raise FileExistsError(f"{d} is not empty and {out} holds no finished build "
                                  f"({RECORD}); pass --force to replace it")
    return False


def prepare_dirs(out: Path) -> tuple[Path, Path]:
    """DIR/base and DIR/draft, empty (a previous build's files removed)."""
    (out / RECORD).unlink(missing_ok=True)
    dirs = (out / "base", out / "draft")
    for d in dirs:
        if d.is_dir() and any(d.iterdir()):
            log.warning("replacing %s (--force)", d)
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def build(out: Path, spec: Optional[TinySpec] = None, force: bool = False) -> Path:
    """Write DIR/base and DIR/draft; returns DIR. A finished build of the same spec is reused
    unless `force`. Runs on one CPU thread: at these sizes that is about as fast as two, immune to
    oversubscription, and keeps the float sums in a fixed order."""
    out, spec = Path(out), spec or TinySpec()
    if not force and is_complete(out, spec):
        log.info("reusing the tiny checkpoints in %s (built with the same settings; --force "
                 "rebuilds them)", out)
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(out, spec)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, spec: TinySpec) -> Path:
    base_dir, draft_dir = prepare_dirs(out)
    log.info("building tiny checkpoints in %s (seed %d)", out, spec.seed)
    t0 = time.perf_counter()
    texts = list(corpus(spec.documents))
    tok = train_tokenizer(texts, spec.bpe_vocab)
    stream = encode_corpus(tok, texts)
    log.info("corpus: %d documents, %d tokens; vocabulary %d (%d BPE + %d special)", len(texts),
             stream.shape[0], tok.get_vocab_size(), spec.bpe_vocab, len(SPECIAL_TOKENS))
    base_args, head_args = model_args(spec, tok)
    gen = torch.Generator().manual_seed(spec.seed)  # all randomness; the global RNG is untouched
    base = trained_base(base_args, stream, spec, gen)
    log.info("base trained (%.1f s so far)", time.perf_counter() - t0)
    head = Eagle3Draft(head_args)
    randomize_(head, spec.seed + 1)
    init_head(head, base, *vocab_map(stream, base_args.vocab_size, spec.draft_vocab))
    train_draft(head, base, stream, spec, gen)
    write_base(base_dir, base, tok)
    write_json(draft_dir / "config.json", draft_config(head_args, base_args))
    write_weights(head, draft_dir, spec.draft_format, stray_embedding(spec, base))
    write_json(out / RECORD, build_record(spec))
    log.info("built %s in %.1f s", out, time.perf_counter() - t0)
    return out

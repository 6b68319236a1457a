"""Strict loading of Hugging Face Llama checkpoints and EAGLE-3 draft checkpoints.

Both formats: a directory with `config.json` and weights as `model.safetensors`,
`model.safetensors.index.json` (sharded), `pytorch_model.bin` or `pytorch_model.bin.index.json`,
in any float dtype (cast on loading). A missing, unexpected or mis-shaped tensor is an error that
names it.

Draft heads come in the layouts they are published in, each handled by name:
- upstream EAGLE (`LlamaForCausalLM`, often fp32 `pytorch_model.bin`, often no rope fields: rope
  base 10000 then, as upstream) and SpecForge (`LlamaForCausalLMEagle3`, safetensors);
- `embed_tokens.weight` in a head as wide as its target (upstream and older SpecForge/TorchSpec
  save the target's, sometimes a random one): it must have the base embedding's shape and is
  dropped, the base's embedding is used (as SGLang does);
- a head whose hidden size differs from its target's (`target_hidden_size`): it embeds tokens
  itself, so its `embed_tokens.weight` must be there;
- `eagle_aux_hidden_state_layer_ids` (in `eagle_config` or at the top level): which base layers
  feed the head, checked against the base in `EaModel` (`config.aux_layer_inputs`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Protocol

import torch
from safetensors import safe_open
from torch import Tensor, nn

from .config import ConfigError, ModelArgs, read_config
from .draft import Eagle3Draft
from .llama import LlamaForCausalLM

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Buffers some older checkpoints carry that the model recomputes instead of loading.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Architecture names of EAGLE-3 heads: upstream EAGLE's, SpecForge's.
DRAFT_ARCHITECTURES = ("LlamaForCausalLM", "LlamaForCausalLMEagle3")
ROPE_FIELDS = ("rope_theta", "rope_scaling", "rope_parameters")


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


class Kind(NamedTuple):
    head: bool  # an EAGLE draft head (else a base model)
    why: str  # in words, for messages


def config_of(directory: str) -> Optional[dict]:
    """DIR/config.json as a dict, or None when it is absent, unreadable or not a JSON object
    (loading will say which)."""
    try:
        return read_config(Path(directory) / "config.json")
    except (ConfigError, OSError):
        return None


def kind_of(config: Optional[dict]) -> Optional[Kind]:
    """What a checkpoint's config describes (a head: an Eagle architecture name or a single
    layer), or None without a config."""
    if config is None:
        return None
    eagle_arch = [a for a in config.get("architectures") or [] if "eagle" in str(a).lower()]
    layers = config.get("num_hidden_layers")
    if eagle_arch:
        return Kind(True, f"an EAGLE draft head (architecture {eagle_arch[0]})")
    if layers == 1:
        return Kind(True, "an EAGLE draft head (a config with one layer)")
    return Kind(False, f"a base model ({layers} layers)") if isinstance(layers, int) else None


def check_kinds(base: Path, head: Optional[Path]) -> None:
    """Refuse a draft head given as the base, or a base given as the head, before any weight
    loads; the message says which directory looks like what."""
    base_kind = kind_of(config_of(base))
    head_kind = kind_of(config_of(head)) if head is not None else None
    if base_kind is not None and base_kind.head:
        swap = (f"; {head} holds {head_kind.why}: swap the two paths (base model first, then the "
                f"draft head)") if head_kind is not None and not head_kind.head else ""
        raise CheckpointError(f"base_model_path {base} holds {base_kind.why}, not a base "
                              f"model{swap}")
    if head_kind is not None and not head_kind.head:
        raise CheckpointError(f"ea_model_path {head} holds {head_kind.why}, not an EAGLE-3 draft "
                              f"head; pass the head's directory as ea_model_path")


class Sharding(Protocol):
    """What loading a rank's shard of a base needs (`eagle.parallel.TensorParallel`)."""

    def base_model(self, args: ModelArgs) -> LlamaForCausalLM: ...

    def read_shards(self, files: list[Path], args: ModelArgs, device: torch.device) -> dict[str, Tensor]: ...


def load_base(path: Path, dtype: torch.dtype, device: torch.device,
              tp: Optional[Sharding] = None, config: Optional[dict] = None) -> LlamaForCausalLM:
    """The base model, or with `tp` this rank's shard of it (`eagle.parallel`). `config`: its
    config.json when the caller has read it already."""
    args = ModelArgs.from_hf_dict(config) if config is not None else \
        ModelArgs.from_json(Path(path) / "config.json")
    with torch.device("meta"):
        model = LlamaForCausalLM(args) if tp is None else tp.base_model(args)
    expected = model.state_dict()
    files = weight_files(path)
    state = read_tensors(files, device) if tp is None else tp.read_shards(files, args, device)
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


def draft_args(cfg: dict, path: Path) -> ModelArgs:
    """The head's shapes from its config.json, after checking its architecture name."""
    arch = cfg.get("architectures")
    if arch is not None and (not isinstance(arch, list) or
                             any(a not in DRAFT_ARCHITECTURES for a in arch)):
        raise CheckpointError(f"EAGLE-3 draft {path}: config.json names architectures {arch}; "
                              f"EAGLE-3 heads are {' or '.join(DRAFT_ARCHITECTURES)}")
    try:
        args = ModelArgs.from_hf_dict(cfg)
    except ConfigError as exc:
        raise ConfigError(f"EAGLE-3 draft {path}: {exc}") from None
    if args.num_hidden_layers != 1:
        log.warning("draft config says num_hidden_layers=%d; EAGLE-3 heads have one layer",
                    args.num_hidden_layers)
    if not any(k in cfg for k in ROPE_FIELDS):
        log.info("draft config %s has no rope fields: rope base 10000, no scaling (as upstream "
                 "EAGLE uses for such a head)", path / "config.json")
    return args


def take_embedding(state: dict[str, Tensor], args: ModelArgs, path: Path,
                   base_embedding: Optional[Tensor]) -> None:
    """Handle `embed_tokens.weight` by layout: a wide/narrow head needs its own; in a head as
    wide as its target a copy must have the base embedding's shape and is dropped."""
    name, shape = "embed_tokens.weight", (args.vocab_size, args.hidden_size)
    if args.has_own_embedding:
        if name not in state:
            raise CheckpointError(
                f"EAGLE-3 draft {path}: missing tensors: {name}. Its hidden size "
                f"{args.hidden_size} differs from its target's (target_hidden_size "
                f"{args.target_hidden_size}), so it embeds tokens itself: the checkpoint must "
                f"carry {name} {list(shape)}")
        return
    stray = state.pop(name, None)
    if stray is None:
        return
    if tuple(stray.shape) != shape:
        raise CheckpointError(f"EAGLE-3 draft {path}: mis-shaped tensors: {name}: checkpoint "
                              f"{tuple(stray.shape)} vs the base embedding's {shape}")
    if base_embedding is not None and not torch.equal(
            stray.to(base_embedding.device, base_embedding.dtype), base_embedding):
        log.warning("EAGLE-3 draft %s carries an %s that differs from the base model's: the "
                    "head's copy is ignored, the base's embedding is used", path, name)
    else:
        log.info("EAGLE-3 draft %s carries %s: the base model's embedding is used", path, name)


def load_draft(path: Path, dtype: torch.dtype, device: torch.device,
               base_embedding: Optional[Tensor] = None,
               config: Optional[dict] = None) -> Eagle3Draft:
    """Load an EAGLE-3 head in any of the layouts in this module's docstring. `base_embedding`
    ([vocab, H], optional) lets the log say whether a stray embedding copy is the base's;
    `config`: its config.json when the caller has read it already."""
    path = Path(path)
    args = draft_args(read_config(path / "config.json") if config is None else config, path)
    with torch.device("meta"):
        head = Eagle3Draft(args)
    state = read_tensors(weight_files(path), device)
    if any(k.startswith("layers.") for k in state):
        raise CheckpointError(f"{path} looks like an EAGLE-1/2 head (tensors layers.*); this "
                              "engine runs EAGLE-3 heads (midlayer.*, fc from 3 base layers)")
    if args.draft_vocab_size == args.vocab_size and "d2t" not in state and "t2d" not in state:
        state["d2t"] = torch.zeros(args.draft_vocab_size, dtype=torch.long)  # identity mapping
        state["t2d"] = torch.ones(args.vocab_size, dtype=torch.bool)
    take_embedding(state, args, path, base_embedding)
    check_state(head.state_dict(), state, f"EAGLE-3 draft {path}")
    assign_state(head, state, dtype, device)
    log.info("loaded EAGLE-3 draft from %s (hidden %d, target hidden %d, draft vocab %d of %d)",
             path, args.hidden_size, args.target_hidden_size, args.draft_vocab_size,
             args.vocab_size)
    return head.eval()

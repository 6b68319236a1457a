"""Configuration dataclasses: base model, EAGLE-3 draft head and drafting tree.

Each dataclass validates itself on construction so that a bad checkpoint config or CLI value fails
early with a message that says what to fix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A config.json or a tree setting that the engine cannot run."""


@dataclass
class RopeConfig:
    theta: float = 10000.0  # transformers' default when a config has no rope_theta
    scaling: Optional[dict] = None  # HF `rope_scaling` dict (types: linear, llama3) or None

    def __post_init__(self) -> None:
        if self.scaling is not None:
            kind = self.scaling.get("rope_type", self.scaling.get("type"))
            if kind in (None, "default"):
                self.scaling = None
            elif kind not in ("linear", "llama3"):
                raise ConfigError(f"unsupported rope_scaling type {kind!r} (supported: linear, llama3)")
            else:
                need = ("factor",) if kind == "linear" else (
                    "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                missing = [k for k in need if k not in self.scaling]
                if missing:
                    raise ConfigError(f"rope_scaling of type {kind} lacks {', '.join(missing)}")


@dataclass
class ModelArgs:
    """Shapes of a Llama-family transformer (the base model, or the draft's single layer)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    draft_vocab_size: int = 0  # draft head only; 0: same as vocab_size
    target_hidden_size: int = 0  # draft head only; 0: same as hidden_size
    aux_layer_ids: tuple = ()  # draft head only: `eagle_aux_hidden_state_layer_ids`; (): default

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError("hidden_size must be a multiple of num_attention_heads")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.draft_vocab_size == 0:
            self.draft_vocab_size = self.vocab_size
        if self.target_hidden_size == 0:
            self.target_hidden_size = self.hidden_size
        if isinstance(self.rope, dict):
            self.rope = RopeConfig(**self.rope)
        ids = self.aux_layer_ids
        if ids and (len(ids) != 3 or not all(isinstance(i, int) and not isinstance(i, bool)
                                             for i in ids)):
            raise ConfigError(f"eagle_aux_hidden_state_layer_ids must be three integers (the "
                              f"head's fc reads three base layers), got {list(ids)}")

    @property
    def aux_layers(self) -> tuple:
        """Layers whose *input* hidden states EAGLE-3 feeds the draft by default: 2, L//2, L-3."""
        return aux_layer_inputs(self.num_hidden_layers, ())

    @property
    def has_own_embedding(self) -> bool:
        """Draft head only: a head narrower or wider than its target embeds tokens itself."""
        return self.target_hidden_size != self.hidden_size

    @classmethod
    def from_hf_dict(cls, cfg: dict) -> "ModelArgs":
        """From a transformers config.json dict. No `rope_theta` / `rope_parameters`: base 10000,
        no scaling (transformers' default, and what upstream EAGLE uses for such a head)."""
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ConfigError(f"config.json lacks {', '.join(missing)}")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        rope_params = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or (rope_params if rope_params.get("rope_type") else None)
        theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            max_position_embeddings=cfg.get("max_position_embeddings", 8192),
            head_dim=cfg.get("head_dim") or 0,
            rope=RopeConfig(theta=theta, scaling=scaling),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            draft_vocab_size=cfg.get("draft_vocab_size") or 0,
            target_hidden_size=cfg.get("target_hidden_size") or 0,
            aux_layer_ids=config_aux_layer_ids(cfg),
        )

    @classmethod
    def from_json(cls, path: Path) -> "ModelArgs":
        return cls.from_hf_dict(read_config(path))

    def to_hf_dict(self, **extra: Any) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("rope", "eos_token_ids", "draft_vocab_size", "target_hidden_size",
                                 "aux_layer_ids")}
        out["rope_theta"] = self.rope.theta
        out["rope_scaling"] = self.rope.scaling
        out["eos_token_id"] = list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else (
            self.eos_token_ids[0] if self.eos_token_ids else None)
        out.update(extra)
        return out


def read_config(path: Path) -> dict:
    """A config.json as a dict, or a ConfigError saying what is wrong with the file."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no config.json at {path}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} holds a JSON {type(cfg).__name__}, not an object")
    return cfg


def config_aux_layer_ids(cfg: dict) -> tuple:
    """`eagle_aux_hidden_state_layer_ids` from `eagle_config` or the top level (SpecForge, vLLM
    speculators); () when neither names them. Both present and different is an error."""
    key = "eagle_aux_hidden_state_layer_ids"
    nested = cfg.get("eagle_config") or {}
    found = {where: ids for where, ids in (("eagle_config", nested.get(key)),
                                           ("top level", cfg.get(key))) if ids is not None}
    if len(found) == 2 and list(found["eagle_config"]) != list(found["top level"]):
        raise ConfigError(f"config.json names two different {key}: {found['eagle_config']} "
                          f"(eagle_config) and {found['top level']} (top level); keep one")
    ids = next(iter(found.values()), None)
    if ids is None:
        return ()
    if not isinstance(ids, list):
        raise ConfigError(f"{key} must be a list of three layer indices, got {ids!r}")
    return tuple(ids)


def aux_layer_inputs(num_layers: int, layer_ids: tuple) -> tuple:
    """Base layers whose *inputs* feed the draft head, from a head config's layer ids.

    SpecForge/SGLang count an id k as the output of base layer k, which is the input of layer
    k + 1; ids () mean EAGLE-3's default, the inputs of layers 2, L//2, L-3 (ids 1, L//2-1, L-4).
    Each id must name a layer whose output another layer reads: 0 <= k <= L - 2.
    """
    if not layer_ids:
        return (2, num_layers // 2, num_layers - 3)
    bad = [k for k in layer_ids if not 0 <= k <= num_layers - 2]
    if bad:
        raise ConfigError(
            f"eagle_aux_hidden_state_layer_ids {list(layer_ids)} in the draft config: "
            f"{', '.join(map(str, bad))} out of range for a base of {num_layers} layers (each id k "
            f"is the output of layer k and must be in 0..{num_layers - 2}); fix the head's "
            f"config.json or pair it with the base it was trained on")
    return tuple(k + 1 for k in layer_ids)


@dataclass
class TreeConfig:
    """Drafting tree settings with upstream semantics (T = total_token - 1 drafted nodes)."""

    total_token: int = 60  # upstream default; the tree holds total_token - 1 draft nodes + the root
    depth: int = 5  # draft forwards after the first; node depths reach depth + 1
    top_k: int = 10  # children per expanded node and frontier width

    def __post_init__(self) -> None:
        if self.depth < 1 or self.top_k < 1:
            raise ConfigError("depth and top_k must be >= 1")
        candidates = self.top_k + self.depth * self.top_k ** 2
        if not 2 <= self.total_token <= candidates + 1:
            raise ConfigError(
                f"total_token must be in [2, {candidates + 1}] for top_k={self.top_k}, "
                f"depth={self.depth} (top_k + depth*top_k^2 candidates + root)")

    @property
    def num_nodes(self) -> int:
        """T: drafted nodes in a tree (the root excluded)."""
        return self.total_token - 1

    @property
    def max_depth(self) -> int:
        """Deepest node depth a tree can hold (the root is depth 0)."""
        return self.depth + 1

    @property
    def step_slots(self) -> int:
        """Cache slots an EAGLE step may touch past the cache length: the verified tree, the draft
        input padded to max_depth + 1, and the draft's top_k nodes per level."""
        return max(self.total_token, self.max_depth + 1, self.depth * self.top_k)

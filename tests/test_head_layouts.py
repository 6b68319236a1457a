"""Draft heads laid out as published heads are (upstream EAGLE, SpecForge, wide-target) load, and
EAGLE greedy decoding with each equals transformers' greedy decoding of the base (float32, CPU)."""
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from eagle import EaModel
from eagle.build.tiny import build
from eagle.build.train import TinySpec
from eagle.checkpoint import CheckpointError, load_draft
from eagle.config import ConfigError
from eagle.draft import Eagle3Draft
from eagle.llama import LlamaForCausalLM, causal_mask
from eagle.presets import PRESETS
from eagle.tiny import main

CPU = torch.device("cpu")
CHAT = ["What is the capital of France?", "Write a short poem about the sea.",
        "Give me a tip for cooking rice."]
NEW = 32
AUX_KEY = "eagle_aux_hidden_state_layer_ids"


def chat_ids(tok, text: str) -> torch.Tensor:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return torch.tensor([ids["input_ids"] if hasattr(ids, "keys") else ids])  # [1, n]


def write_head(src: Path, out: Path, state: dict, fmt: str, dtype: torch.dtype, drop=(),
               **config) -> Path:
    """A head directory: src's config.json without the `drop` keys, updated with `config`; the
    float tensors of `state` in `dtype`, as model.safetensors or pytorch_model.bin."""
    out.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in drop}
    cfg.update(config, torch_dtype=str(dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(cfg))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if fmt == "bin":
        torch.save(state, out / "pytorch_model.bin")
    else:
        save_file(state, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def head_state(tiny_ckpt) -> dict:
    return load_file(tiny_ckpt / "draft" / "model.safetensors")


@pytest.fixture(scope="module")
def base_embedding(tiny_ckpt) -> torch.Tensor:
    return load_file(tiny_ckpt / "base" / "model.safetensors")["model.embed_tokens.weight"]


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    """transformers' Llama on the tiny base, the tokenizer and its depth."""
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_ckpt / "base"), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))
    return hf, tok, hf.config.num_hidden_layers


def default_ids(layers: int) -> list:
    """EAGLE-3's default aux layers (inputs of 2, L//2, L-3) in the config's numbering."""
    return [1, layers // 2 - 1, layers - 4]


def assert_lossless(base_dir: Path, head_dir: Path, hf, tok) -> list:
    """EAGLE greedy == transformers greedy on the chat prompts; returns all accept lengths."""
    ea = EaModel.from_pretrained(base_dir, head_dir, torch_dtype=torch.float32, device_map="cpu")
    accepts = []
    for text in CHAT:
        ids = chat_ids(tok, text)
        res = ea.generate(ids, max_new_tokens=NEW)
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=NEW, eos_token_id=sorted(ea.stop_ids), pad_token_id=0)
        assert res.new_token_ids == ref[0, ids.shape[1]:].tolist(), text
        accepts += res.accepted_drafts
    return accepts


LAYOUTS = {
    # upstream EAGLE: plain Llama architecture name, fp32 .bin, no rope fields, the target's
    # embedding saved in the head
    "upstream": dict(fmt="bin", dtype=torch.float32, embed="copy",
                     drop=("rope_theta", "rope_scaling", "target_hidden_size"),
                     config=dict(architectures=["LlamaForCausalLM"])),
    # SpecForge before its PR #125: a (here random) embedding, bf16 safetensors, aux ids
    "specforge-embedded": dict(fmt="safetensors", dtype=torch.bfloat16, embed="random", drop=(),
                               config=dict(architectures=["LlamaForCausalLMEagle3"],
                                           eagle_config={AUX_KEY: "default",
                                                         "use_aux_hidden_state": True})),
    # SpecForge now: no embedding, fp16 safetensors, aux ids at the top level
    "specforge": dict(fmt="safetensors", dtype=torch.float16, embed=None, drop=(),
                      config={"architectures": ["LlamaForCausalLMEagle3"], AUX_KEY: "default"}),
}


def layout_config(config: dict, layers: int) -> dict:
    """Fill in the default aux layer ids where a layout names them."""
    out = dict(config)
    if out.get(AUX_KEY) == "default":
        out[AUX_KEY] = default_ids(layers)
    if "eagle_config" in out:
        out["eagle_config"] = {k: default_ids(layers) if v == "default" else v
                               for k, v in out["eagle_config"].items()}
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_published_layout_loads_and_decodes_losslessly(name, tiny_ckpt, head_state, base_embedding,
                                                       reference, tmp_path, caplog):
    hf, tok, layers = reference
    lay = LAYOUTS[name]
    state = dict(head_state)
    if lay["embed"] == "copy":
        state["embed_tokens.weight"] = base_embedding
    elif lay["embed"] == "random":
        state["embed_tokens.weight"] = torch.randn(base_embedding.shape) * 0.02
    head_dir = write_head(tiny_ckpt / "draft", tmp_path / name, state, lay["fmt"], lay["dtype"],
                          lay["drop"], **layout_config(lay["config"], layers))
    with caplog.at_level(logging.INFO, logger="eagle.checkpoint"):
        accepts = assert_lossless(tiny_ckpt / "base", head_dir, hf, tok)
    assert sum(accepts) > 0, accepts  # the head still drafts tokens the base accepts
    if lay["embed"]:
        assert caplog.text.count("embed_tokens.weight") == 1  # logged once
        assert ("differs" in caplog.text) == (lay["embed"] == "random")
    if "rope_theta" in lay["drop"]:
        assert "no rope fields: rope base 10000" in caplog.text
        head = load_draft(head_dir, torch.float32, CPU)
        assert head.args.rope.theta == 10000.0 and head.args.rope.scaling is None


def test_random_stray_embedding_decodes_with_the_same_acceptance(tiny_ckpt, head_state, reference,
                                                                  tmp_path):
    hf, tok, _ = reference
    plain = write_head(tiny_ckpt / "draft", tmp_path / "plain", head_state, "safetensors",
                       torch.float32)
    stray = dict(head_state, **{"embed_tokens.weight": torch.randn(hf.config.vocab_size,
                                                                    hf.config.hidden_size)})
    with_stray = write_head(tiny_ckpt / "draft", tmp_path / "stray", stray, "safetensors",
                            torch.float32)
    accepts = assert_lossless(tiny_ckpt / "base", plain, hf, tok)
    assert sum(accepts) / len(accepts) > 1.0, accepts  # a random embedding would bring it to ~0
    assert assert_lossless(tiny_ckpt / "base", with_stray, hf, tok) == accepts


def test_wide_target_head_uses_its_own_embedding(tmp_path, quick_spec):
    out = build(tmp_path / "wide", TinySpec(wide_head=True, **quick_spec))
    hf = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(out / "base"))
    cfg = json.loads((out / "draft" / "config.json").read_text())
    state = load_file(out / "draft" / "model.safetensors")
    base_hidden = hf.config.hidden_size
    assert cfg["target_hidden_size"] == base_hidden != cfg["hidden_size"]
    assert state["embed_tokens.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])
    assert state["fc.weight"].shape == (cfg["hidden_size"], 3 * base_hidden)
    fp16 = write_head(out / "draft", tmp_path / "fp16", state, "safetensors", torch.float16)
    assert_lossless(out / "base", fp16, hf, tok)  # lossless whatever the head drafts
    ea = EaModel.from_pretrained(out / "base", fp16, torch_dtype=torch.float32, device_map="cpu")
    assert ea.drafter.embed is ea.head.embed_tokens
    assert ea.drafter.kv.data.shape[-1] == cfg["hidden_size"] // cfg["num_attention_heads"]


def test_tiny_cli_writes_a_stray_embedding(tmp_path, quick_spec):
    copy = build(tmp_path / "copy", TinySpec(stray_embedding="copy", **quick_spec))
    state = load_file(copy / "draft" / "model.safetensors")
    base = load_file(copy / "base" / "model.safetensors")
    assert torch.equal(state["embed_tokens.weight"], base["model.embed_tokens.weight"])
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "both"), "--wide-head", "--stray-embedding", "copy"])
    assert exc.value.code == 2


def test_config_aux_layers_choose_which_base_states_feed_the_head(tiny_ckpt, head_state, reference,
                                                                  tmp_path):
    hf, tok, layers = reference
    ids = chat_ids(tok, CHAT[0])
    n = ids.shape[1]
    with torch.no_grad():
        states = hf(ids, output_hidden_states=True).hidden_states  # [k]: the input of layer k
    feeds = {}
    for name, aux in (("none", None), ("default", default_ids(layers)), ("other", [0, 3, 5])):
        config = {} if aux is None else {"eagle_config": {AUX_KEY: aux}}
        head_dir = write_head(tiny_ckpt / "draft", tmp_path / name, head_state, "safetensors",
                              torch.float32, **config)
        ea = EaModel.from_pretrained(tiny_ckpt / "base", head_dir, torch_dtype=torch.float32,
                                     device_map="cpu")
        ea.base.setup_cache(n)
        with torch.no_grad():
            feeds[name] = ea.base(ids, torch.arange(n), 0, causal_mask(0, n, CPU)).aux_hidden
        if name == "other":
            assert ea.base.aux_layers == (1, 4, 6)
            assert_lossless(tiny_ckpt / "base", head_dir, hf, tok)
    want = torch.cat([states[1], states[4], states[6]], dim=-1)  # outputs of layers 0, 3, 5
    assert (feeds["other"] - want).abs().max().item() <= 1e-5
    assert torch.equal(feeds["none"], feeds["default"])
    assert not torch.allclose(feeds["other"], feeds["default"])


@pytest.mark.parametrize("config, error, message", [
    ({"eagle_config": {AUX_KEY: [1, 4, 99]}}, ConfigError, f"{AUX_KEY} .*99 out of range"),
    ({AUX_KEY: [1, 4]}, ConfigError, f"{AUX_KEY} must be three integers"),
    ({AUX_KEY: [1, 4, 5], "eagle_config": {AUX_KEY: [1, 4, 6]}}, ConfigError, "two different"),
    ({"architectures": ["Eagle3Speculator"]}, CheckpointError, "Eagle3Speculator"),
])
def test_bad_head_configs_are_refused(config, error, message, tiny_ckpt, head_state, tmp_path):
    head_dir = write_head(tiny_ckpt / "draft", tmp_path / "bad", head_state, "safetensors",
                          torch.float32, **config)
    with pytest.raises(error, match=message):
        EaModel.from_pretrained(tiny_ckpt / "base", head_dir, torch_dtype=torch.float32,
                                device_map="cpu")


def test_wide_head_without_embedding_and_mis_shaped_embeddings_are_refused(
        tiny_ckpt, head_state, base_embedding, tmp_path):
    vocab, hidden = base_embedding.shape
    wide = {k: v for k, v in head_state.items()}  # the same head, said to read a 2x wider target
    wide["fc.weight"] = torch.zeros(hidden, 6 * hidden)
    no_embed = write_head(tiny_ckpt / "draft", tmp_path / "wide", wide, "safetensors",
                          torch.float32, target_hidden_size=2 * hidden)
    with pytest.raises(CheckpointError, match="missing tensors: embed_tokens.weight.*"
                                              "target_hidden_size"):
        load_draft(no_embed, torch.float32, CPU)
    bad_wide = write_head(tiny_ckpt / "draft", tmp_path / "bad_wide",
                          dict(wide, **{"embed_tokens.weight": torch.zeros(vocab, hidden + 1)}),
                          "safetensors", torch.float32, target_hidden_size=2 * hidden)
    with pytest.raises(CheckpointError, match="mis-shaped tensors: embed_tokens.weight"):
        load_draft(bad_wide, torch.float32, CPU)
    short = dict(head_state, **{"embed_tokens.weight": torch.zeros(vocab - 1, hidden)})
    bad_stray = write_head(tiny_ckpt / "draft", tmp_path / "bad_stray", short, "safetensors",
                           torch.float32)
    with pytest.raises(CheckpointError, match=r"mis-shaped tensors: embed_tokens.weight: "
                                              rf"checkpoint \({vocab - 1}, {hidden}\)"):
        load_draft(bad_stray, torch.float32, CPU)


def test_eagle12_head_is_named_as_such(tiny_ckpt, head_state, tmp_path):
    old = {k.replace("midlayer.", "layers.0."): v for k, v in head_state.items()}
    head_dir = write_head(tiny_ckpt / "draft", tmp_path / "eagle2", old, "bin", torch.float32)
    with pytest.raises(CheckpointError, match="EAGLE-1/2 head"):
        load_draft(head_dir, torch.float32, CPU)


def test_llama33_70b_preset_is_a_wide_target_pair():
    base_args, head_args = PRESETS["llama3.3-70b"]
    with torch.device("meta"):
        base, head = LlamaForCausalLM(base_args), Eagle3Draft(head_args)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["fc.weight"] == (6144, 3 * 8192)
    assert shapes["embed_tokens.weight"] == (128256, 6144)
    assert shapes["midlayer.self_attn.q_proj.weight"] == (48 * 128, 2 * 6144)
    assert shapes["lm_head.weight"] == (32000, 6144)
    assert round(sum(p.numel() for p in base.parameters()) / 1e9, 1) == 70.6  # the docstring's
    assert round(sum(p.numel() for p in head.parameters()) / 1e9, 1) == 1.6


def test_swapped_paths_in_the_python_api_say_which_is_which(tiny_ckpt):
    with pytest.raises(CheckpointError) as exc:
        EaModel.from_pretrained(tiny_ckpt / "draft", tiny_ckpt / "base", torch_dtype=torch.float32,
                                device_map="cpu")
    message = str(exc.value)
    assert "swap" in message and str(tiny_ckpt / "draft") in message and "draft head" in message
    with pytest.raises(CheckpointError, match="not an EAGLE-3 draft head"):
        EaModel.from_pretrained(tiny_ckpt / "base", tiny_ckpt / "base", torch_dtype=torch.float32,
                                device_map="cpu")

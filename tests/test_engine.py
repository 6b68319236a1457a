"""EAGLE-3 decoding is lossless: token ids equal transformers' greedy `generate` (float32, CPU)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from eagle import EaModel
from eagle.checkpoint import CheckpointError, load_base, load_draft
from eagle.config import ConfigError
from eagle.draft import Drafter
from eagle.tree.masks import MaskImplUnavailable
from eagle.tree.select import DraftTree

DEPTH = 5
RAW = ["The weather today is", "Once upon a time", "def add(a, b):", "Question: what is",
       "In the city of", "The best way to learn", "1, 2, 3,", "My favourite"]
CHAT = ["Write a short poem about the sea.", "What is the capital of France?",
        "Explain recursion to a child.", "List three fruits.", "How do plants grow?",
        "Give me a tip for cooking rice.", "Why is the sky blue?", "Tell me a joke."]


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    ea = EaModel.from_pretrained(tiny_ckpt / "base", tiny_ckpt / "draft", total_token=60,
                                 depth=DEPTH, top_k=10, torch_dtype=torch.float32, device_map="cpu")
    hf = AutoModelForCausalLM.from_pretrained(tiny_ckpt / "base", dtype=torch.float32).eval()
    return ea, hf


def encode(tok, text: str, chat: bool) -> torch.Tensor:
    if chat:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return torch.tensor([ids])
    return tok(text, return_tensors="pt").input_ids


def all_prompts(tok):
    return [encode(tok, t, False) for t in RAW] + [encode(tok, t, True) for t in CHAT]


def hf_greedy(hf, ea, ids, n, stop_ids=None):
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                      eos_token_id=sorted(stop_ids or ea.stop_ids), pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


# half of the prompts (raw and chat alike) in the fast suite, the other half with the slow tests
HALVES = [0, pytest.param(1, marks=pytest.mark.slow)]


@pytest.mark.parametrize("half", HALVES)
def test_greedy_eagle_equals_transformers_generate(models, half):
    ea, hf = models
    accepted = []
    for ids in all_prompts(ea.get_tokenizer())[half::2]:
        res = ea.generate(ids, max_new_tokens=64)
        assert res.new_token_ids == hf_greedy(hf, ea, ids, 64)
        assert res.output_ids[0].tolist() == ids[0].tolist() + res.new_token_ids
        accepted += res.accepted_drafts
    assert len(accepted) > 0


@pytest.mark.parametrize("n", [1, DEPTH, DEPTH + 1, DEPTH + 2])
def test_exact_token_budget(models, n):
    ea, hf = models
    for ids in all_prompts(ea.get_tokenizer())[::4]:
        res = ea.generate(ids, max_new_tokens=n)
        ref = hf_greedy(hf, ea, ids, n)
        assert res.new_token_ids == ref
        assert len(res.new_token_ids) <= n


@pytest.mark.parametrize("half", HALVES)
def test_naivegenerate_equals_transformers_generate(models, half):
    ea, hf = models
    for ids in all_prompts(ea.get_tokenizer())[2 * half::4]:
        out = ea.naivegenerate(ids, max_new_tokens=48)
        assert out[0, ids.shape[1]:].tolist() == hf_greedy(hf, ea, ids, 48)


class OracleDrafter(Drafter):
    """Drafts a tree whose first branch is the base's true greedy continuation."""

    def __init__(self, inner: Drafter, prompt_len: int, truth: list[int]):
        super().__init__(inner.head, inner.embed, inner.tree, 512)
        self.prompt_len, self.truth = prompt_len, truth

    def step(self, features, tokens, section, count=None, window=None):
        m = tokens.shape[0] if count is None else int(count)  # real rows; the rest is padding
        self.n_ctx += m
        at = int(self.n_ctx) - self.prompt_len  # index of the root token in the new tokens
        t, d = self.tree.num_nodes, self.tree.max_depth
        chain = (self.truth[at + 1: at + 1 + d] + [0] * d)[:d]
        gen = torch.Generator().manual_seed(at)
        junk = torch.randint(0, 200, (t - d,), generator=gen).tolist()
        parents = list(range(d)) + [int(torch.randint(0, i + d + 1, (1,), generator=gen))
                                    for i in range(t - d)]
        tokens = torch.tensor([tokens[m - 1].item()] + chain + junk)
        return DraftTree(tokens, torch.tensor(parents))


def run_with_oracle(ea, ids, truth, n, stop_ids=frozenset()):
    real, saved_stops = ea.drafter, ea.stop_ids
    ea.drafter, ea.stop_ids = OracleDrafter(real, ids.shape[1], truth), stop_ids
    try:
        return ea.generate(ids, max_new_tokens=n)
    finally:
        ea.drafter, ea.stop_ids = real, saved_stops


def test_oracle_tree_is_fully_accepted(models):
    ea, hf = models
    ids = encode(ea.get_tokenizer(), CHAT[0], True)
    truth = hf_greedy(hf, ea, ids, 200, stop_ids={-1})
    res = run_with_oracle(ea, ids, truth, 7 * (DEPTH + 2))
    assert res.new_token_ids == truth[: 7 * (DEPTH + 2)]
    assert res.accepted_drafts == [DEPTH + 1] * 7


def test_eos_inside_accepted_span_ends_the_output(models):
    ea, hf = models
    ids = encode(ea.get_tokenizer(), CHAT[1], True)
    truth = hf_greedy(hf, ea, ids, 60, stop_ids={-1})
    # a stop token in the middle of the second step's accepted chain (not at a step boundary)
    k = next(i for i in range(DEPTH + 4, 2 * (DEPTH + 2)) if truth[i] not in truth[:i])
    res = run_with_oracle(ea, ids, truth, 60, frozenset({truth[k]}))
    assert res.new_token_ids == truth[: k + 1]
    assert res.new_token_ids == hf_greedy(hf, ea, ids, 60, stop_ids={truth[k]})


def test_seeded_sampling_is_reproducible(models):
    ea, _ = models
    ids = encode(ea.get_tokenizer(), CHAT[2], True)
    a = ea.generate(ids, temperature=0.8, top_p=0.9, top_k=50, max_new_tokens=40, seed=11)
    b = ea.generate(ids, temperature=0.8, top_p=0.9, top_k=50, max_new_tokens=40, seed=11)
    assert a.new_token_ids == b.new_token_ids and a.accepted_drafts == b.accepted_drafts
    c = ea.naive_generate(ids, temperature=0.8, max_new_tokens=40, seed=11)
    d = ea.naive_generate(ids, temperature=0.8, max_new_tokens=40, seed=11)
    assert c.new_token_ids == d.new_token_ids


def test_profile_reports_every_section(models):
    ea, _ = models
    res = ea.generate(encode(ea.get_tokenizer(), RAW[0], False), max_new_tokens=16, profile=True)
    sections = res.profile.to_dict()["sections"]
    for name in ("draft_forward", "draft_select", "tree_mask", "retrieve_indices", "verify_forward",
                 "posterior", "kv_update", "step_total"):
        assert sections[name]["ms_per_step"] > 0
    assert res.profile.steps == res.steps


def broken_draft(tiny_ckpt, tmp_path, edit):
    out = tmp_path / "draft"
    shutil.copytree(tiny_ckpt / "draft", out)
    state = load_file(out / "model.safetensors")
    edit(state)
    save_file(state, out / "model.safetensors")
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("midlayer.hidden_norm.weight"), "missing tensors: midlayer.hidden_norm.weight"),
    (lambda s: s.update({"embed_tokens.weight": torch.zeros(2, 2)}),
     "mis-shaped tensors: embed_tokens.weight"),
    (lambda s: s.update({"extra.weight": torch.zeros(2, 2)}), "unexpected tensors: extra.weight"),
    (lambda s: s.update({"fc.weight": s["fc.weight"][:, :-1].contiguous()}), "mis-shaped tensors: fc.weight"),
])
def test_draft_loading_is_strict(tiny_ckpt, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_draft(broken_draft(tiny_ckpt, tmp_path, edit), torch.float32, torch.device("cpu"))


def test_sharded_base_and_bin_draft_load(tiny_ckpt, tmp_path):
    """The same weights as two safetensors shards + index, and the draft as pytorch_model.bin."""
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(tiny_ckpt / "base" / "config.json", base)
    state = load_file(tiny_ckpt / "base" / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, base / file)
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    cpu = torch.device("cpu")
    one, two = load_base(tiny_ckpt / "base", torch.float32, cpu), load_base(base, torch.float32, cpu)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))

    draft = tmp_path / "draft"
    draft.mkdir()
    shutil.copy(tiny_ckpt / "draft" / "config.json", draft)
    torch.save(load_file(tiny_ckpt / "draft" / "model.safetensors"), draft / "pytorch_model.bin")
    head = load_draft(draft, torch.float32, cpu)
    assert head.d2t.dtype == torch.long and int(head.t2d.sum()) == head.args.draft_vocab_size


@pytest.mark.no_cuda
def test_unavailable_mask_impl_fails_at_construction(models):
    ea, _ = models
    with pytest.raises(MaskImplUnavailable, match="use one of: rebuild, incremental, vectorized"):
        EaModel(ea.base, ea.head, ea.tree, mask_impl="triton")


def test_base_alone_decodes_naively_and_refuses_drafting(models, tiny_ckpt):
    ea, _ = models
    plain = EaModel.from_pretrained(tiny_ckpt / "base", None, torch_dtype=torch.float32, device_map="cpu")
    assert plain.head is None and plain.drafter is None
    ids = encode(ea.get_tokenizer(), CHAT[1], True)
    assert plain.naive_generate(ids, max_new_tokens=24).new_token_ids == \
        ea.naive_generate(ids, max_new_tokens=24).new_token_ids
    with pytest.raises(ConfigError, match="no draft head"):
        plain.generate(ids, max_new_tokens=4)


def test_cast_after_construction_drafts_in_the_new_dtype(tiny_ckpt):
    ea = EaModel.from_pretrained(tiny_ckpt / "base", tiny_ckpt / "draft", torch_dtype=torch.float32,
                                 device_map="cpu")
    ids = encode(ea.get_tokenizer(), CHAT[2], True)
    ea.generate(ids, max_new_tokens=4)  # the draft KV cache now exists in float32
    ea.to(torch.bfloat16)
    res = ea.generate(ids, max_new_tokens=8)
    assert ea.drafter.kv.data.dtype == torch.bfloat16 and res.steps >= 1 and res.new_tokens >= 1

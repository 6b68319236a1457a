"""The fixed-shape pieces behind CUDA graphs, on the CPU: windows, masks at a device-side start,
padded draft input, greedy acceptance without host reads, the --cuda-graph setting."""
import json

import pytest
import torch

from eagle.config import TreeConfig
from eagle.draft import Drafter
from eagle.llama import causal_mask, tree_attention_mask
from eagle.presets import build_random
from eagle.graphs import MIN_WINDOW, all_windows, window_for
from eagle.tree.masks import build_tree_buffers
from eagle.verify import accept_greedy, accept_greedy_on_device


@pytest.mark.parametrize("max_len", [64, 128, 300, 4096])
def test_windows_cover_every_need_and_come_from_the_captured_set(max_len):
    windows = all_windows(max_len)
    assert windows[-1] == max_len and windows == sorted(set(windows))
    for need in range(1, max_len + 1):
        w = window_for(need, max_len)
        assert need <= w <= max(2 * need, MIN_WINDOW) and w in windows


def test_masks_at_a_device_start_match_the_host_ones_padded():
    parents = torch.tensor([0, 0, 1, 2, 2, 4])
    tree = build_tree_buffers(parents, 6, "vectorized").mask
    for start in (0, 5, 17):
        host = tree_attention_mask(start, tree)  # [T+1, start + T+1]
        static = tree_attention_mask(torch.tensor(start), tree, 40)  # [T+1, 40]
        assert torch.equal(static[:, :host.shape[1]], host) and not static[:, host.shape[1]:].any()
        host = causal_mask(start, 3, torch.device("cpu"))
        static = causal_mask(torch.tensor(start), 3, torch.device("cpu"), 40)
        assert torch.equal(static[:, :host.shape[1]], host) and not static[:, host.shape[1]:].any()


def drafter_pair(model_seed: int, input_seed: int, rows: int) -> tuple:
    """Two drafters of one random tiny head (tree 30/3/4, 128 slots), `rows` random draft inputs
    (features [1, rows, 3H], tokens [rows]) and the generator they were drawn from."""
    base, head = build_random("tiny", torch.float32, torch.device("cpu"), seed=model_seed)
    gen = torch.Generator().manual_seed(input_seed)
    feats = torch.randn(1, rows, 3 * base.args.hidden_size, generator=gen)
    toks = torch.randint(0, base.args.vocab_size, (rows,), generator=gen)
    tree = TreeConfig(30, 3, 4)
    return [Drafter(head, base.model.embed_tokens, tree, 128) for _ in range(2)], feats, toks, gen


def test_padded_draft_input_drafts_the_unpadded_tree():
    """A step over m real rows padded to m + 3 (garbage after them) drafts the same tree and
    leaves the draft cache length where the unpadded step does."""
    (plain, padded), feats, toks, gen = drafter_pair(model_seed=4, input_seed=0, rows=9)
    with torch.inference_mode():
        for d in (plain, padded):
            d.step(feats[:, :6], toks[:6])  # a prefix, as after the prefill
        want = plain.step(feats[:, 6:8], toks[6:8])
        junk = torch.randn(1, 3, feats.shape[-1], generator=gen)
        got = padded.step(torch.cat((feats[:, 6:8], junk), 1), torch.cat((toks[6:8], toks[:3])),
                          count=torch.tensor(2), window=64)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.parents, want.parents)
    assert int(padded.n_ctx) == int(plain.n_ctx) == 8


def test_greedy_acceptance_on_the_device_pads_past_the_count():
    parents = torch.tensor([0, 1, 0, 3])  # two chains: 0-1-2 and 0-3-4
    tokens = torch.tensor([9, 1, 2, 3, 4])
    logits = torch.full((5, 10), -5.0)
    for node, nxt in ((0, 3), (3, 4), (4, 7)):
        logits[node, nxt] = 5.0
    retrieve = build_tree_buffers(parents, 4, "vectorized").retrieve_indices  # [4, 5], -1 padded
    res = accept_greedy_on_device(logits, tokens, retrieve)
    assert int(res.count) == 3 and res.path.tolist() == [0, 3, 4, 0, 0]
    assert res.tokens.tolist() == [3, 4, 7, 0, 0]
    assert accept_greedy(logits, tokens, retrieve).tokens == [3, 4, 7]


def test_cuda_graph_setting_is_checked_and_recorded(tiny_ckpt, tmp_path, caplog):
    from evaluation.gen_cli import main as gen_main

    question = tmp_path / "q.jsonl"
    question.write_text('{"question_id": 1, "category": "writing", "turns": ["Hi"]}\n')
    common = ["--base-model-path", str(tiny_ckpt / "base"), "--question-file", str(question),
              "--max-new-token", "4", "--device", "cpu", "--warmup", "0"]
    refused = tmp_path / "refused.jsonl"
    assert gen_main("baseline", common + ["--cuda-graph", "on", "--answer-file", str(refused)]) == 2
    assert "--cuda-graph on needs a CUDA device" in caplog.text and not refused.exists()
    answers = tmp_path / "a.jsonl"
    assert gen_main("baseline", common + ["--answer-file", str(answers)]) == 0
    settings = json.loads(answers.read_text().splitlines()[0])["settings"]
    assert settings["cuda_graph"] == "off" and settings["attention_kernel"] == "torch default"


def test_drafter_prefill_then_a_one_position_step_drafts_what_one_step_over_the_prompt_does():
    """The prompt's positions before the last in `prefill`, then a step from the last one: the
    same draft cache and tree as one step over every position (how the first step used to run)."""
    (whole, split), feats, toks, _ = drafter_pair(model_seed=5, input_seed=1, rows=7)
    with torch.inference_mode():
        want = whole.step(feats, toks)
        split.prefill(feats[:, :6], toks[:6])
        assert int(split.n_ctx) == 6
        got = split.step(feats[:, 6:], toks[6:])
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.parents, want.parents)
    assert int(split.n_ctx) == int(whole.n_ctx) == 7
    torch.testing.assert_close(split.kv.data[:, :, :, :7], whole.kv.data[:, :, :, :7])

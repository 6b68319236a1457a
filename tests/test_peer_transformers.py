"""benchmarks/peer_transformers.py hands the preset's weights to transformers unchanged: same greedy tokens."""
import pytest
import torch

from benchmarks import peer_transformers
from eagle.config import TreeConfig
from eagle.ea_model import EaModel
from eagle.presets import build_random


def test_peer_model_holds_the_preset_weights_and_decodes_like_the_engine():
    peer = peer_transformers.hf_model("tiny", torch.float32, 3, torch.device("cpu"))
    base, _ = build_random("tiny", torch.float32, torch.device("cpu"), 3, draft=False)
    ids = torch.randint(0, base.args.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    theirs = peer.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0,
                           cache_implementation="static")[0, ids.shape[1]:].tolist()
    ours = EaModel(base, None, TreeConfig()).naive_generate(ids, max_new_tokens=16).new_token_ids
    assert theirs == ours


def test_report_is_saved_after_every_turn_and_flags_slow_ones(tmp_path):
    """A run stopped mid-way leaves a readable report of its turns (complete: false); a turn far
    slower per token than the median (a recompile inside timing) is named."""
    import argparse
    import json

    peer = peer_transformers
    args = argparse.Namespace(cache="static", preset="tiny", dtype="float32", max_new_token=8,
                              out=tmp_path / "peer.json")
    turn = {"question_id": 81, "turn": 1, "prompt_tokens": 30, "new_tokens": 8, "wall_time": 0.08,
            "first_token": 0.01}
    turns = [dict(turn, wall_time=4.0), *(dict(turn, turn=t) for t in (2, 3, 4))]
    peer.save(args, turns[:1], 1.0, "a GPU", complete=False)
    partial = json.loads(args.out.read_text())
    assert partial["complete"] is False and len(partial["turns"]) == 1
    report = peer.save(args, turns, 1.0, "a GPU", complete=True)
    assert json.loads(args.out.read_text()) == report and report["complete"] is True
    assert report["slow_turns"] == ["question 81 turn 1"]
    assert report["tokens_per_s"] == pytest.approx(32 / 4.24)

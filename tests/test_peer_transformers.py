"""scripts/peer_transformers.py hands the preset's weights to transformers unchanged: same greedy tokens."""
import importlib.util
from pathlib import Path

import torch

from eagle.config import TreeConfig
from eagle.ea_model import EaModel
from eagle.presets import build_random

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "peer_transformers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("peer_transformers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_model_holds_the_preset_weights_and_decodes_like_the_engine():
    peer = load_script().hf_model("tiny", torch.float32, 3, torch.device("cpu"))
    base, _ = build_random("tiny", torch.float32, torch.device("cpu"), 3, draft=False)
    ids = torch.randint(0, base.args.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    theirs = peer.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0,
                           cache_implementation="static")[0, ids.shape[1]:].tolist()
    ours = EaModel(base, None, TreeConfig()).naive_generate(ids, max_new_tokens=16).new_token_ids
    assert theirs == ours

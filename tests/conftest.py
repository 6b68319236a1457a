"""Shared fixtures: the tiny checkpoints from `eagle.tiny`, built once per test session."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """DIR holding DIR/base (HF Llama + tokenizer) and DIR/draft (EAGLE-3 head), seed 0: the
    default sizes, but a base of 8 layers, not grown to 32. The tests check what decoding does,
    which depth does not change, and run about 3x faster on it."""
    from eagle.tiny import build
    from eagle.tiny_train import TinySpec

    return build(tmp_path_factory.mktemp("tiny_ckpt"), TinySpec(layers=8, grown_from=8))

"""Shared fixtures: the tiny checkpoints from `eagle.tiny`, built once per test session."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """DIR holding DIR/base (HF Llama + tokenizer) and DIR/draft (EAGLE-3 head), seed 0."""
    from eagle.tiny import build

    return build(tmp_path_factory.mktemp("tiny_ckpt"))

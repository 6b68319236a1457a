"""The CUDA skips of every test file: `gpu` (needs CUDA) and `no_cuda` (checks behaviour without
it), and shared fixtures: the tiny
checkpoints from `eagle.build.tiny` (built once per test session), the MT-Bench questions (the
shipped data/mt_bench/question.jsonl, checked against the published sha256), one torch thread for
modules that decode the tiny model, and the Triton interpreter."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "data" / "mt_bench" / "question.jsonl"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` skip where no CUDA device is available, tests marked `no_cuda` where one
    is, each with the reason."""
    marked = [item for item in items if "gpu" in item.keywords or "no_cuda" in item.keywords]
    if not marked:
        return
    import torch

    cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    skip_here = pytest.mark.skip(reason="checks behaviour without CUDA, which is here (marked no_cuda)")
    for item in marked:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip)
        elif "no_cuda" in item.keywords and cuda:
            item.add_marker(skip_here)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """DIR holding DIR/base (HF Llama + tokenizer) and DIR/draft (EAGLE-3 head), seed 0."""
    from eagle.build.tiny import build

    return build(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def quick_spec() -> dict:
    """`TinySpec` settings for builds whose weights do not matter (formats, flags, determinism):
    a small corpus and vocabulary, 8 layers, one training step each (a fifth of a second)."""
    return dict(documents=100, bpe_vocab=300, draft_vocab=64, seq_len=16, layers=8, grown_from=8,
                base_steps=1, grow_steps=1, draft_steps=1)


@pytest.fixture
def preset_1040(monkeypatch) -> str:
    """"preset:tiny-1040": the tiny preset with a vocabulary the tiny tokenizer's 1040 ids fit."""
    import dataclasses

    from eagle.presets import PRESETS

    base, draft = PRESETS["tiny"]
    wide = dataclasses.replace(base, vocab_size=1040), dataclasses.replace(draft, vocab_size=1040)
    monkeypatch.setitem(PRESETS, "tiny-1040", wide)
    return "preset:tiny-1040"


@pytest.fixture(scope="session")
def question_file() -> Path:
    """The shipped questions, verified (a fresh clone needs no network and nothing beside it)."""
    from evaluation.mt_bench_data import is_verified

    assert is_verified(QUESTIONS), f"{QUESTIONS} is missing or fails its sha256 check"
    return QUESTIONS


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's small ops only pay for intra-op thread synchronisation (10x slower on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def triton_interpreter():
    """Triton running its interpreter on CPU tensors, for the kernels' checks on CPU-only runs.

    The interpreter must be chosen before triton is first imported, so this sets
    TRITON_INTERPRET=1 for the rest of the test run (no compiled kernel can run there anyway)."""
    import torch

    from eagle.fused import has_triton

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU tests run the compiled kernels instead")
    if not has_triton():
        pytest.skip("triton is not installed")
    import numpy

    try:
        int(numpy.ones(1, dtype=numpy.int64))  # what the interpreter does with a loop bound
    except TypeError:
        pytest.skip(f"Triton's interpreter cannot run loops over runtime bounds with numpy "
                    f"{numpy.__version__} (it converts one-element arrays to int)")
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    import triton

    if not triton.knobs.runtime.interpret:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set")
    return triton

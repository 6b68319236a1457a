"""GPU checks of the static-shape engine: CUDA graphs decode the tokens eager decoding does (greedy,
and sampling with one seed), the default (deterministic) kernels reproduce themselves, and a
captured step never syncs."""
import pytest
import torch

from eagle import EaModel
from eagle.config import TreeConfig
from eagle.presets import build_random
from eagle.profiling import no_section
from eagle.graphs import window_for
from eagle.tree.masks import MASK_IMPLS

pytestmark = pytest.mark.gpu

TREE = TreeConfig(60, 5, 10)


def decode_every_way(model: EaModel, prompt: torch.Tensor, new: int, **sampling) -> dict:
    """Token ids of the baseline and of every mask implementation on one model (`sampling`:
    temperature, top_p, top_k, seed for `generate`; greedy without)."""
    out = {"baseline": model.naive_generate(prompt, max_new_tokens=new, **sampling).new_token_ids}
    for impl in MASK_IMPLS:
        model.mask_impl = impl
        out[impl] = model.generate(prompt, max_new_tokens=new, **sampling).new_token_ids
    return out


def twin_models(preset: str, dtype: torch.dtype, max_length: int = 1024) -> tuple:
    """(graph model, eager model) sharing one set of random weights."""
    base, head = build_random(preset, dtype, torch.device("cuda"), seed=0)
    graph = EaModel(base, head, TREE, max_length=max_length, cuda_graph=True)
    eager = EaModel(base, head, TREE, max_length=max_length, cuda_graph=False)
    return graph, eager


def prompt_ids(vocab: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graphs_decode_the_eager_tokens_tiny(dtype):
    graph, eager = twin_models("tiny", dtype)
    for seed in range(3):
        prompt = prompt_ids(graph.base.args.vocab_size, 40 + 30 * seed, seed)
        assert decode_every_way(graph, prompt, 80) == decode_every_way(eager, prompt, 80)


def test_graphs_decode_the_eager_tokens_8b_fp16():
    graph, eager = twin_models("llama3.1-8b", torch.float16)
    prompt = prompt_ids(128000, 200)
    assert decode_every_way(graph, prompt, 48) == decode_every_way(eager, prompt, 48)


SAMPLINGS = [dict(temperature=0.7, seed=3), dict(temperature=1.0, top_p=0.9, seed=4),
             dict(temperature=1.0, top_k=20, seed=5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graphs_sample_the_eager_tokens_tiny(dtype):
    """Captured sampling steps draw what eager ones draw: one seed, the same tokens, for every
    sampling shape (each its own graphs), after greedy graphs were captured on the same model."""
    graph, eager = twin_models("tiny", dtype)
    prompt = prompt_ids(graph.base.args.vocab_size, 40)
    assert decode_every_way(graph, prompt, 40) == decode_every_way(eager, prompt, 40)
    for sampling in SAMPLINGS:
        got = decode_every_way(graph, prompt, 80, **sampling)
        assert got == decode_every_way(eager, prompt, 80, **sampling), sampling
        assert got == decode_every_way(graph, prompt, 80, **sampling), sampling  # reseeded per call


def test_graphs_sample_the_eager_tokens_8b_fp16():
    graph, eager = twin_models("llama3.1-8b", torch.float16)
    prompt = prompt_ids(128000, 200)
    for sampling in SAMPLINGS[:2]:
        assert decode_every_way(graph, prompt, 48, **sampling) == \
            decode_every_way(eager, prompt, 48, **sampling), sampling


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_default_kernels_reproduce_themselves_8b(dtype):
    """The same decoding twice in one process, then after both caches were reallocated (which
    also recaptures the graphs): identical tokens, baseline and every mask implementation."""
    graph, _ = twin_models("llama3.1-8b", dtype)
    prompt = prompt_ids(128000, 200, seed=1)
    first = decode_every_way(graph, prompt, 64)
    assert decode_every_way(graph, prompt, 64) == first
    graph.base.kv, graph.drafter.kv = None, None
    assert decode_every_way(graph, prompt, 64) == first
    assert all(len(ids) == 64 for ids in first.values())


@pytest.mark.parametrize("sampling", [{}, SAMPLINGS[1]], ids=["greedy", "sampling"])
def test_captured_and_eager_triton_steps_never_sync(sampling):
    """Neither a replayed nor an eager step reads the device from the host (sampling: the
    compiled processing and acceptance included)."""
    model, eager = twin_models("tiny", torch.float16)
    prompt = prompt_ids(model.base.args.vocab_size, 50)
    for m in (model, eager):
        m.mask_impl = "triton"
        m.generate(prompt, max_new_tokens=16, **sampling)  # captures; leaves the buffers mid-sequence
    window = window_for(50 + 16 + model.tree.step_slots, model.max_length)
    states = [m.eagle_step.sampling if sampling else None for m in (model, eager)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode(), model.kernels.blas_context(model.device):  # as generate runs them
            model.graphs.run_step(model.eagle_step, window, no_section, True, states[0])
            eager.graphs.run_step(eager.eagle_step, window, no_section, False, states[1])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert model.eagle_step.result() and eager.eagle_step.result()

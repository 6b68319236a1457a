"""Acceptance does not depend on how an implementation pads or orders its retrieve indices."""
import pytest
import torch

from eagle.tree.masks import available_mask_impls, build_tree_buffers
from eagle.verify import Sampler, SamplerState, accept_greedy, accept_sampling

CPU_IMPLS = available_mask_impls(torch.device("cpu"))


def random_case(seed: int, t: int = 12, vocab: int = 6):
    g = torch.Generator().manual_seed(seed)
    parents = torch.tensor([int(torch.randint(0, i + 1, (1,), generator=g)) for i in range(t)])
    tokens = torch.randint(0, vocab, (t + 1,), generator=g)
    logits = torch.randn(t + 1, vocab, generator=g)
    return parents, tokens, logits


def test_padding_rows_never_win():
    """All draft tokens disagree with the base: only the bonus token comes out."""
    parents, tokens = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([5, 6, 7, 8, 9, 10])
    logits = torch.zeros(6, 30)
    logits[:, 19] = 1.0
    for impl in CPU_IMPLS:
        acc = accept_greedy(logits, tokens, build_tree_buffers(parents, 3, impl).retrieve_indices)
        assert acc.tokens == [19] and acc.path.tolist() == [0], impl


@pytest.mark.parametrize("seed", range(40))
def test_greedy_and_sampling_agree_across_impls(seed):
    parents, tokens, logits = random_case(seed)
    logits[torch.arange(13), tokens.roll(-1)] += 3.0  # make long accepted runs likely
    results, state = {}, SamplerState(torch.device("cpu"))
    state.load(Sampler(0.9, seed=seed))
    draws = state.draws(13, 13)  # as many rows as the widest retrieve has columns
    for impl in CPU_IMPLS:
        ret = build_tree_buffers(parents, 12, impl).retrieve_indices
        greedy = accept_greedy(logits, tokens, ret)
        sampled = accept_sampling(logits, tokens, ret, state, draws)
        results[impl] = (greedy.tokens, greedy.path.tolist(), sampled.tokens, sampled.path.tolist())
    assert all(r == results["rebuild"] for r in results.values())


def test_greedy_accepts_the_path_matching_the_base():
    parents = torch.tensor([0, 1, 0, 3])  # two chains: 0-1-2 and 0-3-4
    tokens = torch.tensor([9, 1, 2, 3, 4])
    logits = torch.full((5, 10), -5.0)
    for node, nxt in ((0, 3), (3, 4), (4, 7)):  # the base continues 9 -> 3 -> 4 -> 7
        logits[node, nxt] = 5.0
    for impl in CPU_IMPLS:
        acc = accept_greedy(logits, tokens, build_tree_buffers(parents, 2, impl).retrieve_indices)
        assert acc.tokens == [3, 4, 7] and acc.path.tolist() == [0, 3, 4] and acc.accept_length == 2


def test_sampler_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        Sampler(0.0)
    with pytest.raises(ValueError, match="top_p"):
        Sampler(1.0, top_p=1.5)


@pytest.mark.parametrize("shape", [(128256,), (61, 1040), (3, 7), (2, 5, 4096)])
def test_first_argmax_is_argmax_with_ties(shape):
    """The two-pass argmax picks the first of equal maxima, as torch's argmax does, including ties
    across the parts it cuts a row into."""
    from eagle.verify import first_argmax

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, shape, generator=g).to(torch.float16)  # many ties
    x[..., -1] = 9  # the largest value late in the row, and once more earlier in some rows
    x[..., shape[-1] // 3] = torch.where(torch.rand(shape[:-1], generator=g) < 0.5, 9, 0)
    assert torch.equal(first_argmax(x), x.argmax(dim=-1))

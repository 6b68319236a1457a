"""Acceptance does not depend on how an implementation pads or orders its retrieve indices;
sampled acceptance costs a fixed set of operations plus one per level."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from eagle.tree.masks import available_mask_impls, build_tree_buffers
from eagle.verify import (SCAN_BLOCK, Sampler, SamplerState, accept_greedy, accept_sampling,
                          cumsum_rows, first_argmax)

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
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, shape, generator=g).to(torch.float16)  # many ties
    x[..., -1] = 9  # the largest value late in the row, and once more earlier in some rows
    x[..., shape[-1] // 3] = torch.where(torch.rand(shape[:-1], generator=g) < 0.5, 9, 0)
    assert torch.equal(first_argmax(x), x.argmax(dim=-1))


def test_blocked_cumsum_matches_torch_cumsum():
    """`cumsum_rows` (a fixed order of additions on every device) computes the cumulative sums,
    row by row, for rows shorter and longer than a block, with a tail block cut short."""
    g = torch.Generator().manual_seed(0)
    for shape in [(5,), (3, 700), (2, 3 * SCAN_BLOCK + 17)]:
        x = torch.rand(shape, generator=g)
        want = x.double().cumsum(-1).float()
        torch.testing.assert_close(cumsum_rows(x), want, rtol=1e-5, atol=1e-4)


class OpCount(TorchDispatchMode):
    """Counts the aten operations that compute (views and metadata aside)."""

    VIEWS = {"view", "_unsafe_view", "select", "slice", "expand", "unsqueeze", "squeeze",
             "as_strided", "t", "detach", "alias", "permute", "transpose", "reshape", "lift_fresh"}

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += func.overloadpacket.__name__ not in self.VIEWS
        return func(*args, **(kwargs or {}))


def chain_case(depth: int, vocab: int = 50):
    """A chain of `depth` drafted tokens the base accepts for sure, and its sampler."""
    tokens = torch.arange(depth + 1)
    logits = torch.full((depth + 1, vocab), -30.0)
    logits[torch.arange(depth), tokens[1:]] = 30.0
    ret = build_tree_buffers(torch.arange(depth), depth, "rebuild").retrieve_indices
    state = SamplerState(torch.device("cpu"))
    state.load(Sampler(0.7, seed=1))
    return logits, tokens, ret, state


@pytest.mark.parametrize("depth", [3, 9])
def test_sampling_walk_costs_one_operation_per_level(depth):
    """Every node's odds come from one batched pass: a step `depth` levels deep runs one aten
    operation per level beyond a fixed set (two allowed; not a softmax and a residual per
    level), and draws the same tokens again from a reseeded state."""
    logits, tokens, ret, state = chain_case(depth)
    shallow = chain_case(2)
    with OpCount() as deep_ops:
        first = accept_sampling(logits, tokens, ret, state)
    with OpCount() as base_ops:
        accept_sampling(*shallow)
    assert first.accept_length == depth
    assert deep_ops.ops - base_ops.ops <= 2 * (depth - 2)  # it was about 70 per level
    state.load(Sampler(0.7, seed=1))
    again = accept_sampling(logits, tokens, ret, state)
    assert (again.tokens, again.path.tolist()) == (first.tokens, first.path.tolist())

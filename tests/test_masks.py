"""Every tree-buffer implementation equals a naive reference on random and drafted trees.

The reference walks each node's parent chain in plain Python: the mask row is the ancestor set,
the position id the number of steps, the retrieve rows the root-to-leaf paths of the childless
nodes in increasing node order. Property-based trees (>= 10,000 in all: random, chains, stars,
short-reach "deep" trees, T from 1 to 1024) and trees drawn by the drafting code are checked.
"""
from typing import NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eagle.config import TreeConfig
from eagle.draft import Drafter
from eagle.presets import build_random
from eagle.profiling import no_section
from eagle.tree import masks
from eagle.tree.masks import MASK_IMPLS, MaskImplUnavailable, build_tree_buffers
from eagle.tree.synthetic import expand_tree, fit_tree_config, random_tree

CPU_IMPLS = ["rebuild", "incremental", "vectorized"]
SYNC_FREE = ["vectorized", "triton"]
INTERPRETER_TILE = 1 << 16  # few large programs: the interpreter pays per op, not per element


class Reference(NamedTuple):
    mask: torch.Tensor  # [T+1, T+1] bool
    positions: torch.Tensor  # [T+1] int64
    retrieve: torch.Tensor  # [leaves, max depth + 1] int64, -1 padded
    max_depth: int


def reference(parents: list[int]) -> Reference:
    """Ancestor closure, depths and leaf paths by walking parent pointers."""
    t = len(parents)
    parent_of = [0] + list(parents)  # parent_of[n]: parent of node n (the root's is unused)
    paths, rows, cols = [], [], []
    for node in range(t + 1):
        chain = [node]
        while chain[-1] != 0:
            chain.append(parent_of[chain[-1]])
        paths.append(chain[::-1])  # root .. node
        rows += [node] * len(chain)
        cols += chain
    mask = torch.zeros(t + 1, t + 1, dtype=torch.bool)
    mask[rows, cols] = True
    depth = [len(p) - 1 for p in paths]
    width = max(depth) + 1
    has_child = set(parents)
    rows = [paths[n] + [-1] * (width - len(paths[n])) for n in range(1, t + 1) if n not in has_child]
    return Reference(mask, torch.tensor(depth), torch.tensor(rows, dtype=torch.long), max(depth))


def drop_padding(retrieve: torch.Tensor) -> torch.Tensor:
    """Remove rows and columns that are all -1 (padded shapes compare with compact ones)."""
    retrieve = retrieve[(retrieve != -1).any(dim=1)]
    return retrieve[:, (retrieve != -1).any(dim=0)]


def assert_matches(buffers, ref: Reference, t: int, max_depth: int, padded: bool) -> None:
    mask, positions, retrieve = (b.cpu() for b in buffers)
    assert torch.equal(mask, ref.mask)
    assert torch.equal(positions, ref.positions)
    assert torch.equal(drop_padding(retrieve), ref.retrieve)
    if padded:  # fixed shapes, real rows first, -1 everywhere else
        leaves, width = ref.retrieve.shape
        assert retrieve.shape == (t, max_depth + 1)
        assert torch.equal(retrieve[:leaves, :width], ref.retrieve)
        assert (retrieve[leaves:] == -1).all() and (retrieve[:, width:] == -1).all()


def check_impls(parents: list[int], impls: list[str], extra_depth: int = 0,
                device: str = "cpu") -> None:
    """Each impl on `parents` (max_depth = true depth + extra_depth) equals the reference."""
    ref = reference(parents)
    max_depth = ref.max_depth + extra_depth
    tensor = torch.tensor(parents, dtype=torch.long, device=device)
    for impl in impls:
        buffers = build_tree_buffers(tensor, max_depth, impl)
        assert_matches(buffers, ref, len(parents), max_depth, MASK_IMPLS[impl].sync_free)


def mod_parents(draws: list[int]) -> list[int]:
    return [x % (i + 1) for i, x in enumerate(draws)]


def trees(max_t: int) -> st.SearchStrategy:
    """Valid parent lists (parents[i] in [0, i]) of 1..max_t nodes, in several shapes."""
    size = st.integers(1, max_t)
    uniform = st.lists(st.integers(0, 2 ** 31), min_size=1, max_size=max_t).map(mod_parents)
    short_reach = st.lists(st.integers(0, 3), min_size=1, max_size=max_t).map(
        lambda back: [max(0, i - b) for i, b in enumerate(back)])  # deep, narrow trees
    return st.one_of(uniform, short_reach, size.map(lambda t: list(range(t))),
                     size.map(lambda t: [0] * t), size.map(lambda t: [i // 2 for i in range(t)]))


PROPERTY = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@settings(max_examples=8500, **PROPERTY)
@given(trees(64), st.integers(0, 2))
def test_cpu_impls_small_trees(parents, extra_depth):
    check_impls(parents, CPU_IMPLS, extra_depth)


@settings(max_examples=1500, **PROPERTY)
@given(trees(200), st.integers(0, 2))
def test_cpu_impls_medium_trees(parents, extra_depth):
    check_impls(parents, CPU_IMPLS, extra_depth)


@settings(max_examples=100, **PROPERTY)
@given(st.integers(1, 1024), st.sampled_from(["chain", "star", "binary", "broom"]))
def test_cpu_impls_shapes_up_to_1024(t, shape):
    check_impls(shaped_tree(shape, t), CPU_IMPLS)


def shaped_tree(shape: str, t: int) -> list[int]:
    """chain, star, binary heap, or broom (a chain of t // 2 nodes, then a star on its tip)."""
    half = t // 2
    return {"chain": list(range(t)), "star": [0] * t, "binary": [i // 2 for i in range(t)],
            "broom": list(range(half)) + [half] * (t - half)}[shape]


def seeded_tree(t: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return mod_parents(torch.randint(0, 2 ** 31, (t,), generator=gen).tolist())


EXPLICIT = {"single": [0], "two_chain": [0, 1], "two_star": [0, 0],
            "chain_1024": shaped_tree("chain", 1024), "star_1024": shaped_tree("star", 1024),
            "binary_1024": shaped_tree("binary", 1024), "broom_1024": shaped_tree("broom", 1024),
            "random_1024": seeded_tree(1024, 0)}


@pytest.mark.parametrize("name", EXPLICIT)
def test_cpu_impls_explicit(name):
    check_impls(EXPLICIT[name], CPU_IMPLS, extra_depth=1)


def drafter_trees(total_token: int, depth: int, top_k: int, steps: int) -> list[list[int]]:
    """Parent lists from `Drafter.step` on a random-weight tiny model, `steps` steps in a row."""
    base, head = build_random("tiny", torch.float32, torch.device("cpu"), seed=total_token)
    drafter = Drafter(head, base.model.embed_tokens, TreeConfig(total_token, depth, top_k), 512)
    gen = torch.Generator().manual_seed(depth * top_k)
    out = []
    with torch.inference_mode():
        for step in range(steps):
            m = 5 if step == 0 else 2
            features = torch.randn(1, m, 3 * base.args.hidden_size, generator=gen)
            tokens = torch.randint(0, base.args.vocab_size, (m,), generator=gen)
            out.append(drafter.step(features, tokens, no_section).parents.tolist())
    return out


DRAFT_COMBOS = [(60, 5, 10), (16, 2, 4), (128, 6, 8), (8, 1, 7)]


@pytest.mark.parametrize("total_token,depth,top_k", DRAFT_COMBOS)
def test_cpu_impls_on_drafter_trees(total_token, depth, top_k):
    for parents in drafter_trees(total_token, depth, top_k, steps=4):
        assert len(parents) == total_token - 1
        check_impls(parents, CPU_IMPLS, extra_depth=depth + 1 - reference(parents).max_depth)


SELECT_COMBOS = [(60, 5, 10), (8, 1, 4), (30, 3, 3), (128, 6, 10), (256, 8, 8), (1024, 11, 10)]


@pytest.mark.parametrize("total_token,depth,top_k", SELECT_COMBOS)
def test_cpu_impls_on_selected_trees(total_token, depth, top_k):
    tree = TreeConfig(total_token, depth, top_k)
    gen = torch.Generator().manual_seed(total_token)
    for _ in range(3):
        parents = random_tree(tree, gen, vocab=1000).parents.tolist()
        check_impls(parents, CPU_IMPLS, extra_depth=tree.max_depth - reference(parents).max_depth)


def test_expand_tree_matches_drafter():
    """The synthetic expansion picks the same tree as `Drafter.step` from the same log-probs."""
    tree = TreeConfig(60, 5, 10)
    base, head = build_random("tiny", torch.float32, torch.device("cpu"))
    seen = []
    real_log_probs = head.log_probs

    def recording_log_probs(h: torch.Tensor) -> torch.Tensor:
        seen.append(real_log_probs(h))
        return seen[-1]

    head.log_probs = recording_log_probs
    drafter = Drafter(head, base.model.embed_tokens, tree, 256)
    with torch.inference_mode():
        features = torch.randn(1, 4, 3 * base.args.hidden_size)
        drafted = drafter.step(features, torch.tensor([3, 4, 5, 6]), no_section)
    synthetic = expand_tree(seen[0], lambda level: seen[level + 1], tree)
    assert torch.equal(drafted.parents, synthetic.parents)


def test_fit_tree_config_grows_depth():
    assert fit_tree_config(60, 5, 10) == TreeConfig(60, 5, 10)
    grown = fit_tree_config(1024, 5, 10)
    assert (grown.depth, grown.top_k) == (11, 10)


def test_registry_flags():
    assert {n for n, impl in MASK_IMPLS.items() if impl.sync_free} == set(SYNC_FREE)
    assert set(CPU_IMPLS) | set(SYNC_FREE) <= set(MASK_IMPLS)


def test_triton_without_cuda_names_alternatives():
    assert "triton" not in masks.available_mask_impls(torch.device("cpu"))
    with pytest.raises(MaskImplUnavailable, match="vectorized") as err:
        build_tree_buffers(torch.tensor([0, 0, 1]), 2, "triton")
    for name in CPU_IMPLS:
        assert name in str(err.value)


def test_triton_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(masks, "has_triton", lambda: False)
    assert "pip install triton" in masks.triton_unavailable(torch.device("cuda"))


@pytest.fixture(scope="module")
def interpreted(triton_interpreter):
    """`tree_buffers_triton` running in Triton's interpreter on CPU tensors."""
    from eagle.tree.triton_tree import tree_buffers_triton

    return tree_buffers_triton


def check_interpreted(build, parents: list[int], extra_depth: int = 0,
                      tile: int = INTERPRETER_TILE) -> None:
    ref = reference(parents)
    max_depth = ref.max_depth + extra_depth
    buffers = build(torch.tensor(parents, dtype=torch.long), max_depth, tile=tile)
    assert_matches(buffers, ref, len(parents), max_depth, padded=True)


@settings(max_examples=150, **PROPERTY)
@given(parents=trees(100), extra_depth=st.integers(0, 2))
def test_triton_interpreted_random_trees(interpreted, parents, extra_depth):
    check_interpreted(interpreted, parents, extra_depth)


@settings(max_examples=15, **PROPERTY)
@given(parents=trees(80), tile=st.sampled_from([32, 64, 256]))
def test_triton_interpreted_column_blocks(interpreted, parents, tile):
    """Small tiles split mask rows into several column blocks (the path T > 2047 takes)."""
    check_interpreted(interpreted, parents, tile=tile)


# climbs of depth 512..1024 take minutes in the interpreter: those trees run on the GPU only
INTERPRETED_EXPLICIT = {k: v for k, v in EXPLICIT.items() if k not in ("chain_1024", "broom_1024")}
INTERPRETED_EXPLICIT.update(chain_256=shaped_tree("chain", 256), broom_256=shaped_tree("broom", 256))


@pytest.mark.parametrize("name", INTERPRETED_EXPLICIT)
def test_triton_interpreted_explicit(interpreted, name):
    check_interpreted(interpreted, INTERPRETED_EXPLICIT[name], extra_depth=1)


@pytest.mark.parametrize("total_token,depth,top_k", DRAFT_COMBOS[:2])
def test_triton_interpreted_drafter_trees(interpreted, total_token, depth, top_k):
    for parents in drafter_trees(total_token, depth, top_k, steps=2):
        check_interpreted(interpreted, parents)


@pytest.mark.parametrize("total_token,depth,top_k", [(60, 5, 10), (1024, 11, 10)])
def test_triton_interpreted_selected_trees(interpreted, total_token, depth, top_k):
    parents = random_tree(TreeConfig(total_token, depth, top_k), torch.Generator().manual_seed(1),
                          vocab=1000).parents.tolist()
    check_interpreted(interpreted, parents, extra_depth=depth + 1 - reference(parents).max_depth)


class TestGpu:
    """The sync-free implementations on CUDA: equal to the reference, and no host sync."""

    pytestmark = pytest.mark.gpu

    @pytest.mark.parametrize("impl", SYNC_FREE)
    @pytest.mark.parametrize("name", EXPLICIT)
    def test_explicit(self, impl, name):
        check_impls(EXPLICIT[name], [impl], extra_depth=1, device="cuda")

    @pytest.mark.parametrize("impl", SYNC_FREE)
    def test_random_trees(self, impl):
        for seed in range(300):
            check_impls(seeded_tree(1 + seed % 130, seed), [impl], seed % 3, device="cuda")
        for t in (255, 256, 511, 512, 1023, 1024, 2047, 3000):
            check_impls(seeded_tree(t, t), [impl], device="cuda")
            check_impls(shaped_tree("broom", t), [impl], device="cuda")

    @pytest.mark.parametrize("impl", SYNC_FREE)
    @pytest.mark.parametrize("total_token,depth,top_k", SELECT_COMBOS)
    def test_selected_trees(self, impl, total_token, depth, top_k):
        tree = TreeConfig(total_token, depth, top_k)
        gen = torch.Generator(device="cuda").manual_seed(total_token)
        for _ in range(5):
            parents = random_tree(tree, gen).parents.tolist()
            check_impls(parents, [impl], tree.max_depth - reference(parents).max_depth, "cuda")

    @pytest.mark.parametrize("impl", SYNC_FREE)
    def test_drafter_trees(self, impl):
        for combo in DRAFT_COMBOS:
            for parents in drafter_trees(*combo, steps=2):
                check_impls(parents, [impl], device="cuda")

    @staticmethod
    def build_in_sync_error_mode(impl: str, total_token: int) -> None:
        """Build three drafted-shape trees with any host sync raising (mode restored after)."""
        tree = fit_tree_config(total_token, 5, 10)
        gen = torch.Generator(device="cuda").manual_seed(0)
        parents = [random_tree(tree, gen).parents for _ in range(3)]
        build_tree_buffers(parents[0], tree.max_depth, impl)  # compile / warm up outside the check
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for p in parents:
                build_tree_buffers(p, tree.max_depth, impl)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.synchronize()

    @pytest.mark.parametrize("impl", SYNC_FREE)
    @pytest.mark.parametrize("total_token", [60, 1024])
    def test_build_has_no_host_sync(self, impl, total_token):
        self.build_in_sync_error_mode(impl, total_token)

    @pytest.mark.parametrize("impl", ["rebuild", "incremental"])
    def test_sync_check_catches_host_syncs(self, impl):
        """Control: the implementations that sync do raise in the same check."""
        with pytest.raises(RuntimeError, match="synchroniz"):
            self.build_in_sync_error_mode(impl, 60)
        assert torch.cuda.get_sync_debug_mode() == 0

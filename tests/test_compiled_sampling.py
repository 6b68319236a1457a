"""Compiled sampling (`SamplerState(compiled=True)`, the fused path's) computes what the plain
functions compute: the same distributions to float rounding, and the same acceptance for the same
draws. On the GPU over Llama-3's vocabulary (its cumulative sums end in a partial scan block) and
over one of whole blocks only (where torch.compile once failed to build the inverse CDF); on the
CPU (where a C compiler is at hand) over a vocabulary that ends in a partial scan block."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eagle.config import TreeConfig
from eagle.tree.masks import build_tree_buffers
from eagle.verify import Sampler, SamplerState, accept_sampling_on_device

TREE = TreeConfig(60, 5, 10)
SETTINGS = [Sampler(0.7, seed=1), Sampler(1.0, top_p=0.9, seed=2), Sampler(1.0, top_k=20, seed=3)]


def random_parents(t: int, max_depth: int, gen: torch.Generator) -> torch.Tensor:
    """Parents [t] of a random tree of t nodes under the root (`build_tree_buffers`' contract),
    none deeper than max_depth."""
    depth, parents = [0], []
    for i in range(1, t + 1):
        shallow = [j for j in range(i) if depth[j] < max_depth]
        parent = shallow[int(torch.randint(len(shallow), (), generator=gen))]
        parents.append(parent)
        depth.append(depth[parent] + 1)
    return torch.tensor(parents)


def compare(settings: Sampler, dev: torch.device, vocab: int, trials: int) -> None:
    """Over `trials` random trees with peaked rows (so that drafts do get accepted): compiled and
    plain distributions within rounding (top-p may differ by a tail token at its boundary), and
    equal acceptances for the same draws, and the same plain-decoding token for the same seed."""
    gen = torch.Generator().manual_seed(settings.seed)
    plain, fast = SamplerState(dev), SamplerState(dev)
    plain.load(settings)
    fast.load(settings, compiled=True)
    n, c = TREE.num_nodes + 1, TREE.max_depth + 1
    retrieve = build_tree_buffers(random_parents(n - 1, TREE.max_depth, gen), TREE.max_depth,
                                  "rebuild").retrieve_indices
    retrieve = torch.nn.functional.pad(retrieve, (0, c - retrieve.shape[1]), value=-1).to(dev)
    with torch.inference_mode():
        for _ in range(trials):
            tokens = torch.randint(0, 8, (n,), generator=gen).to(dev)
            logits = torch.randn(n, vocab, generator=gen).to(dev, torch.float16)
            logits[:, :8] += 12  # most of the mass on the first 8 tokens, which the tree holds
            gap = (fast.probs(logits) - plain.probs(logits)).abs().sum(dim=-1)  # twice the TV
            assert gap.max() < 1e-4
            draws = torch.rand(c, n, generator=gen).to(dev)
            want = accept_sampling_on_device(logits, tokens, retrieve, plain, draws)
            got = accept_sampling_on_device(logits, tokens, retrieve, fast, draws)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert torch.equal(fast.sample(logits[0]), plain.sample(logits[0]))


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [128256, 4096])
@pytest.mark.parametrize("settings", SETTINGS, ids=["t", "top_p", "top_k"])
def test_compiled_sampling_on_the_gpu(settings, vocab):
    compare(settings, torch.device("cuda"), vocab, 40)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compiled_sampling_on_the_cpu():
    """Top-p, whose cumulative sums once compiled wrong in a padded last block. In a process of
    its own: torch.compile leaves compile workers and threads behind, which would share the test
    process with the timing-sensitive tests after this one."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import torch, test_compiled_sampling as t; "
            "t.compare(t.SETTINGS[1], torch.device('cpu'), 5000, 8)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

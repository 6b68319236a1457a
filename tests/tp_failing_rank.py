"""`torchrun ... tests/tp_failing_rank.py SCRIPT ARGS`: run a generator script with a failure
injected on one rank, for the tensor-parallel tests: rank TP_FAIL_RANK raises in its TP_FAIL_AT-th
call of `EaModel.naive_generate` (1-based; warm-up calls count)."""
import os
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eagle.ea_model import EaModel  # noqa: E402

RANK = int(os.environ["RANK"])
calls = 0


def failing(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ["TP_FAIL_AT"]):
        raise RuntimeError(f"injected failure on rank {RANK}")
    return plain(self, *args, **kwargs)


if RANK == int(os.environ["TP_FAIL_RANK"]):
    plain, EaModel.naive_generate = EaModel.naive_generate, failing
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")

"""The EAGLE step with torch's default BLAS library and with cuBLASLt, alternated in one process.

EAGLE decoding on the fused path prefers cuBLASLt for its matrix products
(`eagle.fused.EAGLE_BLAS`). This script times a step both ways on the random-weight preset: a
fresh model (its own graph capture) per round and library, in the order default, cuBLASLt,
default, cuBLASLt, ...; ms/step net of the prefill, median of --repeat calls (as bench_graphs.py
measures). Each library's rounds must decode the same tokens (the exit status is 1 where they do
not); the two libraries may part at fp16 near-ties (other kernels, other reduction orders). Rows
name the library the steps ran on: torch's default for both where the fused path is off.

    python scripts/bench_blas.py --out runs/blas.json [--eager]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from bench_graphs import add_setup_args, per_unit_ms, random_setup  # this folder: run as a script
from eagle import EaModel, fused
from eagle.tree.masks import MASK_IMPLS

log = logging.getLogger("bench_blas")

LIBRARIES = (None, "cublaslt")  # None: torch's default


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_setup_args(p, new=128)
    p.add_argument("--mask-impl", default="triton", choices=MASK_IMPLS)
    p.add_argument("--rounds", type=positive, default=2, help="rounds of both libraries (default: 2)")
    p.add_argument("--repeat", type=positive, default=3, help="timed calls per figure (median)")
    p.add_argument("--eager", action="store_true", help="graphs off (default: on)")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    return p.parse_args(argv)


@contextmanager
def preferring(library: Optional[str]) -> Iterator[None]:
    """EAGLE decoding prefers `library` inside this block."""
    before, fused.EAGLE_BLAS = fused.EAGLE_BLAS, library
    try:
        yield
    finally:
        fused.EAGLE_BLAS = before


def summary(rows: list[dict]) -> dict:
    """Per library asked for: the median over rounds and whether every round decoded the same
    tokens; the ratio cuBLASLt / default."""
    out = {}
    for library in LIBRARIES:
        mine = [row for row in rows if row["asked"] == library]
        out[library or "torch default"] = {
            "ms_per_step": statistics.median(row["ms_per_step"] for row in mine),
            "rounds": [row["ms_per_step"] for row in mine],
            "same_tokens": all(row["tokens"] == mine[0]["tokens"] for row in mine)}
    default, lt = (out[library or "torch default"]["ms_per_step"] for library in LIBRARIES)
    out["cublaslt_over_default"] = lt / default
    return out


def time_step(base, head, prompt: torch.Tensor, tree, args) -> tuple:
    """(ms/step, the last timed result) of a fresh model: warm-up and capture, then timed."""
    model = EaModel(base, head, tree, mask_impl=args.mask_impl, max_length=args.max_length,
                    cuda_graph=not args.eager)
    model.generate(prompt, max_new_tokens=args.new)
    return per_unit_ms(lambda n: model.generate(prompt, max_new_tokens=n), args.new,
                       lambda r: r.steps, args.repeat)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log.error("needs a CUDA device")
        return 2
    base, head, prompt, tree = random_setup(args)
    rows = []
    with torch.inference_mode():
        for _ in range(args.rounds):
            for library in LIBRARIES:
                with preferring(library):
                    ran = fused.eagle_blas_name(prompt.device) or "torch default"
                    ms, res = time_step(base, head, prompt, tree, args)
                rows.append({"asked": library, "eagle_blas": ran, "ms_per_step": ms,
                             "steps": res.steps, "tokens": res.new_token_ids})
                log.info("%s: %.3f ms/step", ran, ms)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "preset": args.preset, "dtype": args.dtype, "prompt": args.prompt, "new": args.new,
              "tree": args.tree, "mask_impl": args.mask_impl, "graphs": not args.eager,
              "kernels": fused.describe(prompt.device), "summary": summary(rows), "rounds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))  # noqa: T201 - the script's result
    reproduced = all(report["summary"][lib or "torch default"]["same_tokens"] for lib in LIBRARIES)
    if not reproduced:
        log.error("a library's rounds decoded different tokens: the step does not reproduce itself")
    return 0 if reproduced else 1


if __name__ == "__main__":
    raise SystemExit(main())

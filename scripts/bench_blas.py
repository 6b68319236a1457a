"""The EAGLE step with torch's default BLAS library and with cuBLASLt, alternated in one process.

EAGLE decoding on the fused path prefers cuBLASLt for its matrix products
(`eagle.fused.EAGLE_BLAS`). This script times a step both ways on the random-weight preset: a
fresh model (its own graph capture) per round and library, in the order default, cuBLASLt,
default, cuBLASLt, ...; ms/step net of the prefill, median of --repeat calls (as bench_graphs.py
measures). Each library's rounds must decode the same tokens; the two libraries may part at fp16
near-ties (other kernels, other reduction orders).

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


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_setup_args(p, new=128)
    p.add_argument("--mask-impl", default="triton", choices=MASK_IMPLS)
    p.add_argument("--rounds", type=int, default=2, help="rounds of both libraries (default: 2)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per figure (median)")
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


def label(library: Optional[str]) -> str:
    return library or "torch default"


def summary(rows: list[dict]) -> dict:
    """Per library: the median over rounds and whether every round decoded the same tokens; the
    ratio cuBLASLt / default."""
    out = {}
    for library in LIBRARIES:
        mine = [row for row in rows if row["eagle_blas"] == label(library)]
        out[label(library)] = {"ms_per_step": statistics.median(r["ms_per_step"] for r in mine),
                               "rounds": [r["ms_per_step"] for r in mine],
                               "same_tokens": all(r["tokens"] == mine[0]["tokens"] for r in mine)}
    default, lt = (out[label(lib)]["ms_per_step"] for lib in LIBRARIES)
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
                    ms, res = time_step(base, head, prompt, tree, args)
                rows.append({"eagle_blas": label(library), "ms_per_step": ms, "steps": res.steps,
                             "tokens": res.new_token_ids})
                log.info("%s: %.3f ms/step", label(library), ms)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "preset": args.preset, "dtype": args.dtype, "prompt": args.prompt, "new": args.new,
              "tree": args.tree, "mask_impl": args.mask_impl, "graphs": not args.eager,
              "kernels": fused.describe(prompt.device), "summary": summary(rows), "rounds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))  # noqa: T201 - the script's result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

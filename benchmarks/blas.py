"""The EAGLE step with torch's default BLAS library and with cuBLASLt, alternated in one process.

EAGLE decoding on the fused path prefers cuBLASLt for its matrix products
(`eagle.backend.Kernels.eagle_blas`). This script times a step both ways on the random-weight preset: a
fresh model (its own graph capture) per round and library, in the order default, cuBLASLt,
default, cuBLASLt, ...; ms/step net of the prefill, median of --repeat calls (as benchmarks.graphs
measures). Each library's rounds must decode the same tokens (the exit status is 1 where they do
not); the two libraries may part at fp16 near-ties (other kernels, other reduction orders). Rows
name the library the steps ran on: torch's default for both where the fused path is off.

    python -m benchmarks.blas --out runs/blas.json [--eager]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Optional, Sequence

import torch

from eagle import EaModel
from eagle.backend import Kernels
from eagle.tree.masks import MASK_IMPLS

from .graphs import add_setup_args, eagle_ms, gpu_args, random_setup, setup_report

log = logging.getLogger("bench_blas")

LIBRARIES = {"torch default": None, "cublaslt": "cublaslt"}  # report name: preference


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


def summary(rows: list[dict]) -> dict:
    """Per library asked for: the median over rounds and whether every round decoded the same
    tokens; the ratio cuBLASLt / default."""
    out = {}
    for name in LIBRARIES:
        mine = [row for row in rows if row["asked"] == name]
        out[name] = {"ms_per_step": statistics.median(row["ms_per_step"] for row in mine),
                     "rounds": [row["ms_per_step"] for row in mine],
                     "same_tokens": all(row["tokens"] == mine[0]["tokens"] for row in mine)}
    default, lt = (out[name]["ms_per_step"] for name in LIBRARIES)
    out["cublaslt_over_default"] = lt / default
    return out


def time_step(base, head, prompt: torch.Tensor, tree, args, kernels: Kernels) -> tuple:
    """(ms/step, the last timed result) of a fresh model: warm-up and capture, then timed."""
    model = EaModel(base, head, tree, mask_impl=args.mask_impl, max_length=args.max_length,
                    cuda_graph=not args.eager, kernels=kernels)
    return eagle_ms(model, prompt, args)[:2]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = gpu_args(parse_args, argv, log)
    if args is None:
        return 2
    base, head, prompt, tree = random_setup(args)
    rows = []
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, library in LIBRARIES.items():
                kernels = Kernels(eagle_blas=library)
                ran = kernels.eagle_blas_label(prompt.device)
                ms, res = time_step(base, head, prompt, tree, args, kernels)
                rows.append({"asked": name, "eagle_blas": ran, "ms_per_step": ms,
                             "steps": res.steps, "tokens": res.new_token_ids})
                log.info("%s: %.3f ms/step", ran, ms)
    report = {**setup_report(args), "mask_impl": args.mask_impl, "graphs": not args.eager,
              "summary": summary(rows), "rounds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))  # noqa: T201 - the script's result
    reproduced = all(report["summary"][name]["same_tokens"] for name in LIBRARIES)
    if not reproduced:
        log.error("a library's rounds decoded different tokens: the step does not reproduce itself")
    return 0 if reproduced else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a decoding step's GPU time goes, kernel by kernel: plain decoding and the EAGLE step.

On the random-weight preset (default Llama-3.1-8B shapes, fp16), graphs on, one random prompt:
torch.profiler records every kernel of a run of --new tokens and of a run of one token; their
difference, divided by the tokens (plain) or steps (EAGLE), is each kernel's time and launch
count per unit, net of the prefill. Beside it: the wall time per unit of unprofiled runs, measured
the same way, so wall - kernel sum is what the GPU spends between kernels.

    python -m benchmarks.kernel_profile --out runs/kernels.json --markdown runs/kernels.md
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from eagle import EaModel
from eagle.tree.masks import MASK_IMPLS

from .graphs import add_setup_args, gpu_args, random_setup, setup_report
from .peer_transformers import timed

log = logging.getLogger("kernel_profile")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_setup_args(p, new=64)
    p.add_argument("--mask-impl", default="triton", choices=MASK_IMPLS)
    p.add_argument("--top", type=int, default=30, help="kernels per table (default: 30)")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    p.add_argument("--markdown", type=Path, metavar="MD", help="also write the tables here")
    return p.parse_args(argv)


def kernel_totals(events: Iterable) -> dict[str, list]:
    """{kernel name: [launches, device microseconds]} of the GPU-side profiler events."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name][0] += 1
            totals[event.name][1] += event.device_time_total
    return totals


def per_unit(full: dict[str, list], one: dict[str, list], units: int) -> list[dict]:
    """Each kernel's (full - one) launches and time per unit, the most expensive first."""
    rows = []
    for name, (calls, us) in full.items():
        calls_one, us_one = one.get(name, (0, 0.0))
        calls, us = calls - calls_one, us - us_one
        if calls > 0:
            rows.append({"kernel": name, "ms_per_unit": us / 1000 / units,
                         "launches_per_unit": calls / units, "us_per_launch": us / calls})
    return sorted(rows, key=lambda row: -row["ms_per_unit"])


def profiled(fn: Callable[[], object]) -> tuple[dict[str, list], object]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    return kernel_totals(prof.events()), result


def profile_run(run: Callable[[int], object], new: int, units: Callable[[object], int]) -> dict:
    """Wall and per-kernel time per unit of run(new) net of run(1), after one warm-up."""
    run(new)
    result, wall_full = timed(lambda: run(new))
    _, wall_one = timed(lambda: run(1))
    full, result = profiled(lambda: run(new))
    one, _ = profiled(lambda: run(1))
    n = units(result)
    rows = per_unit(full, one, n)
    return {"units": n, "wall_ms_per_unit": 1000 * (wall_full - wall_one) / n,
            "kernel_ms_per_unit": sum(row["ms_per_unit"] for row in rows),
            "launches_per_unit": sum(row["launches_per_unit"] for row in rows), "kernels": rows}


def markdown(report: dict, top: int) -> str:
    lines = [f"{report['device']}, {report['preset']} {report['dtype']}, prompt {report['prompt']}, "
             f"{report['new']} new tokens, tree {report['tree']}, {report['mask_impl']}, graphs on, "
             f"kernels {report['kernels']}"]
    for part, unit in (("plain", "token"), ("eagle", "step")):
        r = report[part]
        lines += ["", f"{part}: wall {r['wall_ms_per_unit']:.3f} ms/{unit}, kernels "
                      f"{r['kernel_ms_per_unit']:.3f} ms/{unit}, {r['launches_per_unit']:.0f} "
                      f"launches/{unit} ({r['units']} {unit}s)", "",
                  f"| ms/{unit} | launches/{unit} | µs/launch | kernel |", "|---:|---:|---:|---|"]
        lines += [f"| {row['ms_per_unit']:.4f} | {row['launches_per_unit']:.1f} | "
                  f"{row['us_per_launch']:.2f} | `{row['kernel'][:100]}` |" for row in r["kernels"][:top]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = gpu_args(parse_args, argv, log)
    if args is None:
        return 2
    base, head, prompt, tree = random_setup(args)
    model = EaModel(base, head, tree, mask_impl=args.mask_impl, max_length=args.max_length,
                    cuda_graph=True)
    report = {**setup_report(args), "mask_impl": args.mask_impl}
    with torch.inference_mode():
        report["plain"] = profile_run(lambda n: model.naive_generate(prompt, max_new_tokens=n),
                                      args.new, lambda r: r.new_tokens - 1)
        report["eagle"] = profile_run(lambda n: model.generate(prompt, max_new_tokens=n),
                                      args.new, lambda r: r.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report, args.top)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)  # noqa: T201 - the script's table
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

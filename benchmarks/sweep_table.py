"""Tables of a tree-configuration sweep: one `run_mt_bench.sh` output folder per configuration.

Each folder (written with PROFILE=1) holds `profile.json` (profile_table's report) and the answer
files. For every configuration and mask implementation: the measured step time, the tree buffers'
share of it and the mean acceptance length the answers reached (accepted draft tokens + the bonus
token per step, the EAGLE papers' definition); then, per configuration, what tokens/s the fastest
implementation's step would give at acceptance lengths 1, 3, 5 and 7. That second table is
arithmetic (tokens per step / step time), not a measurement: random weights accept nothing, and a
real head's acceptance is what decides which tree pays.

    python -m benchmarks.sweep_table runs/sweep/tt60-d5-k10 runs/sweep/tt60-d8-k10 ... --markdown OUT.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

ACCEPT_LENGTHS = (1, 3, 5, 7)


def tree_of(settings: dict) -> str:
    return f"{settings['total_token']}/{settings['depth']}/{settings['top_k']}"


def mean_acceptance(answer_file: Path) -> float:
    """Accepted drafts + the bonus token per step over every turn of the file (`speed.py`'s tau)."""
    from evaluation.compare import Run, acceptance

    tau = acceptance(Run.load(answer_file))["mean_acceptance_length"]
    return float("nan") if tau is None else tau


def folder_rows(folder: Path) -> list[dict]:
    """One row per profiled run of a configuration folder."""
    report = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
    rows = []
    for run in report["runs"]:
        # ANSWER.jsonl.profile.json lies beside ANSWER.jsonl, in this folder wherever it moved
        answers = folder / Path(run["file"]).name.removesuffix(".profile.json")
        rows.append({"tree": tree_of(run["settings"]), "depth": run["settings"]["depth"],
                     "impl": run["label"], "step_ms": run["ms_per_step"]["step_total"],
                     "tree_buffers_ms": run["tree_buffers_ms"], "tree_buffers_pct": run["tree_buffers_pct"],
                     "acceptance": mean_acceptance(answers),
                     "device": run["settings"].get("device_name", "?")})
    return rows


def markdown(rows: list[dict]) -> str:
    devices = ", ".join(sorted({r["device"] for r in rows}))
    lines = [f"Measured on: {devices}.", "", "| tree (total/depth/top_k) | mask impl | ms / step | tree buffers ms (% of step) | "
             "mean acceptance length |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['tree']} | {r['impl']} | {r['step_ms']:.2f} | {r['tree_buffers_ms']:.3f} "
              f"({r['tree_buffers_pct']:.1f}%) | {r['acceptance']:.2f} |" for r in rows]
    lines += ["", "Arithmetic, not measurement: tokens/s = acceptance length / (fastest measured step "
              "of the configuration); n/a where the length exceeds depth + 1.", "",
              "| tree | fastest impl | ms / step | " + " | ".join(f"τ={a}" for a in ACCEPT_LENGTHS) + " |",
              "|---|---|---:|" + "---:|" * len(ACCEPT_LENGTHS)]
    for tree in dict.fromkeys(r["tree"] for r in rows):
        best = min((r for r in rows if r["tree"] == tree), key=lambda r: r["step_ms"])
        cells = [f"{1000 * a / best['step_ms']:.0f}" if a <= best["depth"] + 1 else "n/a"
                 for a in ACCEPT_LENGTHS]
        lines.append(f"| {tree} | {best['impl']} | {best['step_ms']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--markdown", type=Path, metavar="OUT.md")
    args = p.parse_args(argv)
    missing = [str(f / "profile.json") for f in args.folders if not (f / "profile.json").is_file()]
    if missing:
        print(f"error: no profile report (run with PROFILE=1): {', '.join(missing)}", file=sys.stderr)
        return 2
    text = markdown([row for f in args.folders for row in folder_rows(f)])
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

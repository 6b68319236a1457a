"""`speed.py --baseline a.jsonl --opt b.jsonl`: throughput, speedup and token-level equivalence.

Exit status: 0 when every turn's token ids match, 1 when some differ (0 with --allow-mismatch),
2 on bad input (the message names the file and line) or on an output path that would overwrite an
input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a file: make the repository's `evaluation` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger(__name__)

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2
MAX_LISTED = 20  # mismatches listed in the report; the JSON has them all


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle-speed", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare two MT-Bench answer files: tokens/s, speedup (bootstrap 95% CI), "
                    "per-category table, acceptance length and an audit of the generated token ids.",
        epilog="examples:\n"
               "  eagle-speed --baseline runs/ea-rebuild.jsonl --opt runs/ea-vectorized.jsonl\n"
               "  eagle-speed --baseline runs/baseline.jsonl --opt runs/ea-rebuild.jsonl \\\n"
               "      --json runs/speedup.json --markdown runs/speedup.md --plot runs/speedup.png\n"
               "exit status: 0 outputs identical, 1 some token ids differ, 2 bad input\n")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--baseline", required=True, type=Path, metavar="A.jsonl",
                        help="reference answer file (baseline or EAGLE run)")
    inputs.add_argument("--opt", required=True, type=Path, metavar="B.jsonl",
                        help="answer file compared against it")
    outputs = parser.add_argument_group("outputs (the report always goes to stdout)")
    outputs.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    outputs.add_argument("--markdown", type=Path, metavar="OUT", help="write the report as Markdown")
    outputs.add_argument("--plot", type=Path, metavar="PNG", help="per-category speedup bar chart")
    stats = parser.add_argument_group("statistics and audit")
    stats.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                       help="bootstrap resamples of questions for the CI, 0 = none (default: 2000)")
    stats.add_argument("--seed", type=int, default=0, metavar="N", help="bootstrap seed (default: 0)")
    stats.add_argument("--allow-mismatch", action="store_true",
                       help="exit 0 even when token ids differ (e.g. baseline vs EAGLE in fp16)")
    return parser


def check_outputs(args: argparse.Namespace) -> Optional[str]:
    """Why the output paths are unusable (one equals an input or another output), or None."""
    from evaluation.output_paths import output_clash

    return output_clash({"--baseline": args.baseline, "--opt": args.opt},
                        {f"--{flag}": getattr(args, flag) for flag in ("json", "markdown", "plot")})


def _fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _sides_table(report: dict) -> list[str]:
    a, b = report["baseline"], report["opt"]
    rows = [("tokens/s (total tokens / total time)", "tokens_per_s", ".2f"),
            ("tokens/s (mean over questions)", "tokens_per_s_mean_per_question", ".2f"),
            ("new tokens", "new_tokens", "d"), ("wall time (s)", "seconds", ".2f")]
    lines = [f"| | baseline ({a['label']}) | opt ({b['label']}) |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(a[key], spec)} | {_fmt(b[key], spec)} |" for name, key, spec in rows]
    for name, key in (("new tokens per step", "tokens_per_step"),
                      ("accepted draft tokens per step", "accepted_per_step")):
        lines.append(f"| {name} | {_fmt(a['acceptance'][key])} | {_fmt(b['acceptance'][key])} |")
    return lines


def _speedup_line(report: dict) -> str:
    s = report["speedup"]
    ci = (f" (95% CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}, {s['bootstrap']} bootstrap resamples "
          f"of {report['baseline']['questions']} questions)") if s["ci95"] else ""
    return f"**speedup (opt / baseline tokens/s): {s['value']:.3f}x**{ci}"


def _audit_lines(audit: dict) -> list[str]:
    verdict = "outputs identical" if audit["differing"] == 0 else "OUTPUTS DIFFER"
    lines = [f"{audit['turns']} turns compared: {audit['identical']} identical, {audit['differing']} "
             f"differing in {audit['questions_differing']} questions: **{verdict}**"]
    lines += [f"- {d}" for d in audit["descriptions"][:MAX_LISTED]]
    if audit["differing"] > MAX_LISTED:
        lines.append(f"- ... {audit['differing'] - MAX_LISTED} more (see --json)")
    return lines


def render_markdown(report: dict) -> str:
    a, b = report["baseline"], report["opt"]
    lines = [f"# Speed: {b['label']} vs {a['label']}", "",
             f"- baseline: `{a['file']}`", f"- opt: `{b['file']}`",
             f"- device: {a['settings'].get('device_name')} ({a['settings'].get('dtype')}); "
             f"{a['questions']} questions", ""]
    lines += [f"> warning: {w}" for w in report["warnings"]]
    lines += _sides_table(report) + ["", _speedup_line(report), "", "## Per category", "",
                                     "| category | questions | baseline tok/s | opt tok/s | speedup |",
                                     "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['category']} | {r['questions']} | {r['baseline_tokens_per_s']:.2f} | "
              f"{r['opt_tokens_per_s']:.2f} | {r['speedup']:.3f}x |" for r in report["categories"]]
    lines += ["", "## Equivalence audit (generated token ids)", ""] + _audit_lines(report["audit"])
    return "\n".join(lines) + "\n"


def plot_categories(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache chatter
    import matplotlib.pyplot as plt

    cats = report["categories"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([c["category"] for c in cats], [c["speedup"] for c in cats], color="tab:blue")
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.axhline(report["speedup"]["value"], color="tab:orange", linestyle="--",
               label=f"overall {report['speedup']['value']:.3f}x")
    ax.set_ylabel("speedup (opt / baseline tokens/s)")
    ax.set_title(f"{report['opt']['label']} vs {report['baseline']['label']}")
    ax.legend()
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(args: argparse.Namespace, report: dict, markdown: str) -> None:
    for path in (args.json, args.markdown, args.plot):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown)
    if args.plot:
        plot_categories(report, args.plot)


def run(args: argparse.Namespace) -> int:
    from evaluation.answers import AnswerFileError
    from evaluation.compare import Run, check_comparable, compare

    problem = check_outputs(args)
    if problem:
        log.error("%s", problem)
        return EXIT_BAD_INPUT
    try:
        base, opt = Run.load(args.baseline), Run.load(args.opt)
        warnings = check_comparable(base, opt)
    except AnswerFileError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    for warning in warnings:
        log.warning("%s", warning)
    report = {**compare(base, opt, args.bootstrap, args.seed), "warnings": warnings}
    markdown = render_markdown(report)
    sys.stdout.write(markdown)
    write_outputs(args, report, markdown)
    differing = report["audit"]["differing"]
    if differing:
        log.log(logging.WARNING if args.allow_mismatch else logging.ERROR,
                "%d of %d turns differ; first: %s", differing, report["audit"]["turns"],
                report["audit"]["descriptions"][0])
    return EXIT_MISMATCH if differing and not args.allow_mismatch else EXIT_OK


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.bootstrap < 0:
        log.error("--bootstrap must be >= 0, got %d", args.bootstrap)
        return EXIT_BAD_INPUT
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

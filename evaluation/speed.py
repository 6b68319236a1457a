"""`speed.py --baseline a.jsonl --opt b.jsonl`: throughput, speedup and token-level equivalence.

The report's last line on stdout is the verdict: faster / slower / no difference resolved, with the
95% CI, paired or unpaired, the smallest difference the run could resolve and the audit result.

Exit status: 0 when every turn's token ids match or identity is not expected (sampling by two
different methods), 1 when some differ where they must (0 with --allow-mismatch) and nothing else;
2 on bad input (the message names the file and line), on the same file or two byte-identical files
on both sides, and on an output that cannot be written (an input's path, an
unwritable folder, a plot format matplotlib does not know).
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
        description="Compare two MT-Bench answer files: tokens/s, speedup (Student-t 95% CI over "
                    "questions; paired turn by turn when both files come from one interleaved run), "
                    "per-category table, acceptance length, an audit of the generated token ids, "
                    "and a closing verdict line (faster / slower only beyond the smallest "
                    "resolvable difference it prints; see the README's 'What a verdict means').",
        epilog="examples:\n"
               "  eagle-speed --baseline runs/ea-rebuild.jsonl --opt runs/ea-vectorized.jsonl\n"
               "  eagle-speed --baseline runs/baseline.jsonl --opt runs/ea-rebuild.jsonl \\\n"
               "      --json runs/speedup.json --markdown runs/speedup.md --plot runs/speedup.png\n"
               "  eagle-speed --baseline runs/ea-rebuild.jsonl --opt runs/ea-rebuild-2.jsonl  # A/A\n"
               "exit status: 0 outputs identical (or not expected to be: sampling, two methods),\n"
               "1 some token ids differ, 2 bad input (also the same file twice, or an output that\n"
               "cannot be written)\n")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--baseline", required=True, type=Path, metavar="A.jsonl",
                        help="reference answer file (baseline or EAGLE run)")
    inputs.add_argument("--opt", required=True, type=Path, metavar="B.jsonl",
                        help="answer file compared against it")
    inputs.add_argument("--control", nargs=2, type=Path, metavar=("C1.jsonl", "C2.jsonl"),
                        help="an A/A control from the same run: two runs of the same code (a run "
                             "and its repeat, or two members of one interleaved run); the A/B "
                             "verdict is judged against the spread of their speedup")
    outputs = parser.add_argument_group("outputs (the report always goes to stdout)")
    outputs.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    outputs.add_argument("--markdown", type=Path, metavar="OUT", help="write the report as Markdown")
    outputs.add_argument("--plot", type=Path, metavar="PNG", help="per-category speedup bar chart")
    stats = parser.add_argument_group("audit")
    stats.add_argument("--allow-mismatch", action="store_true",
                       help="exit 0 even when token ids differ (e.g. baseline vs EAGLE in fp16)")
    return parser


def check_outputs(args: argparse.Namespace) -> Optional[str]:
    """Why the output paths are unusable (one equals an input or another output, or the plot's
    extension is no image format), or None."""
    from evaluation.output_paths import output_clash, plot_format_problem

    inputs = {"--baseline": args.baseline, "--opt": args.opt,
              **{f"--control {path}": path for path in args.control or ()}}
    return output_clash(inputs,
                        {f"--{flag}": getattr(args, flag) for flag in ("json", "markdown", "plot")}) \
        or plot_format_problem(args.plot)


def check_inputs(args: argparse.Namespace) -> Optional[str]:
    """Why the two inputs cannot be compared as such (one file, or two byte-identical ones)."""
    import filecmp
    import os

    a, b = args.baseline, args.opt
    if not (a.is_file() and b.is_file()):
        return None  # reading them names what is missing
    if os.path.realpath(a) == os.path.realpath(b):
        return f"--baseline and --opt are the same file ({a}); compare two runs"
    try:
        identical = filecmp.cmp(a, b, shallow=False)
    except OSError:
        return None  # reading them names the problem
    if identical:
        return (f"--baseline {a} and --opt {b} are byte-identical (a copy, not a second run); "
                f"compare two runs (an A/A control: --mask-impl X,X in one interleaved run)")
    return None


def _fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _sides_table(report: dict) -> list[str]:
    a, b = report["baseline"], report["opt"]
    rows = [("tokens/s (total tokens / total time)", "tokens_per_s", ".2f"),
            ("tokens/s (mean over questions, as Spec-Bench and EAGLE)",
             "tokens_per_s_mean_per_question", ".2f"),
            ("new tokens", "new_tokens", "d"), ("wall time (s)", "seconds", ".2f")]
    lines = [f"| | baseline ({a['label']}) | opt ({b['label']}) |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(a[key], spec)} | {_fmt(b[key], spec)} |" for name, key, spec in rows]
    for name, key in (("new tokens per step", "new_tokens_per_step"),
                      ("mean acceptance length (tau)", "mean_acceptance_length"),
                      ("mean of accept_lengths (Spec-Bench)", "mean_accept_lengths")):
        lines.append(f"| {name} | {_fmt(a['acceptance'][key])} | {_fmt(b['acceptance'][key])} |")
    return lines


DEFINITIONS = [
    "new tokens per step: new tokens / decoding steps as the answer file counts them (tokens past a "
    "stop token or the budget are not counted; plain decoding counts each token as a step)",
    "mean acceptance length (tau, as the EAGLE papers define it): accepted draft tokens + the bonus "
    "token per decoding step",
    "mean of accept_lengths: Spec-Bench's mean accepted tokens, tokens each step added (the same as "
    "tau except where a stop token or the budget cut a turn's last step)",
]


def _pairing_lines(report: dict) -> list[str]:
    from evaluation.paired import MIN_QUESTIONS

    p, s = report["pairing"], report["speedup"]
    if p["paired"]:
        left = p["questions"] - len(p["paired_questions"])
        extra = (f"; {left} questions answered in separate processes are left out of the speedup"
                 if left else "")
        lines = [f"Paired: {len(p['paired_questions'])} questions were answered by both files in one "
                 f"interleaved process (run {', '.join(p['run_ids'])}); the speedup is the geometric "
                 f"mean of per-turn throughput ratios, its CI a Student-t interval over questions{extra}."]
    else:
        lines = [f"**Unpaired: these files come from separate processes.** Drift between the two runs "
                 f"(machine load, clocks, process-to-process variation) is not controlled: it is part "
                 f"of the {s['value']:.3f}x and not of its CI, which covers question-to-question "
                 f"variation only, so a verdict needs a difference beyond the {s['band_source']} "
                 f"(\u00b1{s['band_pct']:.1f}%). Use one interleaved run (--mask-impl A,B) for a "
                 f"paired comparison."]
    control = report.get("control")
    if control:
        ci = f" (95% CI {control['ci95'][0]:.3f}-{control['ci95'][1]:.3f})" if control["ci95"] else ""
        lines.append(f"Control pair, the same code twice ({control['method']}, {control['questions']} "
                     f"questions; `{control['files'][0]}` vs `{control['files'][1]}`): "
                     f"{control['value']:.3f}x{ci}; a difference within that spread is noise or "
                     f"drift, not code, and " + ("the verdict is judged against it." if control["applied"]
                     else f"as a {control['method']} control with {control['questions']} questions "
                          f"it does not apply to this {s['method']} comparison (the verdict needs a "
                          f"control of its kind with at least {MIN_QUESTIONS} questions)."))
    return lines


def _speedup_line(report: dict) -> str:
    s = report["speedup"]
    what = ("paired per-turn throughput ratio" if s["method"] == "paired"
            else "geometric mean of per-question throughput ratios, opt / baseline")
    ci = (f" (95% CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}, Student-t over "
          f"{s['questions']} questions)") if s["ci95"] else ""
    return f"**speedup ({what}): {s['value']:.3f}x**{ci}"


def _category_rows(report: dict) -> list[str]:
    lines = ["| category | questions | baseline tok/s | opt tok/s | baseline tok/step | "
             "opt tok/step | speedup | 95% CI |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["categories"]:
        ci = f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}" if r["ci95"] else "n/a"
        lines.append(f"| {r['category']} | {r['questions']} | {r['baseline_tokens_per_s']:.2f} | "
                     f"{r['opt_tokens_per_s']:.2f} | {_fmt(r['baseline_tokens_per_step'])} | "
                     f"{_fmt(r['opt_tokens_per_step'])} | {r['speedup']:.3f}x | {ci} |")
    return lines


def _audit_lines(report: dict) -> list[str]:
    audit = report["audit"]
    counts = (f"{audit['turns']} turns compared: {audit['identical']} identical, {audit['differing']} "
              f"differing in {audit['questions_differing']} questions")
    if not audit["required"]:
        a, b = report["baseline"], report["opt"]
        per_turn = [side["new_tokens"] / audit["turns"] for side in (a, b)]
        per_step = [side["acceptance"]["new_tokens_per_step"] for side in (a, b)]
        return [f"{counts}: **token identity not expected**: {audit['why_not_required']}.",
                f"Compared instead: new tokens per turn {per_turn[0]:.2f} (baseline) vs "
                f"{per_turn[1]:.2f} (opt); new tokens per step {_fmt(per_step[0])} vs "
                f"{_fmt(per_step[1])}."]
    verdict = "outputs identical" if audit["differing"] == 0 else "OUTPUTS DIFFER"
    lines = [f"{counts}: **{verdict}**"]
    lines += [f"- {d}" for d in audit["descriptions"][:MAX_LISTED]]
    if audit["differing"] > MAX_LISTED:
        lines.append(f"- ... {audit['differing'] - MAX_LISTED} more (see --json)")
    return lines


def render_markdown(report: dict) -> str:
    a, b = report["baseline"], report["opt"]
    lines = [f"# Speed: {a['label']} vs {b['label']} (baseline vs opt)", ""] + _pairing_lines(report) + [
        "", f"- baseline: `{a['file']}` (code {a['fingerprint'] or 'not recorded'})",
        f"- opt: `{b['file']}` (code {b['fingerprint'] or 'not recorded'})",
        f"- device: {a['settings'].get('device_name')} ({a['settings'].get('dtype')}); "
        f"{a['questions']} questions", ""]
    lines += [f"> warning: {w}" for w in report["warnings"]]
    lines += _sides_table(report) + [""] + [f"- {d}" for d in DEFINITIONS]
    lines += ["", _speedup_line(report), "", "## Per category", ""] + _category_rows(report)
    lines += ["", "## Equivalence audit (generated token ids)", ""] + _audit_lines(report)
    return "\n".join(lines + ["", report["verdict"]]) + "\n"


def category_figure(report: dict):
    """Per-category speedup bars with their 95% CIs as error bars; the overall speedup and CI."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache chatter

    cats, overall = report["categories"], report["speedup"]
    values = [c["speedup"] for c in cats]
    errors = [[v - c["ci95"][0] if c["ci95"] else 0.0 for v, c in zip(values, cats)],
              [c["ci95"][1] - v if c["ci95"] else 0.0 for v, c in zip(values, cats)]]  # [2, C]
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.bar([c["category"] for c in cats], values, yerr=errors, capsize=4, color="tab:blue",
           ecolor="black", label="category (95% CI)")
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.axhline(overall["value"], color="tab:orange", linestyle="--",
               label=f"overall {overall['value']:.3f}x")
    if overall["ci95"]:
        ax.axhspan(*overall["ci95"], color="tab:orange", alpha=0.15, label="overall 95% CI")
    ax.set_ylabel(f"speedup ({overall['method']})")
    ax.set_title(f"{report['baseline']['label']} vs {report['opt']['label']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_categories(report: dict, path: Path) -> None:
    category_figure(report).savefig(path, dpi=120, bbox_inches="tight")


def write_outputs(args: argparse.Namespace, report: dict, markdown: str) -> None:
    """Write the requested files; raises `OutputError` naming the one that failed."""
    from evaluation.output_paths import write_output

    write_output("--json", args.json, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    write_output("--markdown", args.markdown, lambda p: p.write_text(markdown))
    write_output("--plot", args.plot, lambda p: plot_categories(report, p))


def run(args: argparse.Namespace) -> int:
    from evaluation.answers import AnswerFileError
    from evaluation.compare import Run, check_comparable, compare, control_speedup
    from evaluation.output_paths import OutputError

    problem = check_outputs(args) or check_inputs(args)
    if problem:
        log.error("%s", problem)
        return EXIT_BAD_INPUT
    try:
        base, opt = Run.load(args.baseline), Run.load(args.opt)
        warnings = check_comparable(base, opt)
        controls = [Run.load(path) for path in args.control or ()]
        if controls:
            check_comparable(*controls)
    except AnswerFileError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    for warning in warnings:
        log.warning("%s", warning)
    control = control_speedup(*controls) if controls else None
    report = {**compare(base, opt, control), "warnings": warnings}
    markdown = render_markdown(report)
    try:
        write_outputs(args, report, markdown)
    except OutputError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    differing = report["audit"]["differing"] if report["audit"]["required"] else 0
    if differing:
        log.log(logging.WARNING if args.allow_mismatch else logging.ERROR,
                "%d of %d turns differ; first: %s", differing, report["audit"]["turns"],
                report["audit"]["descriptions"][0])
        log.info("near-ties or real differences? python -m evaluation.referee %s %s",
                 args.baseline, args.opt)
    sys.stdout.write(markdown)
    return EXIT_MISMATCH if differing and not args.allow_mismatch else EXIT_OK


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

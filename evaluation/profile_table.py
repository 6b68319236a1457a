"""Side-by-side per-step breakdown of several `--profile` runs (ANSWER.profile.json files).

One column per run (labelled by its mask implementation, or its file name when an implementation
appears twice), one row per section of a decoding step in
ms per step and % of the step, plus the tree buffers' share (tree mask + retrieve indices) and the
speedup over the first run that the tree buffers alone account for: the first run's step with its
tree-buffer time replaced by this run's. Separate processes also differ in their forward passes
(launch-bound eager kernels vary from process to process), so this projection isolates what the
mask implementation itself changes. Outputs: the markdown table (stdout, optionally a file), a JSON
report and a stacked-bar PNG.

Exit status: 0, or 2 on bad input (the message names the file) or an output that cannot be written
(an input's path, an unwritable folder, a plot format matplotlib does not know).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a file: make the repository's `evaluation` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_INPUT = 0, 2
# (section key, row label); the order of a step: draft -> tree buffers -> verify -> accept -> update
ROWS = (("draft", "draft forwards + selection (captured)"), ("draft_forward", "draft forward"),
        ("draft_select", "draft top-k / selection"),
        ("tree_mask", "tree mask (+ positions)"), ("retrieve_indices", "retrieve indices"),
        ("verify_forward", "verify forward"), ("posterior", "posterior (acceptance)"),
        ("kv_update", "KV update"))
TREE_BUFFERS = ("tree_mask", "retrieve_indices")
# settings that may differ between the compared runs; any other difference is reported
VARYING = {"mask_impl", "method"}


class ProfileFileError(ValueError):
    """A profile file that cannot be read; the message names it."""


@dataclass(frozen=True)
class Profile:
    path: Path
    steps: int
    ms: dict  # section -> ms per step
    settings: dict
    label: str  # the column heading: the mask implementation, or the file name where that repeats

    @property
    def step_ms(self) -> float:
        return self.ms["step_total"]

    def pct(self, section: str) -> float:
        return 100.0 * self.ms[section] / self.step_ms

    @property
    def tree_buffers_ms(self) -> float:
        return sum(self.ms.get(s, 0.0) for s in TREE_BUFFERS)

    def projected_speedup(self, reference: "Profile") -> float:
        """Speedup over `reference` if only the tree-buffer time differed."""
        step = reference.step_ms - reference.tree_buffers_ms + self.tree_buffers_ms
        return reference.step_ms / step

    @classmethod
    def load(cls, path: Path) -> "Profile":
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ProfileFileError(f"{path}: cannot read ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProfileFileError(f"{path}: not JSON ({exc})") from None
        try:
            ms = {name: float(row["ms_per_step"]) for name, row in data["sections"].items()}
            steps = int(data["steps"])
            settings = data.get("settings") or {}
            if not isinstance(settings, dict):
                raise TypeError("settings")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ProfileFileError(f"{path}: not a profile report (written by --profile): "
                                   f"missing or malformed {exc}") from None
        if steps < 1 or not 0.0 < ms.get("step_total", 0.0) < math.inf:
            raise ProfileFileError(f"{path}: no timed steps (steps {steps}, step_total "
                                   f"{ms.get('step_total')})")
        if not all(math.isfinite(v) and v >= 0.0 for v in ms.values()):
            raise ProfileFileError(f"{path}: a section time is negative or not a number")
        return cls(path, steps, ms, settings, settings.get("mask_impl") or run_name(path))


def run_name(path: Path) -> str:
    """runs/x/tiny-ea-rebuild.jsonl.profile.json -> tiny-ea-rebuild"""
    return path.name.removesuffix(".profile.json").removesuffix(".jsonl")


def distinct_labels(profiles: list[Profile]) -> list[Profile]:
    """Runs of the same implementation (a repeat, say) are told apart by their file names, and
    by their folders where the file names repeat too."""
    for name in (run_name, lambda path: f"{path.parent.name}/{run_name(path)}"):
        labels = [p.label for p in profiles]
        profiles = [replace(p, label=name(p.path)) if labels.count(p.label) > 1 else p
                    for p in profiles]
    return profiles


def setting_differences(profiles: list[Profile]) -> list[str]:
    """Settings other than the mask implementation that differ from the first run's."""
    first, notes = profiles[0], []
    for other in profiles[1:]:
        keys = (set(first.settings) | set(other.settings)) - VARYING
        notes += [f"{other.path} differs from {first.path} in {k!r}: {first.settings.get(k)!r} vs "
                  f"{other.settings.get(k)!r}" for k in sorted(keys)
                  if first.settings.get(k) != other.settings.get(k)]
    return notes


def _cell(p: Profile, section: str) -> str:
    return f"{p.ms[section]:.2f} ({p.pct(section):.1f}%)" if section in p.ms else "-"


def present_rows(profiles: list[Profile]) -> list[tuple[str, str]]:
    """The ROWS some run timed (eager CPU runs have no captured draft segment)."""
    return [(key, label) for key, label in ROWS if any(key in p.ms for p in profiles)]


def markdown_table(profiles: list[Profile]) -> str:
    lines = ["| section | " + " | ".join(p.label for p in profiles) + " |",
             "|---|" + "---:|" * len(profiles)]
    lines += [f"| {label} | " + " | ".join(_cell(p, key) for p in profiles) + " |"
              for key, label in present_rows(profiles)]
    lines.append("| **step total** | " + " | ".join(f"**{p.step_ms:.2f}**" for p in profiles) + " |")
    lines.append("| tree buffers (mask + retrieve) | " + " | ".join(
        f"{p.tree_buffers_ms:.2f} ({100 * p.tree_buffers_ms / p.step_ms:.1f}%)" for p in profiles) + " |")
    lines.append(f"| speedup from tree buffers alone (vs {profiles[0].label}) | " + " | ".join(
        f"{p.projected_speedup(profiles[0]):.3f}x" for p in profiles) + " |")
    lines.append("| steps | " + " | ".join(str(p.steps) for p in profiles) + " |")
    return "\n".join(lines)


def report_dict(profiles: list[Profile], notes: list[str]) -> dict:
    return {"runs": [{"file": str(p.path), "label": p.label, "steps": p.steps, "ms_per_step": p.ms,
                      "tree_buffers_ms": p.tree_buffers_ms,
                      "tree_buffers_pct": 100 * p.tree_buffers_ms / p.step_ms,
                      "projected_speedup_vs_first": p.projected_speedup(profiles[0]),
                      "settings": p.settings} for p in profiles],
            "warnings": notes}


def step_figure(profiles: list[Profile]):
    """Horizontal stacked bars: ms per step by section, one bar per run; the legend beside the
    axes, clear of the x label."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache chatter

    fig = Figure(figsize=(9, 1.2 + 0.6 * len(profiles)))
    ax = fig.subplots()
    labels = [p.label for p in profiles]
    left = [0.0] * len(profiles)
    for key, name in present_rows(profiles):
        widths = [p.ms.get(key, 0.0) for p in profiles]
        ax.barh(labels, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths)]
    other = [p.step_ms - done for p, done in zip(profiles, left)]  # untimed glue between sections
    ax.barh(labels, [max(o, 0.0) for o in other], left=left, color="lightgrey", label="other")
    ax.invert_yaxis()
    ax.set_xlabel("ms per decoding step")
    device = profiles[0].settings.get("device_name", "")
    ax.set_title(f"Where a step's time goes ({device})" if device else "Where a step's time goes")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot(profiles: list[Profile], path: Path) -> None:
    step_figure(profiles).savefig(path, dpi=120, bbox_inches="tight")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle-profile-table", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per-step section breakdown of several --profile runs, side by side.",
        epilog="examples:\n"
               "  eagle-profile-table runs/tiny-ea-*.jsonl.profile.json\n"
               "  eagle-profile-table runs/gpu/tt60/*.profile.json --markdown runs/gpu/tt60/profile.md \\\n"
               "      --json runs/gpu/tt60/profile.json --plot runs/gpu/tt60/profile.png\n")
    parser.add_argument("profiles", nargs="+", type=Path, metavar="ANSWER.profile.json",
                        help="profile reports written next to answer files by --profile")
    outputs = parser.add_argument_group("outputs (the table always goes to stdout)")
    outputs.add_argument("--markdown", type=Path, metavar="OUT", help="write the table as Markdown")
    outputs.add_argument("--json", type=Path, metavar="OUT", help="write the numbers as JSON")
    outputs.add_argument("--plot", type=Path, metavar="PNG", help="stacked-bar chart of a step")
    return parser


def check_outputs(args: argparse.Namespace) -> Optional[str]:
    """Why the output paths are unusable (one is an input or another output, or the plot's
    extension is no image format), or None."""
    from evaluation.output_paths import output_clash, plot_format_problem

    inputs = {f"input {path}": path for path in args.profiles}
    return output_clash(inputs, {f"--{flag}": getattr(args, flag)
                                 for flag in ("markdown", "json", "plot")}) \
        or plot_format_problem(args.plot)


def write_outputs(args: argparse.Namespace, profiles: list[Profile], table: str,
                  notes: list[str]) -> None:
    """Write the requested files; raises `OutputError` naming the one that failed."""
    from evaluation.output_paths import write_output

    write_output("--markdown", args.markdown, lambda p: p.write_text(table + "\n"))
    write_output("--json", args.json,
                 lambda p: p.write_text(json.dumps(report_dict(profiles, notes), indent=2) + "\n"))
    write_output("--plot", args.plot, lambda p: plot(profiles, p))


def main(argv: Optional[list[str]] = None) -> int:
    from evaluation.output_paths import OutputError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problem = check_outputs(args)
    if problem:
        log.error("%s", problem)
        return EXIT_BAD_INPUT
    try:
        profiles = distinct_labels([Profile.load(p) for p in args.profiles])
    except ProfileFileError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    notes = setting_differences(profiles)
    for note in notes:
        log.warning("%s", note)
    table = markdown_table(profiles)
    sys.stdout.write(table + "\n")
    try:
        write_outputs(args, profiles, table, notes)
    except OutputError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

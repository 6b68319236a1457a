"""`python -m evaluation.referee A.jsonl B.jsonl`: is each token divergence float noise or a bug?

Two greedy runs of one model (baseline and EAGLE, two mask implementations, two processes) must
pick the same tokens up to rounding: in float16/bfloat16 the two computations round differently,
and where the two best logits are nearly tied they may pick different tokens. For every turn whose
ids differ, the referee takes the shared prefix (the generator's prompt of that turn through the
chat template, plus the common new tokens), runs the base model alone (never a draft head) once at
its own precision (float64 on the CPU, float32 on CUDA, the runs' weights cast up exactly) and
reads the logits at the first differing position. Each divergence gets a class:

- near-tie: both tokens' logits lie within the margin of the top logit: rounding may pick either.
- not a tie: a side chose a token more than the margin below the referee's top logit: that side
  departed from greedy decoding, a real difference (a verification bug, not rounding).
- follows an earlier divergence: an earlier turn of the conversation differs, so this turn's
  prompts differ; the earlier divergence is the one judged.

Margin: `--ulps` (default 8) ulps of the runs' dtype at that position's logit scale,
    margin = ulps * 2^(floor(log2 max|logit|) - p),  p = 10 (float16), 7 (bfloat16), 23 (float32),
the spacing of the runs' logits there; a logit's own rounding is half an ulp, and two
computations that reduce in different orders through every layer differ by a few.

Sampling runs (temperature > 0) are explained, not judged. Runs of unlike settings (base model,
tokenizer, chat template, dtype, decoding rule) are refused. Exit status: 0 when no divergence is
real (none at all, only near-ties, or sampling runs), 1 when a real difference exists, 2 on bad
input (a missing or malformed file, unlike runs, a question file without the answered questions).
The last line of the report is the verdict: "differ only at near-ties" or the real differences.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

from .referee_judge import DEFAULT_ULPS, FOLLOWS, NEAR_TIE, REAL, RefereeError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_REAL, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_QUESTIONS = Path("data") / "mt_bench" / "question.jsonl"
TABLE_HEADER = ["| question | choice | turn | position | A token | B token | top-2 gap | margin | class |",
                "|---:|---:|---:|---:|---|---|---:|---:|---|"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.referee", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Judge every token divergence between two greedy answer files of one model: "
                    "a near-tie that rounding explains, or a real difference (a side that departed "
                    "from greedy decoding), by one forward of the base model per divergent turn.",
        epilog="examples:\n"
               "  python -m evaluation.referee runs/tiny-baseline.jsonl runs/tiny-rebuild.jsonl\n"
               "  python -m evaluation.referee runs/8b-baseline.jsonl runs/8b-rebuild.jsonl \\\n"
               "      --base-model-path preset:llama3.1-8b --seed 0 --device cuda --json ref.json\n"
               "exit status: 0 no real difference, 1 a real difference, 2 bad input\n")
    g = parser.add_argument_group("inputs")
    g.add_argument("a", type=Path, metavar="A.jsonl", help="answer file (e.g. the baseline)")
    g.add_argument("b", type=Path, metavar="B.jsonl", help="answer file judged against it")
    g.add_argument("--base-model-path", metavar="DIR|preset:NAME",
                   help="the runs' base model (default: the one their settings record)")
    g.add_argument("--tokenizer-path", metavar="DIR",
                   help="the runs' tokenizer (default: the one their settings record)")
    g.add_argument("--seed", type=int, metavar="N",
                   help="a preset's weight seed (default: the runs' seed)")
    g.add_argument("--question-file", type=Path, default=DEFAULT_QUESTIONS, metavar="PATH",
                   help=f"the questions the runs answered (default: {DEFAULT_QUESTIONS})")
    r = parser.add_argument_group("referee")
    r.add_argument("--device", default="auto", metavar="DEV", help="cpu, cuda, cuda:N (default: auto)")
    r.add_argument("--dtype", default="auto", choices=("auto", "float64", "float32"),
                   help="the referee's precision (default: float64 on the CPU, float32 on CUDA)")
    r.add_argument("--ulps", type=float, default=DEFAULT_ULPS, metavar="N",
                   help=f"near-tie margin in ulps of the runs' dtype at the logit scale "
                        f"(default: {DEFAULT_ULPS:g})")
    r.add_argument("--batch-tokens", type=int, default=16384, metavar="N",
                   help="padded tokens per forward batch (default: 16384)")
    r.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    return parser


def load_inputs(args: argparse.Namespace):
    """(rows A, rows B, settings, questions); rows: question id -> answer. Raises on bad input."""
    from .answers import iter_lines, read_answers
    from .referee_judge import check_alike

    rows_a = {obj["question_id"]: obj for _, obj in read_answers(args.a)}
    rows_b = {obj["question_id"]: obj for _, obj in read_answers(args.b)}
    check_alike(args.a, rows_a, args.b, rows_b)
    if not args.question_file.is_file():
        raise RefereeError(f"no question file {args.question_file}; pass --question-file PATH (the "
                           f"questions the runs answered)")
    questions = {obj.get("question_id"): obj.get("turns") for _, obj in iter_lines(args.question_file)}
    for qid, answer in rows_a.items():
        turns = max(len(c["turns"]) for c in answer["choices"])
        if not isinstance(questions.get(qid), list) or len(questions[qid]) < turns:
            raise RefereeError(f"{args.question_file} lacks question {qid} with {turns} turns; pass "
                               f"the --question-file the runs answered")
    return rows_a, rows_b, rows_a[next(iter(rows_a))]["settings"], questions


def token_text(tokenizer, token: Optional[int]) -> str:
    if token is None:
        return "(ended)"
    text = tokenizer.decode([token]) if token < len(tokenizer) else "?"
    return f"{json.dumps(text)} ({token})"


def _side(div, tokenizer, s: int) -> str:
    text = token_text(tokenizer, div.tokens[s])
    if div.ranks[s] is None:
        return text
    return f"{text} rank {div.ranks[s]}, logit {div.logits[s]:.5g}"


def render(divs: list, tokenizer, counts: Counter, verdict: str) -> str:
    """The Markdown report: one row per divergent turn, the summary line, the verdict last."""
    lines = TABLE_HEADER[:] if divs else []
    for d in divs:
        gap = "n/a" if d.top2_gap is None else f"{d.top2_gap:.3g}"
        margin = "n/a" if d.margin is None else f"{d.margin:.3g}"
        klass = d.klass + (f" ({' and '.join(d.departed)} departed)" if d.departed else "")
        cells = [str(d.question_id), str(d.choice), str(d.turn), str(d.position),
                 _side(d, tokenizer, 0), _side(d, tokenizer, 1), gap, margin, klass]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [""] if divs else []
    return "\n".join(lines + [summary_line(counts), "", verdict]) + "\n"


def summary_line(counts: Counter) -> str:
    total = sum(counts.values())
    line = f"{total} divergences: {counts[NEAR_TIE]} near-ties, {counts[REAL]} real"
    if counts[FOLLOWS]:
        line += f" ({counts[FOLLOWS]} more turns follow an earlier divergence, not judged)"
    return line


def verdict_line(divs: list) -> str:
    real = [d for d in divs if d.klass == REAL]
    if not divs:
        return "referee: no divergences, token ids identical"
    if not real:
        return "referee: outputs differ only at near-ties (float rounding)"
    named = ", ".join(f"question {d.question_id} turn {d.turn} ({' and '.join(d.departed)} "
                      f"departed)" for d in real[:10])
    more = f" and {len(real) - 10} more" if len(real) > 10 else ""
    return f"referee: REAL DIFFERENCES: {named}{more}"


def any_difference(rows_a: dict, rows_b: dict) -> bool:
    return any(ca["detail"]["token_ids"] != cb["detail"]["token_ids"]
               for qid, answer in rows_a.items()
               for ca, cb in zip(answer["choices"], rows_b[qid]["choices"]))


def check_sources(args: argparse.Namespace, settings: dict) -> None:
    """The base model and tokenizer exist here; a base other than the recorded one is named."""
    from eagle.presets import PRESETS

    from .referee_model import PRESET_PREFIX

    base = args.base_model_path or settings["base_model"]
    if base.startswith(PRESET_PREFIX):
        if base[len(PRESET_PREFIX):] not in PRESETS:
            raise RefereeError(f"unknown preset {base!r}; choose preset:{' or preset:'.join(PRESETS)}")
    elif not (Path(base) / "config.json").is_file():
        raise RefereeError(f"base model {base} is not a checkpoint directory here (no config.json); "
                           f"pass --base-model-path DIR, the base model the runs used")
    tokenizer = args.tokenizer_path or settings["tokenizer"]
    if not Path(tokenizer).is_dir():
        raise RefereeError(f"tokenizer {tokenizer} is not a directory here; pass --tokenizer-path "
                           f"DIR, the tokenizer the runs used")
    if args.base_model_path and args.base_model_path != settings["base_model"]:
        log.warning("judging with %s; the runs recorded %s as their base model",
                    args.base_model_path, settings["base_model"])


def judge_all(args: argparse.Namespace, divs: list, settings: dict) -> dict:
    """Run the reference over every judgeable divergence; the referee's settings."""
    from .referee_judge import judge
    from .preflight import resolve_device
    from .referee_model import load_reference, next_token_logits, referee_dtype

    import torch

    device = resolve_device(args.device, RefereeError)
    dtype = referee_dtype(args.dtype, device)
    ulps = args.ulps
    todo = [d for d in divs if d.prefix is not None]
    base = args.base_model_path or settings["base_model"]
    seed = settings.get("seed", 0) if args.seed is None else args.seed
    if todo:
        model = load_reference(base, getattr(torch, settings["dtype"]), dtype, device, seed,
                               settings.get("device", "cpu"))
        for div, logits in zip(todo, next_token_logits(model, [d.prefix for d in todo],
                                                       args.batch_tokens)):
            judge(div, logits, settings["dtype"], ulps)
    both = [d for d in todo if len(d.departed) == 2]
    if both:
        log.warning("in %d divergences (first: question %d turn %d) neither side chose a token near "
                    "the reference's argmax: is the reference the model the runs used (base model, "
                    "a preset's seed, the tokenizer)?", len(both), both[0].question_id, both[0].turn)
    return {"base_model": base, "seed": seed, "device": str(device),
            "dtype": str(dtype).removeprefix("torch."), "ulps": ulps, "runs_dtype": settings["dtype"]}


def referee(args: argparse.Namespace) -> int:
    """Load, judge, report; raises on bad input."""
    from transformers import AutoTokenizer

    from .referee_judge import find_divergences, sampling_note

    rows_a, rows_b, settings, questions = load_inputs(args)
    report = {"files": [str(args.a), str(args.b)]}
    note = sampling_note(settings)
    if note:
        report.update(sampling=note, verdict=f"referee: not judged: {note}")
        write_report(args, report)
        sys.stdout.write(report["verdict"] + "\n")
        return EXIT_OK
    tokenizer = None
    if any_difference(rows_a, rows_b):
        check_sources(args, settings)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path or settings["tokenizer"])
    divs = find_divergences(rows_a, rows_b, questions, tokenizer) if tokenizer else []
    report["referee"] = judge_all(args, divs, settings)
    counts = Counter(d.klass for d in divs)
    verdict = verdict_line(divs)
    report.update(divergences=[d.to_dict() for d in divs], counts=dict(counts),
                  summary=summary_line(counts), verdict=verdict)
    write_report(args, report)
    sys.stdout.write(render(divs, tokenizer, counts, verdict))
    return EXIT_REAL if counts[REAL] else EXIT_OK


def write_report(args: argparse.Namespace, report: dict) -> None:
    from .output_paths import write_output

    write_output("--json", args.json, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))


def check_args(args: argparse.Namespace) -> Optional[str]:
    from .output_paths import output_clash

    if not args.ulps > 0:
        return f"--ulps must be > 0, got {args.ulps}"
    if args.batch_tokens < 1:
        return f"--batch-tokens must be >= 1, got {args.batch_tokens}"
    return output_clash({"A.jsonl": args.a, "B.jsonl": args.b}, {"--json": args.json})


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problem = check_args(args)
    if problem:
        log.error("%s", problem)
        return EXIT_BAD_INPUT
    from .answers import AnswerFileError
    from .output_paths import OutputError

    try:
        return referee(args)
    except (AnswerFileError, RefereeError, OutputError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""Command line of the MT-Bench answer generators (EAGLE and baseline): the parser and `main`, which
turn the arguments into a validated `GenConfig` (`evaluation.run_settings`).

Nothing heavy is imported at module level, so `--help` is instant; `main` imports the generation
loop (torch, transformers) only after the arguments parsed.

`check_main` (`python -m evaluation.check_settings [EAGLE GENERATOR OPTIONS]`) checks every setting
that needs no files (numbers, names, device, mask implementations and attention backend available
here) and exits 0, or 2 with the message: scripts run it before they build checkpoints or fetch
questions.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from .run_settings import DTYPES, EXIT_INTERRUPTED, PLACEHOLDER, GenConfig, GenError

log = logging.getLogger(__name__)

EPILOG = """examples:
  # real checkpoints (local directories) on a GPU
  {prog} --base-model-path models/Llama-3.1-8B-Instruct \\
      --ea-model-path models/EAGLE3-LLaMA3.1-Instruct-8B --model-id llama31-8b{extra}
  # the tiny checkpoints (python -m eagle.tiny --out checkpoints/tiny) on the CPU
  {prog} --base-model-path checkpoints/tiny/base --ea-model-path checkpoints/tiny/draft \\
      --question-end 4 --max-new-token 32
  # rebuild vs vectorized and plain decoding, interleaved in one process, one file each
  {prog} --base-model-path checkpoints/tiny/base --ea-model-path checkpoints/tiny/draft \\
      --mask-impl rebuild,vectorized --with-baseline --answer-file runs/tiny-{{impl}}.jsonl
  # random weights at Llama-3.1-8B shapes, a tokenizer borrowed from the tiny checkpoint
  {prog} --base-model-path preset:llama3.1-8b --tokenizer-path checkpoints/tiny/base \\
      --answer-file runs/8b.jsonl
Answers go to data/BENCH/model_answer/MODEL_ID.jsonl unless --answer-file is given; a rerun resumes.
"""


def _model_group(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--base-model-path", required=True, metavar="DIR|preset:NAME",
                   help="HF Llama checkpoint directory (checkpoints/tiny/base for the tiny "
                        "model), or preset:llama3.1-8b / preset:tiny (random weights at real shapes)")
    g.add_argument("--ea-model-path", metavar="DIR",
                   help="EAGLE-3 draft head directory (unused with a preset; the baseline "
                        "accepts it, as upstream's does, and does not load it)")
    g.add_argument("--tokenizer-path", metavar="DIR",
                   help="tokenizer with a Llama-3 chat template (default: the base model's)")
    g.add_argument("--model-id", metavar="NAME",
                   help=f"model_id written to each answer (default: ea-{PLACEHOLDER} / baseline; "
                        f"{PLACEHOLDER} is replaced by each member's label)")
    g.add_argument("--use-eagle3", action="store_true",
                   help="accepted for upstream compatibility: EAGLE-3 heads are the only kind")
    g.add_argument("--dtype", default="auto", metavar="|".join(DTYPES),
                   help="weights dtype (default: float16 on CUDA, float32 on the CPU)")
    g.add_argument("--device", default="auto", metavar="DEV", help="cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--seed", type=int, default=0, metavar="N",
                   help="sampling seed (+ choice index) and a preset's weight seed (default: 0)")
    g.add_argument("--max-length", type=int, default=4096, metavar="N",
                   help="KV cache length: prompt + new tokens + tree must fit (default: 4096)")
    g.add_argument("--attention-backend", default="auto", metavar="auto|math|efficient|cudnn|flash",
                   help="attention kernel for every forward (default: auto = the engine's Triton "
                        "kernel on CUDA with triton, else SDPA's efficient backend, both reproducing "
                        "bit for bit; torch's choice on the CPU); a named SDPA backend is pinned "
                        "for every attention; recorded in the settings with the kernel that ran")
    g.add_argument("--cuda-graph", choices=("on", "off"), default=None,
                   help="replay each decoding step, greedy or sampling, as CUDA graphs, captured "
                        "once per model, tree configuration and decoding mode before the first "
                        "prompt (default: on with CUDA, off on the CPU); a seed gives the same "
                        "tokens with graphs on or off")


def _data_group(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("questions and answers")
    g.add_argument("--bench-name", default="mt_bench", metavar="NAME", help="default: mt_bench")
    g.add_argument("--question-file", type=Path, metavar="PATH",
                   help="default: data/BENCH/question.jsonl")
    g.add_argument("--question-begin", type=int, metavar="I", help="first question index (slice)")
    g.add_argument("--question-end", type=int, metavar="J", help="end question index (slice)")
    g.add_argument("--answer-file", type=Path, metavar="PATH",
                   help=f"default: data/BENCH/model_answer/MODEL_ID.jsonl; with several members "
                        f"it must hold {PLACEHOLDER}, replaced by each member's label "
                        f"(runs/ea-{PLACEHOLDER}.jsonl: runs/ea-rebuild.jsonl, runs/ea-baseline.jsonl)")


def _decoding_group(parser: argparse.ArgumentParser, method: str) -> None:
    g = parser.add_argument_group("decoding")
    g.add_argument("--max-new-token", type=int, default=1024, metavar="N",
                   help="new tokens per turn at most (default: 1024)")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    g.add_argument("--mt-bench-temperatures", action="store_true",
                   help="MT-Bench's own temperature per question category, as FastChat's llm_judge "
                        "sets it: writing and roleplay 0.7, stem and humanities 0.1, the others 0 "
                        "(greedy); recorded in the settings (temperature_by_category)")
    g.add_argument("--top-p", type=float, default=0.0, metavar="P", help="nucleus sampling, 0 = off")
    g.add_argument("--sample-top-k", type=int, default=0, metavar="K", help="top-k sampling, 0 = off")
    g.add_argument("--num-choices", type=int, default=1, metavar="N", help="answers per question")
    g.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed passes over the first pending question (default: 1)")
    if method == "eagle":
        g.add_argument("--profile", action="store_true",
                       help="time each step's sections with CUDA events (perf_counter on the CPU); "
                            "with CUDA graphs every segment of a step (draft, tree buffers, verify "
                            "forward, posterior, KV update) replays as its own graph and is timed; "
                            "writes ANSWER_FILE.profile.json")


def _tree_group(parser: argparse.ArgumentParser, method: str) -> None:
    note = "" if method == "eagle" else " (recorded, unused by the baseline)"
    g = parser.add_argument_group("draft tree" + note)
    g.add_argument("--total-token", type=int, default=60, metavar="N", help="tree size incl. root (60)")
    g.add_argument("--depth", type=int, default=5, metavar="N", help="draft depth (default: 5)")
    g.add_argument("--top-k", type=int, default=10, metavar="K", help="children per node (default: 10)")
    if method == "eagle":
        g.add_argument("--mask-impl", default="rebuild", metavar="NAME[,NAME...]",
                       help="tree-mask implementation from eagle.tree.masks.MASK_IMPLS "
                            "(rebuild, incremental, vectorized, triton, ...; default: rebuild). "
                            "Several, comma separated: one process answers every question turn with "
                            "each in turn, the order rotating from turn to turn, one answer file "
                            "each; a repeated name is an A/A control (rebuild,rebuild: labels "
                            "rebuild and rebuild-2)")
        g.add_argument("--with-baseline", action="store_true",
                       help="add plain decoding of the base model (label baseline) to the rotation")


def build_parser(method: str, prog: str) -> argparse.ArgumentParser:
    extra = " --mask-impl vectorized --profile" if method == "eagle" else ""
    what = "EAGLE-3 speculative decoding" if method == "eagle" else "vanilla autoregressive decoding"
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Answer MT-Bench questions with {what} of a Llama-3 chat model "
                    f"(FastChat llm_judge answer file plus timings and token ids).",
        epilog=EPILOG.format(prog=prog, extra=extra))
    _model_group(parser)
    _data_group(parser)
    _decoding_group(parser, method)
    _tree_group(parser, method)
    parser.set_defaults(mask_impl="rebuild", profile=False, with_baseline=False,
                        mt_bench_temperatures=False)
    return parser


def main(method: str, argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    """Parse, validate and generate; a user error is logged and returns 2, Ctrl-C returns 130
    after one line saying what was kept."""
    args = build_parser(method, prog or Path(sys.argv[0]).name).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from eagle.checkpoint import CheckpointError
        from eagle.config import ConfigError
        from eagle.tree.masks import MaskImplUnavailable

        from .answers import AnswerFileError
        from .generate import generate_answers
        from .interleave import Interrupted

        generate_answers(GenConfig.from_args(args, method))
    except (GenError, AnswerFileError, ConfigError, CheckpointError, MaskImplUnavailable) as exc:
        log.error("%s", exc)
        return 2
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted before any answer was written; rerun the same command to start",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def check_main(argv: Optional[list[str]] = None) -> int:
    """`python -m evaluation.check_settings OPTIONS`: the settings checks that need no files; 0 or 2."""
    args = build_parser("eagle", "python -m evaluation.check_settings").parse_args(argv)
    from eagle.config import ConfigError
    from eagle.tree.masks import MaskImplUnavailable

    from .preflight import check_runtime, model_args, read_checkpoints

    try:
        cfg = GenConfig.from_args(args, "eagle", paths=False)
        check_runtime(cfg, model_args(cfg, read_checkpoints(cfg)))
    except (GenError, ConfigError, MaskImplUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


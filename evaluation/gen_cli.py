"""Command line of the MT-Bench answer generators (EAGLE and baseline): parser, config, `main`.

Nothing heavy is imported at module level, so `--help` is instant; `GenConfig.validate()` imports the
engine's registries to check the mask implementation and preset names, and `main` imports the
generation loop (torch, transformers) only after the arguments parsed.

`check_main` (`python -m evaluation.check_settings [EAGLE GENERATOR OPTIONS]`) checks every setting
that needs no files (numbers, names, device, mask implementations and attention backend available
here) and exits 0, or 2 with the message: scripts run it before they build checkpoints or fetch
questions.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple, Optional

METHODS = ("eagle", "baseline")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# scaled_dot_product_attention backends; "auto" lets torch choose per call
ATTENTION_BACKENDS = ("auto", "math", "efficient", "cudnn", "flash")
PRESET_PREFIX = "preset:"
PLACEHOLDER = "{impl}"  # in --answer-file / --model-id: the member's label (rebuild, rebuild-2, baseline)
BASELINE = "baseline"
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C

log = logging.getLogger(__name__)


class GenError(ValueError):
    """A setting or input file the generator cannot use; the message says what to fix."""


class Member(NamedTuple):
    """One answerer of a run: its label (file `{impl}`) and its own config (method, mask
    implementation, model id, answer file)."""
    label: str
    cfg: "GenConfig"


def member_labels(impls: list[str]) -> list[str]:
    """Labels in command order; a repeated name is numbered: rebuild, rebuild-2, rebuild-3."""
    seen: dict[str, int] = {}
    labels = []
    for impl in impls:
        seen[impl] = seen.get(impl, 0) + 1
        labels.append(impl if seen[impl] == 1 else f"{impl}-{seen[impl]}")
    return labels


@dataclass
class GenConfig:
    method: str  # eagle | baseline
    base_model_path: str  # HF Llama directory, or "preset:NAME" for random weights at real shapes
    ea_model_path: Optional[str]  # EAGLE-3 head directory (ignored with a preset)
    model_id: Optional[str]  # None: ea-LABEL / baseline; may hold {impl}
    answer_file: Optional[Path]  # None: data/BENCH/model_answer/MODEL_ID.jsonl; may hold {impl}
    question_file: Path
    bench_name: str = "mt_bench"
    tokenizer_path: Optional[str] = None  # default: the base model's directory
    question_begin: Optional[int] = None  # slice of the question list, as upstream
    question_end: Optional[int] = None
    max_new_token: int = 1024  # upstream default
    total_token: int = 60  # upstream EAGLE-3 tree defaults
    depth: int = 5
    top_k: int = 10
    num_choices: int = 1
    temperature: float = 0.0  # 0: greedy (lossless)
    top_p: float = 0.0  # 0: off
    sample_top_k: int = 0  # 0: off
    mask_impl: str = "rebuild"  # upstream behaviour; "A,B,..." answers with each in turn
    with_baseline: bool = False  # plain decoding of the base joins the rotation
    profile: bool = False
    dtype: str = "auto"  # float16 on CUDA, float32 on the CPU
    seed: int = 0  # sampling seed (+ choice index); also the weight seed of a preset
    device: str = "auto"
    max_length: int = 4096  # static KV cache: prompt + new tokens + tree must fit
    warmup: int = 1  # untimed passes over the first pending question
    attention_backend: str = "auto"  # auto: deterministic kernels (triton or efficient on CUDA)
    cuda_graph: Optional[str] = None  # on | off; None: on with CUDA, off elsewhere

    def __post_init__(self) -> None:
        self.question_file = Path(self.question_file)
        if self.answer_file is not None:
            self.answer_file = Path(self.answer_file)

    @property
    def mask_impls(self) -> list[str]:
        return [name.strip() for name in self.mask_impl.split(",")]

    @property
    def drafts(self) -> bool:
        """EAGLE drafts with a head and a mask builder; the baseline loads and uses neither."""
        return self.method == "eagle"

    def graphs_on(self, device) -> bool:
        """Whether decoding steps replay CUDA graphs on `device` (the resolved --cuda-graph)."""
        return device.type == "cuda" if self.cuda_graph is None else self.cuda_graph == "on"

    @property
    def preset(self) -> Optional[str]:
        if self.base_model_path.startswith(PRESET_PREFIX):
            return self.base_model_path[len(PRESET_PREFIX):]
        return None

    def validate(self, paths: bool = True) -> "GenConfig":
        """Check every setting (`paths=False`: all but those naming files and directories)."""
        self._check_numbers()
        self._check_choices()
        self.members()
        if paths:
            self._check_paths()
        return self

    def members(self) -> list[Member]:
        """Who answers, in command order: each mask implementation (EAGLE), then the baseline."""
        if self.drafts:
            plan = [(label, "eagle", impl) for label, impl in
                    zip(member_labels(self.mask_impls), self.mask_impls)]
            plan += [(BASELINE, BASELINE, self.mask_impls[0])] if self.with_baseline else []
        else:
            plan = [(BASELINE, BASELINE, self.mask_impl)]
        several = len(plan) > 1
        if several and self.answer_file is not None and PLACEHOLDER not in str(self.answer_file):
            raise GenError(f"--answer-file {self.answer_file} needs {PLACEHOLDER} when several "
                           f"implementations answer (one file each), e.g. runs/ea-{PLACEHOLDER}.jsonl")
        return [Member(label, replace(self, method=method, mask_impl=impl, with_baseline=False,
                                      profile=self.profile and method == "eagle",
                                      model_id=self._member_model_id(label, method, several),
                                      answer_file=self._member_answer_file(label, method, several)))
                for label, method, impl in plan]

    def _member_model_id(self, label: str, method: str, several: bool) -> str:
        if self.model_id is None:
            return f"ea-{label}" if method == "eagle" else BASELINE
        if PLACEHOLDER in self.model_id:
            return self.model_id.replace(PLACEHOLDER, label)
        return f"{self.model_id}-{label}" if several else self.model_id

    def _member_answer_file(self, label: str, method: str, several: bool) -> Path:
        if self.answer_file is None:
            model_id = self._member_model_id(label, method, several)
            return Path("data") / self.bench_name / "model_answer" / f"{model_id}.jsonl"
        return Path(str(self.answer_file).replace(PLACEHOLDER, label))

    def _check_numbers(self) -> None:
        positive = ("max_new_token", "total_token", "depth", "top_k", "num_choices", "max_length")
        for name in positive:
            if getattr(self, name) < 1:
                raise GenError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("sample_top_k", "warmup", "question_begin", "question_end", "seed"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise GenError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.temperature < 0:
            raise GenError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:
            raise GenError(f"--top-p must be in [0, 1], got {self.top_p}")

    def _check_choices(self) -> None:
        from eagle.config import ConfigError, TreeConfig
        from eagle.presets import PRESETS
        from eagle.tree.masks import MASK_IMPLS

        if self.method not in METHODS:
            raise GenError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.dtype not in DTYPES:
            raise GenError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        unknown = [name for name in self.mask_impls if name not in MASK_IMPLS]
        if unknown:
            raise GenError(f"unknown --mask-impl {', '.join(map(repr, unknown))}; registered: "
                           f"{', '.join(MASK_IMPLS)} (several: comma separated, e.g. rebuild,vectorized)")
        if self.with_baseline and not self.drafts:
            raise GenError("--with-baseline belongs to the EAGLE generator (the baseline generator "
                           "answers with plain decoding alone)")
        if self.cuda_graph not in (None, "on", "off"):
            raise GenError(f"--cuda-graph must be on or off, got {self.cuda_graph!r}")
        if self.cuda_graph == "on" and self.device == "cpu":
            raise GenError("--cuda-graph on needs a CUDA device; use --cuda-graph off with --device cpu")
        if self.preset is not None and self.preset not in PRESETS:
            raise GenError(f"unknown preset {self.preset!r} in --base-model-path; "
                           f"choose preset:{' or preset:'.join(PRESETS)}")
        try:
            TreeConfig(self.total_token, self.depth, self.top_k)
        except ConfigError as exc:
            raise GenError(f"--total-token/--depth/--top-k: {exc}") from None

    def _check_paths(self) -> None:
        if self.preset is not None and not self.tokenizer_path:
            raise GenError("a preset has no tokenizer: pass --tokenizer-path DIR (a tokenizer with a "
                           "Llama-3 chat template, e.g. the tiny checkpoint's base directory)")
        if self.preset is None and not Path(self.base_model_path).is_dir():
            raise GenError(f"--base-model-path {self.base_model_path} is not a directory "
                           f"(or use preset:NAME for random weights)")
        if self.preset is None and self.drafts and not self.ea_model_path:
            raise GenError("--ea-model-path DIR is needed: the EAGLE-3 head to draft with")
        if self.preset is None and self.ea_model_path and not Path(self.ea_model_path).is_dir():
            raise GenError(f"--ea-model-path {self.ea_model_path} is not a directory"
                           + ("" if self.drafts else " (the baseline does not load it: "
                              "leave the option out)"))
        if self.tokenizer_path and not Path(self.tokenizer_path).is_dir():
            raise GenError(f"--tokenizer-path {self.tokenizer_path} is not a directory")
        if not self.question_file.is_file():
            raise GenError(f"no question file {self.question_file}; obtain it with "
                           f"`eagle-mt-bench-data` (or pass --question-file PATH)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str, paths: bool = True) -> "GenConfig":
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["question_file"] = args.question_file or Path("data") / args.bench_name / "question.jsonl"
        return cls(method=method, **values).validate(paths)


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
    g.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                   help="attention kernel for every forward (default: auto = the engine's Triton "
                        "kernel on CUDA with triton, else SDPA's efficient backend, both reproducing "
                        "bit for bit; torch's choice on the CPU); a named SDPA backend is pinned "
                        "for every attention; recorded in the settings with the kernel that ran")
    g.add_argument("--cuda-graph", choices=("on", "off"), default=None,
                   help="replay each greedy decoding step as CUDA graphs, captured once per model "
                        "and tree configuration before the first prompt (default: on with CUDA, "
                        "off on the CPU); sampling (--temperature > 0) runs eager either way")


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
    parser.set_defaults(mask_impl="rebuild", profile=False, with_baseline=False)
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

    from .preflight import check_runtime

    try:
        check_runtime(GenConfig.from_args(args, "eagle", paths=False))
    except (GenError, ConfigError, MaskImplUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


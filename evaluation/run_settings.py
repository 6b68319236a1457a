"""The settings of a generator run, resolved once: the command's config (`GenConfig`, validated on
construction by the command line), who answers (`Member`), and what every answer line records about
the run (`RunSettings`), with the error type a user's setting raises (`GenError`).

Nothing heavy is imported at module level (the command line's `--help` stays instant); the checks
that need the engine's registries import them when they run.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, Optional

METHODS = ("eagle", "baseline")
DTYPES = ("auto", "float32", "float16", "bfloat16")
PRESET_PREFIX = "preset:"
PLACEHOLDER = "{impl}"  # in --answer-file / --model-id: the member's label (rebuild, rebuild-2, baseline)
BASELINE = "baseline"
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C
# MT-Bench's own sampling temperatures per question category (FastChat llm_judge, common.py
# `temperature_config`); every other category (extraction, math, coding, reasoning) is greedy.
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}

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
    mt_bench_temperatures: bool = False  # the temperature of each question's category instead
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

    def temperature_for(self, category: str) -> float:
        """The temperature a question of `category` is answered at."""
        if self.mt_bench_temperatures:
            return MT_BENCH_TEMPERATURES.get(category, 0.0)
        return self.temperature

    @property
    def temperature_by_category(self) -> Optional[dict[str, float]]:
        """What the settings record of --mt-bench-temperatures: category -> temperature, the
        categories not named being greedy; None without the option."""
        return dict(MT_BENCH_TEMPERATURES) if self.mt_bench_temperatures else None

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
        if self.mt_bench_temperatures and self.temperature > 0:
            raise GenError("--mt-bench-temperatures sets the temperature per question category: "
                           "leave out --temperature")
        if not 0.0 <= self.top_p <= 1.0:
            raise GenError(f"--top-p must be in [0, 1], got {self.top_p}")

    def _check_choices(self) -> None:
        from eagle.backend import ATTENTION_BACKENDS
        from eagle.config import ConfigError, TreeConfig
        from eagle.presets import PRESETS
        from eagle.tree.masks import MASK_IMPLS, known_mask_impl

        if self.method not in METHODS:
            raise GenError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.dtype not in DTYPES:
            raise GenError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        unknown = [name for name in self.mask_impls if not known_mask_impl(name)]
        if unknown:
            raise GenError(f"unknown --mask-impl {', '.join(map(repr, unknown))}; registered: "
                           f"{', '.join(MASK_IMPLS)} (several: comma separated, e.g. rebuild,vectorized)")
        if self.attention_backend != "auto" and self.attention_backend not in ATTENTION_BACKENDS:
            raise GenError(f"--attention-backend must be auto or one of "
                           f"{', '.join(ATTENTION_BACKENDS)}, got {self.attention_backend!r}")
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


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's outputs or timings, and the code that ran it; each answer
    line carries it as `settings` (`to_dict`), resume and comparison read it back (`from_dict`) and
    compare by equality. A key a file lacks (written before the key existed) reads as None; keys
    this version does not know are kept in `extra`, so that a file's settings round-trip."""
    method: str
    mask_impl: Optional[str]  # None for the baseline
    base_model: str  # resolved directory, or "preset:NAME"
    draft_model: Optional[str]  # resolved directory, "preset", or None for the baseline
    tokenizer: Optional[str]
    preset: Optional[str]
    dtype: str
    total_token: int
    depth: int
    top_k: int
    temperature: float
    temperature_by_category: Optional[dict]  # --mt-bench-temperatures (others 0); else None
    top_p: float
    sample_top_k: int
    max_new_token: int
    max_length: int
    attention_backend: str  # as asked (--attention-backend)
    attention_kernel: str  # what ran
    cuda_graph: str
    kernels: str  # the model's kernel path: "fused (triton)" or "torch"
    eagle_blas: Optional[str]  # the BLAS library EAGLE steps prefer; None for the baseline
    num_choices: int
    seed: int
    chat: str
    device: str
    device_name: str
    torch: str
    transformers: str
    eagle: str
    python: str
    code: dict  # code_version.code_identity()
    machine: Optional[dict] = dataclasses.field(default=None, compare=False)  # load: no output
    extra: dict = dataclasses.field(default_factory=dict)  # keys this version does not know

    @classmethod
    def known_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.known_keys()}, **self.extra}

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> "RunSettings":
        known = cls.known_keys()
        return cls(**{k: settings.get(k) for k in known},
                   extra={k: v for k, v in settings.items() if k not in known})

    def get(self, key: str) -> Any:
        """The value of a key as the answer file writes it (None when absent)."""
        return self.to_dict().get(key)

    def differences(self, other: "RunSettings", ignore: frozenset = frozenset()) -> list[str]:
        """Keys whose values differ (or that one side only has), sorted, except those in `ignore`
        and the machine's state, which decides no output."""
        mine, theirs = self.to_dict(), other.to_dict()
        ignore = ignore | {"machine"}
        return sorted(k for k in set(mine) | set(theirs)
                      if k not in ignore and mine.get(k) != theirs.get(k))

    def with_code(self, code: dict) -> "RunSettings":
        return replace(self, code=code)


def samples(settings: dict) -> bool:
    """Whether a run's answers (some or all) were sampled rather than greedy."""
    by_category = settings.get("temperature_by_category") or {}
    return bool(settings.get("temperature")) or any(t > 0 for t in by_category.values())


def temperature_text(settings: dict) -> str:
    """How a run's temperature reads in a report: a number, or MT-Bench's per-category values."""
    by_category = settings.get("temperature_by_category")
    if by_category:
        return "per category: " + ", ".join(f"{c} {t}" for c, t in by_category.items()) + ", others 0"
    return f"temperature {settings.get('temperature')}"


def settings_differences(a: dict, b: dict) -> list[str]:
    """The keys in which two answer lines' `settings` differ (RunSettings.differences)."""
    return RunSettings.from_dict(a).differences(RunSettings.from_dict(b))

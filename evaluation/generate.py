"""MT-Bench answer generation: one loop for EAGLE-3 (`generate`) and the baseline (`naive_generate`).

Each turn is a Llama-3 chat prompt (the tokenizer's chat template, upstream's system prompt, earlier
turns and answers as history); its wall time is measured around the generate call with the device
synchronised on both sides. Token counts come from the generated ids themselves, the same way for
both methods, and the ids are stored so that `speed.py` can audit equivalence.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import platform
import time
from pathlib import Path
from typing import Optional

import shortuuid
import torch
from tqdm import tqdm

from eagle.ea_model import resolve_device as eagle_device
from eagle.llama import attention_backend, resolve_attention
from eagle.profiling import ProfileReport

from .answers import AnswerWriter, add_turn, answered_ids, iter_lines, new_choice, sort_and_dedup
from .atomic import write_atomic
from .gen_cli import GenConfig, GenError

log = logging.getLogger(__name__)

# upstream EAGLE gen_ea_answer_llama3chat.py (the double space is theirs)
SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, "
    "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased "
    "and positive in nature.\n\nIf a question does not make any sense, or is not factually "
    "coherent, explain why instead of answering something not correct. If you don't know the answer "
    "to a question, please don't share false information.")


def load_questions(path: Path, begin: Optional[int], end: Optional[int]) -> list[dict]:
    """The questions[begin:end] of a FastChat question file, each checked for the fields we use."""
    questions = []
    for number, obj in iter_lines(path):
        missing = [k for k in ("question_id", "category", "turns") if k not in obj]
        if missing:
            raise GenError(f"{path}:{number}: question lacks {', '.join(missing)}")
        questions.append(obj)
    selected = questions[begin:end]
    if not selected:
        raise GenError(f"no questions in {path}[{begin}:{end}] ({len(questions)} in the file); "
                       f"check --question-begin/--question-end")
    return selected


def resolve_device(name: str) -> torch.device:
    try:
        return eagle_device(name)
    except ValueError as exc:
        raise GenError(f"--device {name}: {exc}") from exc


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (Linux) / architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "cpu"


def load_model(cfg: GenConfig, device: torch.device, dtype: torch.dtype):
    """An `EaModel` from checkpoints (`from_pretrained`) or a random-weight preset, with a tokenizer.
    The baseline loads the base model alone: the draft head would only take memory and load time."""
    from transformers import AutoTokenizer

    from eagle import EaModel, TreeConfig
    from eagle.presets import build_random

    tree = TreeConfig(cfg.total_token, cfg.depth, cfg.top_k)
    if cfg.preset is not None:
        base, head = build_random(cfg.preset, dtype, device, cfg.seed, cfg.drafts)
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_path)
        return EaModel(base, head, tree, cfg.mask_impl, tokenizer, cfg.max_length,
                       cuda_graph=cfg.graphs_on(device), attention=cfg.attention_backend)
    return EaModel.from_pretrained(cfg.base_model_path, cfg.ea_model_path if cfg.drafts else None,
                                   cfg.total_token, cfg.depth, cfg.top_k, torch_dtype=dtype,
                                   device_map=device, mask_impl=cfg.mask_impl,
                                   max_length=cfg.max_length, tokenizer_path=cfg.tokenizer_path,
                                   cuda_graph=cfg.graphs_on(device), attention=cfg.attention_backend)


def check_attention_backend(model, cfg: GenConfig) -> None:
    """Refuse a pinned backend that cannot run the engine's attention here, before any answer."""
    w = model.base.lm_head.weight
    if resolve_attention(cfg.attention_backend, w.device) is None:
        return
    q = torch.zeros(1, 2, 3, model.base.args.head_dim, device=w.device, dtype=w.dtype)  # [1, H, S, D]
    k = torch.zeros(1, 2, 5, model.base.args.head_dim, device=w.device, dtype=w.dtype)
    mask = torch.zeros(3, 5, device=w.device, dtype=w.dtype)  # an additive bias, like the engine's
    try:
        with attention_backend(cfg.attention_backend, w.device):
            torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise GenError(f"--attention-backend {cfg.attention_backend} cannot run the engine's "
                       f"attention on {w.device.type} in {str(w.dtype).removeprefix('torch.')} "
                       f"({reason}); choose auto or another backend") from None


def check_tokenizer(model, cfg: GenConfig) -> None:
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise GenError(f"the tokenizer of {cfg.tokenizer_path or cfg.base_model_path} has no chat "
                       f"template; pass --tokenizer-path DIR with a Llama-3 chat template")
    vocab = model.base.args.vocab_size
    if len(tokenizer) > vocab:
        raise GenError(f"the tokenizer of {cfg.tokenizer_path or cfg.base_model_path} has "
                       f"{len(tokenizer)} tokens, more than the model's vocabulary ({vocab}); "
                       f"use a tokenizer whose ids fit the model")
    if vocab > len(tokenizer):
        log.warning("model vocabulary (%d) exceeds the tokenizer's (%d): ids beyond it are left out "
                    "of the answer text (token_ids keep them)", vocab, len(tokenizer))


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree, not installed
        return None


def run_settings(cfg: GenConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Everything that decides the outputs or the timings; travels with every answer line."""
    import transformers

    def where(path: Optional[str]) -> Optional[str]:
        return str(Path(path).resolve()) if path else None

    return {
        "method": cfg.method,
        "mask_impl": cfg.mask_impl if cfg.drafts else None,
        "base_model": cfg.base_model_path if cfg.preset else where(cfg.base_model_path),
        "draft_model": ("preset" if cfg.preset else where(cfg.ea_model_path)) if cfg.drafts else None,
        "tokenizer": where(cfg.tokenizer_path or cfg.base_model_path),  # a preset always names one
        "preset": cfg.preset,
        "dtype": str(dtype).removeprefix("torch."),
        "total_token": cfg.total_token, "depth": cfg.depth, "top_k": cfg.top_k,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "sample_top_k": cfg.sample_top_k,
        "max_new_token": cfg.max_new_token, "max_length": cfg.max_length,
        "attention_backend": cfg.attention_backend,
        "attention_kernel": resolve_attention(cfg.attention_backend, device) or "torch default",
        "cuda_graph": graph_setting(cfg, device),
        "num_choices": cfg.num_choices, "seed": cfg.seed, "chat": "llama3",
        "device": device.type, "device_name": device_name(device),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "eagle": package_version("eagle-mask-bench"), "python": platform.python_version(),
    }


def graph_setting(cfg: GenConfig, device: torch.device) -> str:
    if not cfg.graphs_on(device):
        return "off"
    return "on (greedy steps; sampling runs eager)" if cfg.temperature > 0 else "on"


def answer_text(tokenizer, ids: list[int], stop_ids: frozenset) -> str:
    """The reply text: ids before the first stop token, special tokens dropped, stripped."""
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    known = [t for t in ids[:cut] if t < len(tokenizer)]
    return tokenizer.decode(known, skip_special_tokens=True, spaces_between_special_tokens=False).strip()


class Answerer:
    """Answers questions with one loaded model: chat prompts, timed generation, per-turn statistics."""

    def __init__(self, model, cfg: GenConfig, settings: dict):
        self.model, self.cfg, self.settings = model, cfg, settings
        self.tokenizer = model.tokenizer

    def _prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer([prompt], add_special_tokens=False).input_ids
        return torch.tensor(ids, device=self.model.device)  # [1, n]

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _generate(self, input_ids: torch.Tensor, seed: int):
        c = self.cfg
        kwargs = dict(temperature=c.temperature, top_p=c.top_p, top_k=c.sample_top_k,
                      max_new_tokens=c.max_new_token, seed=seed)
        self._sync()
        start = time.perf_counter()
        if c.drafts:
            result = self.model.generate(input_ids, profile=c.profile, **kwargs)
        else:
            result = self.model.naive_generate(input_ids, **kwargs)
        self._sync()
        return result, time.perf_counter() - start

    def choice(self, question: dict, index: int):
        """One answer to every turn of a question: (choice dict, merged profile or None)."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        out = new_choice(index)
        profile = None
        for user_turn in question["turns"]:
            messages.append({"role": "user", "content": user_turn})
            result, seconds = self._generate(self._prompt_ids(messages), self.cfg.seed + index)
            text = answer_text(self.tokenizer, result.new_token_ids, self.model.stop_ids)
            messages.append({"role": "assistant", "content": text})
            add_turn(out, text, result.new_token_ids, result.accept_lengths, seconds, self.cfg.drafts)
            if result.profile is not None:
                profile = result.profile if profile is None else profile.merge(result.profile)
        return out, profile

    def answer(self, question: dict) -> dict:
        choices, profiles = zip(*(self.choice(question, i) for i in range(self.cfg.num_choices)))
        line = {"question_id": question["question_id"], "answer_id": shortuuid.uuid(),
                "model_id": self.cfg.model_id, "tstamp": time.time(),
                "category": question["category"], "choices": list(choices), "settings": self.settings}
        if self.cfg.profile:
            line["profile"] = functools.reduce(ProfileReport.merge, profiles).to_dict()
        return line


def profile_path(answer_file: Path) -> Path:
    return answer_file.with_name(answer_file.name + ".profile.json")


def write_profile_report(answer_file: Path, settings: dict) -> None:
    """Merge the per-answer profiles of the whole file into ANSWER_FILE.profile.json and log it."""
    reports = [ProfileReport.from_dict(obj["profile"]) for _, obj in iter_lines(answer_file)
               if "profile" in obj]
    if not reports:
        return
    merged = functools.reduce(ProfileReport.merge, reports)
    path = profile_path(answer_file)
    report = {"answers": len(reports), "settings": settings, **merged.to_dict()}
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
    log.info("step profile over %d answers (%s):\n%s", len(reports), path, merged.table())


def generate_answers(cfg: GenConfig) -> int:
    """Answer every selected question not yet in the answer file; returns the file's answer count."""
    questions = load_questions(cfg.question_file, cfg.question_begin, cfg.question_end)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    settings = run_settings(cfg, device, dtype)
    done = answered_ids(cfg.answer_file, settings)  # before loading: a refusal costs nothing
    pending = [q for q in questions if q["question_id"] not in done]
    cached = len(questions) - len(pending)
    log.info("%s: %d questions selected (cached: %d, remaining: %d)", cfg.answer_file, len(questions),
             cached, len(pending))
    if pending:
        model = load_model(cfg, device, dtype)
        check_tokenizer(model, cfg)
        check_attention_backend(model, cfg)
        answerer = Answerer(model, cfg, settings)
        for _ in range(cfg.warmup):  # untimed: first-call allocations, kernel selection, caches
            answerer.answer(pending[0])
        with AnswerWriter(cfg.answer_file) as out:
            bar = tqdm(pending, desc=cfg.model_id, unit="question", total=len(questions), initial=cached,
                       postfix={"cached": cached})
            for question in bar:
                out.write(answerer.answer(question))
    count = sort_and_dedup(cfg.answer_file)
    log.info("%s: %d answers", cfg.answer_file, count)
    if cfg.profile:
        write_profile_report(cfg.answer_file, settings)
    return count

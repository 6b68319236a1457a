"""MT-Bench answer generation: one loop for EAGLE-3 (`generate`) and the baseline (`naive_generate`).

Each turn is a Llama-3 chat prompt (the tokenizer's chat template, upstream's system prompt, earlier
turns and answers as history); its wall time is measured around the generate call with the device
synchronised on both sides. Token counts come from the generated ids themselves, the same way for
both methods, and the ids are stored so that `speed.py` can audit equivalence.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Optional

import shortuuid
import torch

from eagle import parallel
from eagle.backend import Kernels
from eagle.config import TreeConfig
from eagle.profiling import ProfileReport

from . import machine
from .answers import add_turn, iter_lines, new_choice, sort_and_dedup
from .atomic import write_atomic
from .code_version import DISTRIBUTION, code_identity, package_version
from . import parallel_run
from .interleave import Interrupted, Runner
from .preflight import Resolved, load_tokenizer
from .run_settings import GenConfig, GenError, Member, RunSettings

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


def check_lengths(tokenizer, cfg: GenConfig, questions: list[dict]) -> None:
    """Refuse a --max-length that a conversation could outgrow: its last turn's prompt (every user
    turn, each earlier reply at most --max-new-token tokens) + the new tokens + the draft tree."""
    tree = TreeConfig(cfg.total_token, cfg.depth, cfg.top_k).step_slots if cfg.drafts else 0
    for question in questions:
        turns = question["turns"]
        messages = chat_messages(turns, [""] * (len(turns) - 1))
        need = (len(chat_prompt_ids(tokenizer, messages))
                + len(turns) * cfg.max_new_token + tree)
        if need > cfg.max_length:
            raise GenError(f"question {question['question_id']} may need {need} positions (prompts, "
                           f"{len(turns)} x --max-new-token {cfg.max_new_token}"
                           f"{f', tree {tree}' if tree else ''}), more than --max-length "
                           f"{cfg.max_length}; raise --max-length or lower --max-new-token")


def kernels_for(cfg: GenConfig) -> Kernels:
    """The kernels a member's model runs (its settings describe this same object)."""
    return Kernels(attention=cfg.attention_backend)


def load_model(cfg: GenConfig, resolved: Resolved, tokenizer):
    """An `EaModel` from checkpoints (their configs as `resolve` read them) or a random-weight
    preset, for one member's config; under torchrun, this rank's shard of the base. The baseline
    loads the base model alone: the draft head would only take memory and load time."""
    from eagle import EaModel
    from eagle.checkpoint import load_base, load_draft
    from eagle.parallel import build_random

    (device, dtype), configs = resolved.runtime, resolved.checkpoints
    if cfg.preset is not None:
        base, head = build_random(cfg.preset, dtype, device, cfg.seed, cfg.drafts)
    else:
        base = load_base(Path(cfg.base_model_path), dtype, device, parallel.current(), configs.base)
        head = load_draft(Path(cfg.ea_model_path), dtype, device, base.model.embed_tokens.weight,
                          configs.head) if cfg.drafts else None
    return EaModel(base, head, TreeConfig(cfg.total_token, cfg.depth, cfg.top_k), cfg.mask_impl,
                   tokenizer, cfg.max_length, cuda_graph=cfg.graphs_on(device),
                   kernels=kernels_for(cfg))


def member_model(model, cfg: GenConfig, device: torch.device):
    """An `EaModel` for one member over the loaded weights: its own mask implementation, draft
    cache, step buffers and captured graphs, the base and head modules (and the base's KV cache)
    shared (the model is loaded once); every member gets a new one, so that an A/A control is built
    exactly as an A/B pair is."""
    from eagle import EaModel

    head = model.head if cfg.drafts else None
    return EaModel(model.base, head, model.tree, cfg.mask_impl, model.tokenizer, model.max_length,
                   cuda_graph=cfg.graphs_on(device), kernels=kernels_for(cfg))


def resolve_settings(cfg: GenConfig, resolved: Resolved) -> RunSettings:
    """Everything that decides the outputs or the timings, and the code that wrote them; travels
    with every answer line."""
    import transformers

    device, dtype = resolved.runtime
    kernels = kernels_for(cfg)

    def where(path: Optional[str]) -> Optional[str]:
        return str(Path(path).resolve()) if path else None

    return RunSettings.from_dict({
        "method": cfg.method,
        "mask_impl": cfg.mask_impl if cfg.drafts else None,
        "base_model": cfg.base_model_path if cfg.preset else where(cfg.base_model_path),
        "draft_model": ("preset" if cfg.preset else where(cfg.ea_model_path)) if cfg.drafts else None,
        "tokenizer": where(cfg.tokenizer_path or cfg.base_model_path),  # a preset always names one
        "preset": cfg.preset,
        "dtype": str(dtype).removeprefix("torch."),
        "total_token": cfg.total_token, "depth": cfg.depth, "top_k": cfg.top_k,
        "temperature": cfg.temperature, "temperature_by_category": cfg.temperature_by_category,
        "top_p": cfg.top_p, "sample_top_k": cfg.sample_top_k,
        "max_new_token": cfg.max_new_token, "max_length": cfg.max_length,
        "attention_backend": cfg.attention_backend,
        "attention_kernel": kernels.resolve_attention(device) or "torch default",
        "cuda_graph": graph_setting(cfg, device),
        "kernels": kernels.describe(device),
        "eagle_blas": kernels.eagle_blas_label(device) if cfg.drafts else None,
        "num_choices": cfg.num_choices, "seed": cfg.seed,
        "chat": chat_template_name(Path(cfg.tokenizer_path or cfg.base_model_path)),
        "device": device.type, "device_name": resolved.device_name,
        "tp_world_size": parallel.world_size(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "eagle": package_version(DISTRIBUTION), "python": platform.python_version(),
        "code": code_identity(), machine.KEY: machine.capture(),
    })


def graph_setting(cfg: GenConfig, device: torch.device) -> str:
    """"on" or "off": with graphs on, greedy and sampling steps alike replay them."""
    return "on" if cfg.graphs_on(device) else "off"


def answer_text(tokenizer, ids: list[int], stop_ids: frozenset) -> str:
    """The reply text: ids before the first stop token, special tokens dropped, stripped."""
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    known = [t for t in ids[:cut] if t < len(tokenizer)]
    return tokenizer.decode(known, skip_special_tokens=True, spaces_between_special_tokens=False).strip()


def chat_template_name(tokenizer_dir: Path) -> str:
    """Which chat template the prompts follow (always the tokenizer's own): "llama3" for Llama-3's
    header tokens, else "chatml" or the template's sha256 prefix; "none" without one."""
    try:
        template = json.loads((tokenizer_dir / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return "none"
    if not isinstance(template, str):
        return "none"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<|im_start|>" in template:
        return "chatml"
    return "sha256:" + hashlib.sha256(template.encode()).hexdigest()[:12]


def chat_messages(user_turns: list[str], replies: list[str]) -> list[dict]:
    """The chat of a turn: the system prompt, each earlier user turn and its reply (the answer's
    text), then this turn's user message (`user_turns` ends with it)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for user, reply in zip(user_turns[:-1], replies):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages + [{"role": "user", "content": user_turns[-1]}]


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The ids a turn's generation starts from: the chat template with the assistant header."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(prompt, add_special_tokens=False).input_ids


class Answerer:
    """Answers questions with one loaded model: chat prompts, timed generation, per-turn statistics."""

    def __init__(self, model, cfg: GenConfig, settings: RunSettings):
        self.model, self.cfg, self.settings = model, cfg, settings
        self.tokenizer = model.tokenizer

    def _prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        ids = chat_prompt_ids(self.tokenizer, messages)
        return torch.tensor([ids], device=self.model.device)  # [1, n]

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _generate(self, input_ids: torch.Tensor, seed: int, temperature: float):
        c = self.cfg
        kwargs = dict(temperature=temperature, top_p=c.top_p, top_k=c.sample_top_k,
                      max_new_tokens=c.max_new_token, seed=seed)
        self._sync()
        start = time.perf_counter()
        if c.drafts:
            result = self.model.generate(input_ids, profile=c.profile, **kwargs)
        else:
            result = self.model.naive_generate(input_ids, **kwargs)
        self._sync()
        return result, time.perf_counter() - start

    def conversations(self, question: dict) -> list["Conversation"]:
        """One conversation per choice, each to be given the question's turns in order."""
        return [Conversation(self, i, question["category"]) for i in range(self.cfg.num_choices)]

    def choice(self, question: dict, index: int):
        """One answer to every turn of a question: (choice dict, merged profile or None)."""
        talk = Conversation(self, index, question["category"])
        for user_turn in question["turns"]:
            talk.turn(user_turn)
        return talk.out, talk.profile

    def record(self, question: dict, talks: list["Conversation"]) -> dict:
        """The answer line of a question whose conversations have taken every turn."""
        line = {"question_id": question["question_id"], "answer_id": shortuuid.uuid(),
                "model_id": self.cfg.model_id, "tstamp": time.time(),
                "category": question["category"], "choices": [t.out for t in talks],
                "settings": machine.at_answer(self.settings.to_dict())}
        if self.cfg.profile:
            line["profile"] = functools.reduce(ProfileReport.merge, [t.profile for t in talks]).to_dict()
        return line

    def answer(self, question: dict) -> dict:
        talks = self.conversations(question)
        for user_turn in question["turns"]:
            for talk in talks:
                talk.turn(user_turn)
        return self.record(question, talks)


class Conversation:
    """One choice of one question with one answerer: the chat so far and its per-turn statistics;
    each turn follows this conversation's own earlier answers."""

    def __init__(self, answerer: Answerer, index: int, category: str):
        self.answerer, self.index = answerer, index
        self.temperature = answerer.cfg.temperature_for(category)
        self.users: list[str] = []  # the user turns so far
        self.replies: list[str] = []  # the answer's text of each earlier turn
        self.out = new_choice(index)
        self.profile: Optional[ProfileReport] = None

    def turn(self, user_turn: str) -> None:
        a = self.answerer
        self.users.append(user_turn)
        messages = chat_messages(self.users, self.replies)
        result, seconds = a._generate(a._prompt_ids(messages), a.cfg.seed + self.index,
                                      self.temperature)
        text = answer_text(a.tokenizer, result.new_token_ids, a.model.stop_ids)
        self.replies.append(text)
        add_turn(self.out, text, result.new_token_ids, result.accepted_drafts, seconds, a.cfg.drafts)
        if result.profile is not None:
            self.profile = result.profile if self.profile is None else self.profile.merge(result.profile)


def profile_path(answer_file: Path) -> Path:
    return answer_file.with_name(answer_file.name + ".profile.json")


def write_profile_report(answer_file: Path, settings: RunSettings) -> None:
    """Merge the per-answer profiles of the whole file into ANSWER_FILE.profile.json and log it."""
    reports = [ProfileReport.from_dict(obj["profile"]) for _, obj in iter_lines(answer_file)
               if "profile" in obj]
    if not reports:
        return
    merged = functools.reduce(ProfileReport.merge, reports)
    path = profile_path(answer_file)
    report = {"answers": len(reports), "settings": settings.to_dict(), **merged.to_dict()}
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
    log.info("step profile over %d answers (%s):\n%s", len(reports), path, merged.table())


def generate_answers(cfg: GenConfig) -> int:
    """Answer every selected question not yet answered by every member (the runner decides the
    order); returns the number of answers in the first member's file (every member's file holds
    the same questions once the run completes). Every check runs before the model loads."""
    questions = load_questions(cfg.question_file, cfg.question_begin, cfg.question_end)
    resolved = parallel_run.join(cfg)  # every check; under torchrun, this rank's group and device
    machine.warn_if_busy("start")
    members = cfg.members()
    runner = parallel_run.make_runner(members, [resolve_settings(m.cfg, resolved) for m in members])
    pending = runner.pending(questions)
    log.info("%s: %d questions selected, %d already answered; %s", ", ".join(map(str, runner.files)),
             len(questions), len(questions) - len(pending),
             f"answering {len(pending)} with {', '.join(runner.labels)}" if pending else "nothing to run")
    if pending:
        tokenizer = load_tokenizer(cfg, resolved)
        check_lengths(tokenizer, cfg, [q for _, q in pending])
        try:
            answer_pending(runner, members, resolved, tokenizer, pending, len(questions))
        except KeyboardInterrupt:
            raise Interrupted(runner.kept, runner.files) from None
    counts = [finish_file(seat.member, seat.settings) for seat in runner.seats] \
        if parallel_run.writes() else [0]
    machine.warn_if_busy("end")
    parallel.leave()
    return counts[0]


def answer_pending(runner: Runner, members: list[Member], resolved: Resolved, tokenizer,
                   pending: list, total: int) -> None:
    """Load the model once (with the head when any member drafts), seat every member, warm each
    one up and answer."""
    loading = next((m.cfg for m in members if m.cfg.drafts), members[0].cfg)
    model = load_model(loading, resolved, tokenizer)
    device = resolved.runtime.device
    runner.seat(lambda member, settings: Answerer(member_model(model, member.cfg, device),
                                                  member.cfg, settings))
    runner.warm_up(pending[0][1], loading.warmup)
    runner.run(pending, total)


def finish_file(member: Member, settings: RunSettings) -> int:
    """Sort and de-duplicate one member's file (the last line of a question wins); its profile."""
    path = member.cfg.answer_file
    if not path.exists():
        return 0
    count = sort_and_dedup(path)
    log.info("%s: %d answers", path, count)
    if member.cfg.profile:
        write_profile_report(path, settings)
    return count

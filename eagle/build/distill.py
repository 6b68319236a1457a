"""Self-distillation data for an EAGLE-3 head: the base writes its own prompts and answers them.

Each sample starts from the chat template up to the user turn (with no system message, the
template's own default, or the answer generator's system prompt), optionally seeded with the
opening words of a request about one of `TOPICS`; the base completes the user message by sampling,
then answers it greedily, as it decodes when benchmarked. The answers are the training targets.
No benchmark question is used anywhere. Batched transformers `generate`, fixed seeds.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

log = logging.getLogger(__name__)

TOPICS = (
    "black holes", "the French Revolution", "photosynthesis", "sourdough bread", "budget travel in "
    "Japan", "learning the guitar", "climate change", "the stock market", "machine learning",
    "quantum computing", "healthy breakfast ideas", "the Roman Empire", "writing a resume",
    "time management", "the water cycle", "electric cars", "ancient Egypt", "public speaking",
    "a birthday party", "gardening tomatoes", "the human heart", "volcanoes", "chess openings",
    "renewable energy", "job interviews", "dog training", "the solar system", "recycling",
    "coffee brewing", "meditation", "a science fiction story", "a poem about the sea",
    "Python lists", "sorting algorithms", "SQL joins", "a recursive function", "prime numbers",
    "fractions", "probability with dice", "the Pythagorean theorem", "compound interest",
    "a marketing email", "a product description", "customer complaints", "a wedding toast",
    "the causes of World War I", "Shakespeare's plays", "jazz music", "impressionist painting",
    "social media", "online privacy", "password security", "the immune system", "sleep",
    "marathon training", "vegetarian recipes", "moving to a new city", "negotiating a salary",
    "starting a small business", "the history of the internet", "bees", "ocean currents",
    "earthquakes", "the Renaissance", "philosophy of Stoicism", "the scientific method",
    "a mystery story", "a children's bedtime story", "a debate on school uniforms",
    "ethics of artificial intelligence", "the Great Wall of China", "tea ceremonies",
    "friendship", "a travel itinerary for Italy", "first aid", "JavaScript promises",
    "linear equations", "the periodic table", "DNA", "supply and demand", "inflation",
)
OPENERS = (
    "", "", "", "Explain", "Write a short essay about", "Can you help me understand",
    "Give me five tips on", "What are the main facts about", "Write a story involving",
    "Compare two views on", "Summarize what you know about", "How do I get started with",
    "Create a step-by-step plan for", "Write a function in Python related to",
    "Solve a simple problem about", "Describe", "What would happen if", "Draft a letter about",
    "List the pros and cons of", "Teach a beginner about", "Write a dialogue about",
)


@dataclass
class DistillSpec:
    samples: int = 8192
    seed: int = 0
    batch: int = 1024
    user_tokens: int = 64  # the sampled user message, at most
    answer_tokens: int = 320  # the greedy answer, at most
    temperature: float = 0.9
    top_p: float = 0.95
    time_limit_s: Optional[float] = None  # stop after the batch that passes it (logged)


@dataclass
class Samples:
    """Token ids of each conversation (prompt + answer, the stop token included) and where its
    answer starts."""

    ids: list = field(default_factory=list)  # list[list[int]]
    answer_start: list = field(default_factory=list)  # list[int]


def user_prefixes(tokenizer, system_prompt: str, spec: DistillSpec) -> list[tuple[str, str]]:
    """(system content or '' for none, user seed words) per sample, from the seed."""
    rng = random.Random(spec.seed)
    out = []
    for _ in range(spec.samples):
        system = rng.choice(("", "", system_prompt))
        opener = rng.choice(OPENERS)
        seed_words = f"{opener} {rng.choice(TOPICS)}" if opener else ""
        out.append((system, seed_words))
    return out


def template_head(tokenizer, system: str) -> str:
    """The chat template's text before a user message's content (the template's own default
    system message when `system` is '')."""
    mark = "\u0000USER\u0000"
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": mark}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return text[:text.index(mark)]


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], new: int, sample: bool,
             spec: DistillSpec) -> list[list[int]]:
    """New ids per text (left-padded batch; cut after the first stop token)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    kwargs = dict(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0) \
        if sample else dict(do_sample=False)
    out = model.generate(**enc, max_new_tokens=new, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **kwargs)
    stop = tokenizer.eos_token_id
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        rows.append(row[:row.index(stop) + 1] if stop in row else row)
    return rows


def distill(model, tokenizer, system_prompt: str, spec: DistillSpec) -> Samples:
    """Prompts written by the model, answered by it greedily; batches of `spec.batch`."""
    torch.manual_seed(spec.seed)
    prefixes = user_prefixes(tokenizer, system_prompt, spec)
    samples, start = Samples(), time.perf_counter()
    for first in range(0, len(prefixes), spec.batch):
        chunk = prefixes[first:first + spec.batch]
        heads = [template_head(tokenizer, system) + words for system, words in chunk]
        users = generate(model, tokenizer, heads, spec.user_tokens, True, spec)
        prompts = []
        for (system, words), ids in zip(chunk, users):
            text = (words + tokenizer.decode(ids, skip_special_tokens=True)).strip()
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": text or "Hello!"}]
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False,
                                                         add_generation_prompt=True))
        answers = generate(model, tokenizer, prompts, spec.answer_tokens, False, spec)
        for prompt, answer in zip(prompts, answers):
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            samples.ids.append(ids + answer)
            samples.answer_start.append(len(ids))
        elapsed = time.perf_counter() - start
        log.info("distilled %d/%d samples (%.0f s)", len(samples.ids), len(prefixes), elapsed)
        if spec.time_limit_s is not None and elapsed > spec.time_limit_s:
            log.warning("time limit %.0f s passed: stopping at %d samples", spec.time_limit_s,
                        len(samples.ids))
            break
    return samples

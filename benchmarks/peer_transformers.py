"""The vanilla reference a user would otherwise pick: transformers' own `generate` on the same weights.

Builds the random-weight preset (`eagle.presets`, the same seed as the engine's runs), hands its
tensors to transformers' `LlamaForCausalLM` (same parameter names, no copy) and decodes MT-Bench
prompts greedily, by default with a static cache, which transformers compiles (CUDA graphs) on the
first call. Prompts are built as the answer generator builds them (the tokenizer's chat template,
the same system prompt, each turn's history holding the previous answer).

Per turn it records new tokens, the wall time of the whole `generate` call (prefill included, the
device synchronised on both sides: the same definition as the answer files) and the wall time of a
one-token `generate` on the same prompt, so that decoding alone is (wall - first) / (new - 1) ms a
token. Warm-up calls (compilation) are excluded and reported.

    python -m benchmarks.peer_transformers --tokenizer checkpoints/tiny/base \\
        --question-begin 0 --question-end 10 --max-new-token 256 --out runs/peer.json
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch

from eagle.presets import PRESETS, build_random
from evaluation.atomic import write_atomic
from evaluation.generate import SYSTEM_PROMPT, answer_text, load_questions

log = logging.getLogger("peer_transformers")
T = TypeVar("T")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llama3.1-8b", choices=sorted(PRESETS))
    p.add_argument("--tokenizer", type=Path, required=True, metavar="DIR",
                   help="tokenizer with a Llama-3 chat template (e.g. the tiny base)")
    p.add_argument("--question-file", type=Path, default=Path("data/mt_bench/question.jsonl"))
    p.add_argument("--question-begin", type=int, default=0,
                   help="slice of the question file (0:10 = question ids 81-90)")
    p.add_argument("--question-end", type=int, default=10)
    p.add_argument("--max-new-token", type=int, default=256)
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--cache", default="static", choices=("static", "dynamic"),
                   help="static: transformers compiles the decoding step (default); dynamic: eager")
    p.add_argument("--seed", type=int, default=0, help="preset weight seed (the engine's default: 0)")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    return p.parse_args(argv)


def hf_llama(base):
    """transformers' `LlamaForCausalLM` holding `base`'s own tensors (assigned, not copied: an 8B
    model is not held twice)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    weight = base.lm_head.weight
    config = LlamaConfig(**base.args.to_hf_dict(torch_dtype=str(weight.dtype).removeprefix("torch.")))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(base.state_dict(), strict=True, assign=True)
    with torch.device(weight.device):  # its frequencies were built on meta above
        model.model.rotary_emb = LlamaRotaryEmbedding(config)
    return model.eval()


def hf_model(preset: str, dtype: torch.dtype, seed: int, device: torch.device):
    """transformers' Llama holding the preset's random tensors (the same seed gives the same weights)."""
    base, _ = build_random(preset, dtype, device, seed, draft=False)
    return hf_llama(base)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """(fn's result, seconds), the GPU (where there is one) synchronised on both sides."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def timed_generate(model, ids: torch.Tensor, new: int, cache: str) -> tuple[torch.Tensor, float]:
    """(new token ids, seconds) of one greedy `generate`."""
    out, seconds = timed(lambda: model.generate(ids, max_new_tokens=new, do_sample=False,
                                                cache_implementation=cache, pad_token_id=0))
    return out[0, ids.shape[1]:], seconds


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model = hf_model(args.preset, getattr(torch, args.dtype), args.seed, torch.device("cuda"))
    stop_ids = frozenset(model.generation_config.eos_token_id or [])
    questions = load_questions(args.question_file, args.question_begin, args.question_end)
    user = [{"role": "user", "content": questions[0]["turns"][0]}]
    warm = [tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                    return_dict=False)
            for chat in (user, [{"role": "system", "content": SYSTEM_PROMPT}, *user])]
    start = time.perf_counter()
    # the first static-cache call compiles; a prompt of another length recompiles once with a
    # dynamic length (else the first timed turn would); the third call checks nothing recompiles
    for ids in (*warm, warm[0]):
        timed_generate(model, ids.cuda(), args.max_new_token, args.cache)
    warmup_s = time.perf_counter() - start
    device = torch.cuda.get_device_name()
    turns = []
    for q in questions:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for t, text in enumerate(q["turns"]):
            messages.append({"role": "user", "content": text})
            ids = tok([tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)],
                      add_special_tokens=False, return_tensors="pt").input_ids.cuda()
            new_ids, seconds = timed_generate(model, ids, args.max_new_token, args.cache)
            _, first = timed_generate(model, ids, 1, args.cache)
            turns.append({"question_id": q["question_id"], "turn": t + 1, "prompt_tokens": ids.shape[1],
                          "new_tokens": int(new_ids.numel()), "wall_time": seconds, "first_token": first})
            messages.append({"role": "assistant",
                             "content": answer_text(tok, new_ids.tolist(), stop_ids)})
            log.info("question %s turn %d: %d tokens in %.3f s", q["question_id"], t + 1,
                     new_ids.numel(), seconds)
            save(args, turns, warmup_s, device, complete=False)  # a run cut short keeps its turns
    return save(args, turns, warmup_s, device, complete=True)


def save(args: argparse.Namespace, turns: list[dict], warmup_s: float, device: str,
         complete: bool) -> dict:
    """Write the report of the turns so far to --out (atomically) and return it; `complete`
    says whether every selected turn is in it."""
    report = {**summarise(args, turns, warmup_s, device), "complete": complete}
    write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def summarise(args: argparse.Namespace, turns: list[dict], warmup_s: float, device: str) -> dict:
    new = sum(t["new_tokens"] for t in turns)
    wall = sum(t["wall_time"] for t in turns)
    typical = statistics.median(t["wall_time"] / t["new_tokens"] for t in turns)
    slow = [f"question {t['question_id']} turn {t['turn']}" for t in turns
            if t["wall_time"] / t["new_tokens"] > 3 * typical]
    decode = [(t["wall_time"] - t["first_token"]) / (t["new_tokens"] - 1) for t in turns
              if t["new_tokens"] > 1]
    import transformers

    return {"what": f"transformers generate, {args.cache} cache", "preset": args.preset,
            "dtype": args.dtype, "device": device,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "max_new_token": args.max_new_token, "warmup_s": warmup_s,
            "tokens_per_s": new / wall, "ms_per_token_decode_mean": 1000 * sum(decode) / len(decode),
            "slow_turns": slow, "turns": turns}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log.error("needs a CUDA device (the reference is timed on the GPU)")
        return 2
    report = run(args)
    if report["slow_turns"]:
        log.warning("%s took over 3x the median time per token (a recompile?); tokens/s includes "
                    "them", ", ".join(report["slow_turns"]))
    log.info("%s on %s: %.2f tokens/s, decoding %.2f ms/token (warm-up %.1f s)", report["what"],
             report["device"], report["tokens_per_s"], report["ms_per_token_decode_mean"],
             report["warmup_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

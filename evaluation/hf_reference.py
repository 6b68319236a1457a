"""transformers' own greedy `generate` as the reference for an engine's MT-Bench answers.

`answer` decodes the questions with transformers' `LlamaForCausalLM`, loaded from a checkpoint
directory or straight from a GGUF file (`--gguf`, as transformers itself reads it), building each
turn's prompt as the answer generator does (the tokenizer's chat template, the same system prompt,
the earlier turn's answer text in the history). It writes one JSON line per question: per turn the
prompt ids, the new ids (stop token included) and the wall time of the `generate` call (device
synchronised; on CUDA a static cache, which transformers compiles, warmed up first).

`compare` counts the turns of an engine answer file whose token ids equal the reference's (a file
written by `answer`, or another answer file) and lists each divergence with the top-2 logits of
the model it loads at the first differing position (teacher-forced on the prompt and the common
prefix): a small gap is a near-tie.

    python -m evaluation.hf_reference answer --gguf FILE --dtype float32 --device cpu \\
        --out ref.jsonl
    python -m evaluation.hf_reference compare --engine runs/x-vectorized.jsonl \\
        --reference ref.jsonl --gguf FILE --json report.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .generate import SYSTEM_PROMPT, answer_text, load_questions

log = logging.getLogger("hf_reference")


def load_model(args: argparse.Namespace):
    """(model, tokenizer) from --gguf FILE or --base DIR, in --dtype on --device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, args.dtype)
    if args.gguf:
        where, extra = str(args.gguf.parent), {"gguf_file": args.gguf.name}
    else:
        where, extra = str(args.base), {}
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
    tok = AutoTokenizer.from_pretrained(where, **extra)
    return model.to(args.device).eval(), tok


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def greedy(model, ids: list[int], new: int, cache: Optional[str]) -> tuple[list[int], float]:
    """(new ids, seconds) of one greedy `generate` on one prompt."""
    x = torch.tensor([ids], device=model.device)
    sync(model.device)
    start = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                         do_sample=False, cache_implementation=cache,
                         pad_token_id=model.generation_config.eos_token_id)
    sync(model.device)
    return out[0, len(ids):].tolist(), time.perf_counter() - start


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def answer(args: argparse.Namespace) -> int:
    model, tok = load_model(args)
    cache = "static" if model.device.type == "cuda" else None
    eos = model.generation_config.eos_token_id
    stop_ids = frozenset(eos if isinstance(eos, list) else [eos])
    questions = load_questions(args.question_file, args.question_begin, args.question_end)
    done = {json.loads(line)["question_id"] for line in args.out.read_text().splitlines()} \
        if args.out.exists() else set()
    if cache:  # compile (and recompile once for a second length) before anything is timed
        for q in questions[:2]:
            greedy(model, prompt_ids(tok, [{"role": "user", "content": q["turns"][0]}]),
                   args.max_new_token, cache)
    with open(args.out, "a") as f:
        for q in questions:
            if q["question_id"] in done:
                continue
            messages, turns = [{"role": "system", "content": SYSTEM_PROMPT}], []
            for text in q["turns"]:
                messages.append({"role": "user", "content": text})
                ids = prompt_ids(tok, messages)
                new, seconds = greedy(model, ids, args.max_new_token, cache)
                turns.append({"prompt_ids": ids, "token_ids": new, "wall_time": seconds})
                messages.append({"role": "assistant", "content": answer_text(tok, new, stop_ids)})
            f.write(json.dumps({"question_id": q["question_id"], "category": q["category"],
                                "dtype": args.dtype, "device": str(model.device),
                                "device_name": device_label(model.device), "turns": turns}) + "\n")
            f.flush()
            log.info("question %s: %s tokens", q["question_id"],
                     "+".join(str(len(t["token_ids"])) for t in turns))
    return 0


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def read_lines(path: Path) -> dict:
    return {obj["question_id"]: obj for obj in map(json.loads, path.read_text().splitlines())}


@torch.no_grad()
def top2(model, ids: list[int]) -> dict:
    """The reference model's two best next tokens after `ids` and their logit gap."""
    logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
    values, idx = logits.topk(2)
    return {"top1": int(idx[0]), "top2": int(idx[1]), "gap": float(values[0] - values[1])}


def reference_turns(obj: dict, question: dict, tok) -> list[dict]:
    """A reference line's turns as {prompt_ids, token_ids}: written by `answer`, or an engine
    answer file's line, whose prompts are rebuilt as the answer generator built them."""
    if "turns" in obj:
        return obj["turns"]
    choice, messages, turns = obj["choices"][0], [{"role": "system", "content": SYSTEM_PROMPT}], []
    for text, ids, reply in zip(question["turns"], choice["detail"]["token_ids"], choice["turns"]):
        messages.append({"role": "user", "content": text})
        turns.append({"prompt_ids": prompt_ids(tok, messages) if tok else None, "token_ids": ids})
        messages.append({"role": "assistant", "content": reply})
    return turns


def compare(args: argparse.Namespace) -> int:
    ref, engine = read_lines(args.reference), read_lines(args.engine)
    model, tok = load_model(args) if (args.gguf or args.base) else (None, None)
    questions = {q["question_id"]: q for q in load_questions(args.question_file, None, None)}
    same, total, divergences, skipped = 0, 0, [], []
    for qid in sorted(set(ref) & set(engine)):
        eng_turns = engine[qid]["choices"][0]["detail"]["token_ids"]
        for t, (r, e) in enumerate(zip(reference_turns(ref[qid], questions[qid], tok), eng_turns)):
            if t > 0 and divergences and divergences[-1]["question_id"] == qid:
                skipped.append({"question_id": qid, "turn": t + 1,
                                "why": "an earlier turn differs, so the prompts differ"})
                continue
            total += 1
            if r["token_ids"] == e:
                same += 1
                continue
            at = next((i for i, (a, b) in enumerate(zip(r["token_ids"], e)) if a != b),
                      min(len(r["token_ids"]), len(e)))
            entry = {"question_id": qid, "turn": t + 1, "position": at,
                     "reference_token": r["token_ids"][at] if at < len(r["token_ids"]) else None,
                     "engine_token": e[at] if at < len(e) else None}
            if model is not None:
                entry.update(top2(model, r["prompt_ids"] + r["token_ids"][:at]))
            divergences.append(entry)
    report = {"turns_compared": total, "identical": same, "divergences": divergences,
              "not_compared": skipped, "questions": len(set(ref) & set(engine))}
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(f"identical: {same}/{total} turns over {report['questions']} questions; "
          f"{len(divergences)} divergences, {len(skipped)} turns not comparable")
    for d in divergences:
        print(f"  question {d['question_id']} turn {d['turn']} position {d['position']}: "
              f"reference {d['reference_token']} engine {d['engine_token']}"
              + (f", reference top-2 gap {d['gap']:.4g} ({d['top1']} vs {d['top2']})"
                 if "gap" in d else ""))
    return 0 if same == total else 1


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("answer", "compare"):
        s = sub.add_parser(name)
        src = s.add_mutually_exclusive_group(required=name == "answer")
        src.add_argument("--gguf", type=Path, metavar="FILE", help="load the GGUF file itself")
        src.add_argument("--base", type=Path, metavar="DIR", help="a checkpoint directory")
        s.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
        s.add_argument("--device", default="cpu")
    a = sub.choices["answer"]
    a.add_argument("--question-file", type=Path, default=Path("data/mt_bench/question.jsonl"))
    a.add_argument("--question-begin", type=int)
    a.add_argument("--question-end", type=int)
    a.add_argument("--max-new-token", type=int, default=256)
    a.add_argument("--out", type=Path, required=True, metavar="JSONL", help="appended; resumes")
    c = sub.choices["compare"]
    c.add_argument("--engine", type=Path, required=True, metavar="JSONL", help="an answer file")
    c.add_argument("--reference", type=Path, required=True, metavar="JSONL",
                   help="written by `answer`, or another answer file (e.g. plain decoding's)")
    c.add_argument("--question-file", type=Path, default=Path("data/mt_bench/question.jsonl"))
    c.add_argument("--json", type=Path, metavar="FILE", help="the report as JSON")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    return answer(args) if args.command == "answer" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())

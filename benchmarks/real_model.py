"""Plain decoding, EAGLE (each mask implementation) and transformers' `generate` on one real
checkpoint, turn by turn in one process.

Every turn is answered by every member on the same prompt: the chat template over the question's
turns, the second turn's history holding plain decoding's first answer, so that the members'
times pair question by question. The members' order rotates from turn to turn. Each call's wall
time includes its prefill (the answer files' definition), the device synchronised on both sides.
transformers loads the checkpoint itself (`LlamaForCausalLM.from_pretrained`) and decodes greedily
with a static cache, which it compiles on a GPU on the first calls (excluded, reported as
`warmup_s`) and runs eagerly on the CPU (the report's `hf_compiled` says which), or with its
dynamic cache (eager) under `--hf dynamic`.

The report has, per member: tokens/s, ms per token, steps and τ (accepted drafts + 1 per step), the speedup
over plain decoding (Student-t 95% CI over per-question log ratios), and how many turns decode
exactly plain decoding's tokens and exactly transformers' (with the first differing position).
`--judge REPORT` then re-scores each pair's first differing position with transformers' model of
the checkpoint (float32 on the CPU by default), as `evaluation.referee` does for answer files: a
near-tie when both tokens lie within the margin of the reference's top logit, else not a tie.

    python -m benchmarks.real_model --base checkpoints/smollm2/base --draft checkpoints/smollm2/draft \\
        --device cuda --dtype float16 --question-end 80 --out runs/smollm2-real.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from eagle.ea_model import EaModel
from eagle.tree.masks import MASK_IMPLS
from evaluation.atomic import write_atomic
from evaluation.generate import answer_text, chat_messages, chat_prompt_ids, load_questions
from evaluation.paired import t_interval

log = logging.getLogger("real_model")
PLAIN, HF = "plain", "transformers"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, metavar="DIR", help="HF Llama checkpoint")
    p.add_argument("--draft", type=Path, metavar="DIR", help="EAGLE-3 head (to run)")
    p.add_argument("--judge", type=Path, metavar="REPORT",
                   help="judge the divergences of this report instead of running; --out gets the "
                        "report with a `divergences` section")
    p.add_argument("--judge-dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--ulps", type=float, default=8.0, help="near-tie margin (see evaluation.referee)")
    p.add_argument("--mask-impls", default="rebuild,vectorized,triton",
                   help="comma-separated EAGLE members (default: rebuild,vectorized,triton)")
    p.add_argument("--hf", default="static", choices=("static", "dynamic", "off"),
                   help="transformers' cache: static (compiled on a GPU), dynamic (eager) or off")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--question-file", type=Path, default=Path("data/mt_bench/question.jsonl"))
    p.add_argument("--question-begin", type=int, default=0)
    p.add_argument("--question-end", type=int, default=80)
    p.add_argument("--max-new-token", type=int, default=256)
    p.add_argument("--tree", default="60,5,10", help="total_token,depth,top_k")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    args = p.parse_args(argv)
    args.mask_impls = [m for m in args.mask_impls.split(",") if m]
    unknown = sorted(set(args.mask_impls) - set(MASK_IMPLS))
    if args.judge is None and args.draft is None:
        p.error("--draft DIR is needed to run (or --judge REPORT to judge a run)")
    if unknown:
        p.error(f"unknown mask implementation(s) {unknown}; choose from {sorted(MASK_IMPLS)}")
    return args


def timed(fn: Callable[[], list[int]], device: torch.device) -> tuple[list[int], float]:
    """(new token ids, seconds) of one call, the device synchronised on both sides."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    ids = fn()
    sync()
    return ids, time.perf_counter() - start


class Members:
    """The decoders of one run, each a function from prompt ids to new ids, sharing one engine."""

    def __init__(self, args: argparse.Namespace):
        depth_tree = [int(x) for x in args.tree.split(",")]
        self.device = torch.device(args.device)
        dtype = getattr(torch, args.dtype)
        self.model = EaModel.from_pretrained(args.base, args.draft, *depth_tree, torch_dtype=dtype,
                                             device_map=args.device)
        self.tokenizer = self.model.get_tokenizer()
        self.steps: dict[str, tuple[int, int]] = {}  # name: (steps, accepted drafts) of its last call
        self.hf, self.warmup_s = None, 0.0
        if args.hf != "off":
            from transformers import LlamaForCausalLM

            self.hf = LlamaForCausalLM.from_pretrained(args.base, dtype=dtype).to(self.device).eval()
            self.hf_cache = args.hf
        self.names = [PLAIN, *args.mask_impls] + ([HF] if self.hf is not None else [])
        self.new = args.max_new_token

    def decode(self, name: str, ids: list[int]) -> list[int]:
        prompt = torch.tensor([ids], device=self.device)
        if name == HF:
            out = self.hf.generate(prompt, max_new_tokens=self.new, do_sample=False,
                                   cache_implementation=self.hf_cache,
                                   pad_token_id=self.tokenizer.eos_token_id)
            return out[0, len(ids):].tolist()
        if name == PLAIN:
            res = self.model.naive_generate(prompt, max_new_tokens=self.new)
        else:
            self.model.mask_impl = name
            res = self.model.generate(prompt, max_new_tokens=self.new)
        self.steps[name] = (res.steps, sum(res.accepted_drafts))
        return res.new_token_ids

    def hf_compiled(self) -> bool:
        """Whether transformers' `generate` compiled the model's call (it keeps the compiled
        call as `_compiled_call` once it has made one)."""
        return self.hf is not None and hasattr(self.hf, "_compiled_call")

    def warm_up(self, prompts: list[list[int]]) -> None:
        """One call of every member (graph capture, Triton compilation); transformers' static
        cache compiles on its first call and once more for a second prompt length."""
        start = time.perf_counter()
        for name in self.names:
            for ids in (prompts if name == HF else prompts[:1]):
                self.decode(name, ids)
        self.warmup_s = time.perf_counter() - start


def first_difference(a: list[int], b: list[int]) -> Optional[int]:
    """The first position where two token lists differ (None when equal; the shorter length when
    one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run(args: argparse.Namespace) -> dict:
    members = Members(args)
    tok, stop = members.tokenizer, members.model.stop_ids
    questions = load_questions(args.question_file, args.question_begin, args.question_end)
    first = [chat_prompt_ids(tok, chat_messages(q["turns"][:1], [])) for q in questions[:2]]
    members.warm_up(first)
    turns: list[dict] = []
    for q in questions:
        replies: list[str] = []
        for t in range(len(q["turns"])):
            ids = chat_prompt_ids(tok, chat_messages(q["turns"][: t + 1], replies))
            names = members.names[len(turns) % len(members.names):] + \
                members.names[: len(turns) % len(members.names)]
            row = {"question_id": q["question_id"], "turn": t + 1, "prompt_tokens": len(ids)}
            for name in names:
                new, seconds = timed(lambda: members.decode(name, ids), members.device)
                steps, accepted = members.steps.get(name, (None, None))
                row[name] = {"new_tokens": len(new), "seconds": seconds, "ids": new,
                             "steps": steps, "accepted_drafts": accepted}
            replies.append(answer_text(tok, row[PLAIN]["ids"], stop))
            turns.append(row)
            log.info("question %s turn %d: %s", q["question_id"], t + 1, ", ".join(
                f"{n} {row[n]['new_tokens'] / row[n]['seconds']:.0f} tok/s" for n in members.names))
            save(args, members, turns, complete=False)
    return save(args, members, turns, complete=True)


def summarise(members: Members, turns: list[dict]) -> dict:
    out = {}
    for name in members.names:
        new = sum(r[name]["new_tokens"] for r in turns)
        seconds = sum(r[name]["seconds"] for r in turns)
        entry = {"tokens_per_s": new / seconds, "ms_per_token": 1000 * seconds / new,
                 "new_tokens": new}
        if name not in (PLAIN, HF):
            steps = sum(r[name]["steps"] for r in turns)
            accepted = sum(r[name]["accepted_drafts"] for r in turns)
            entry.update(steps=steps, tau=(accepted + steps) / steps, ms_per_step=1000 * seconds / steps)
        by_q: dict[int, list[float]] = {}
        for r in turns:  # per question: log of (plain's time per token / this member's)
            rate = lambda n: r[n]["seconds"] / max(r[n]["new_tokens"], 1)  # noqa: E731
            by_q.setdefault(r["question_id"], []).append(math.log(rate(PLAIN) / rate(name)))
        entry["speedup_vs_plain"] = t_interval(np.array([np.mean(v) for v in by_q.values()]))
        for ref in (PLAIN, HF):
            if ref in members.names and ref != name:
                diffs = [first_difference(r[name]["ids"], r[ref]["ids"]) for r in turns]
                entry[f"identical_to_{ref}"] = sum(d is None for d in diffs)
                entry[f"first_difference_vs_{ref}"] = diffs
        out[name] = entry
    return out


def save(args: argparse.Namespace, members: Members, turns: list[dict], complete: bool) -> dict:
    import transformers

    device = (torch.cuda.get_device_name(members.device) if members.device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)")
    report = {"base": str(args.base), "draft": str(args.draft), "dtype": args.dtype,
              "stop_ids": sorted(members.model.stop_ids),
              "device": device, "tree": args.tree, "max_new_token": args.max_new_token,
              "hf_cache": args.hf, "hf_compiled": members.hf_compiled(), "torch": torch.__version__,
              "transformers": transformers.__version__, "warmup_s": members.warmup_s,
              "turns_done": len(turns), "complete": complete,
              "members": summarise(members, turns) if turns else {}, "turns": turns}
    write_atomic(args.out, (json.dumps(report, indent=1) + "\n").encode())
    return report


PAIRS = ((PLAIN, HF), (PLAIN, "triton"))


def judge_report(args: argparse.Namespace) -> dict:
    """The report of --judge with, for each pair of PAIRS it holds, every turn's first difference
    judged against transformers' model of --base (`evaluation.referee_judge`)."""
    from transformers import AutoTokenizer

    from evaluation.referee_judge import Divergence, judge
    from evaluation.referee_model import load_reference, next_token_logits

    report = json.loads(args.judge.read_text())
    tok = AutoTokenizer.from_pretrained(args.base)
    stop = frozenset(report.get("stop_ids") or [tok.eos_token_id])
    questions = {q["question_id"]: q for q in load_questions(args.question_file, None, None)}
    divs: list[tuple[str, Divergence]] = []
    replies: dict[int, list[str]] = {}
    for r in report["turns"]:
        q = questions[r["question_id"]]
        ids = chat_prompt_ids(tok, chat_messages(q["turns"][: r["turn"]], replies.get(q["question_id"], [])))
        if len(ids) != r["prompt_tokens"]:
            raise SystemExit(f"question {q['question_id']} turn {r['turn']}: the rebuilt prompt has "
                             f"{len(ids)} tokens, the run's had {r['prompt_tokens']}: judge with the "
                             f"run's --base and --question-file")
        replies.setdefault(q["question_id"], []).append(answer_text(tok, r[PLAIN]["ids"], stop))
        for a, b in PAIRS:
            if a not in r or b not in r:
                continue
            pos = first_difference(r[a]["ids"], r[b]["ids"])
            if pos is None or pos >= min(len(r[a]["ids"]), len(r[b]["ids"])):
                continue
            div = Divergence(r["question_id"], 0, r["turn"], pos, (r[a]["ids"][pos], r[b]["ids"][pos]))
            div.prefix = ids + r[a]["ids"][:pos]
            divs.append((f"{a} vs {b}", div))
    model = load_reference(str(args.base), torch.float32, getattr(torch, args.judge_dtype),
                           torch.device("cpu"), 0)
    with torch.inference_mode():
        logits = next_token_logits(model, [d.prefix for _, d in divs], 4096)
    out: dict[str, dict] = {}
    for (pair, div), row in zip(divs, logits):
        judge(div, row, report["dtype"], args.ulps)
        entry = out.setdefault(pair, {"divergences": 0, "near-tie": 0, "not a tie": 0,
                                      "reference_sides_with": {"A": 0, "B": 0, "neither": 0},
                                      "A_B": pair.split(" vs "), "list": []})
        entry["divergences"] += 1
        entry[div.klass] += 1
        side = "A" if div.top == div.tokens[0] else "B" if div.top == div.tokens[1] else "neither"
        entry["reference_sides_with"][side] += 1
        entry["list"].append(div.to_dict())
    return {**report, "divergences": out, "judged_with": {
        "reference": f"transformers LlamaForCausalLM({args.base}), {args.judge_dtype} on the CPU",
        "ulps": args.ulps}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.judge is not None:
        judged = judge_report(args)
        write_atomic(args.out, (json.dumps(judged, indent=1) + "\n").encode())
        for pair, entry in judged["divergences"].items():
            log.info("%s: %d divergences, %d near-ties, %d not ties; the reference's argmax is A's "
                     "token in %d, B's in %d", pair, entry["divergences"], entry["near-tie"],
                     entry["not a tie"], entry["reference_sides_with"]["A"],
                     entry["reference_sides_with"]["B"])
        return 0
    report = run(args)
    for name, m in report["members"].items():
        s = m["speedup_vs_plain"]
        ci = "" if s["ci95"] is None else f" (95% CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f})"
        log.info("%s: %.1f tokens/s, %.3fx plain%s", name, m["tokens_per_s"], s["value"], ci)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

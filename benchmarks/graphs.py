"""GPU benchmark of the static-shape engine, graphs on and off, in one process.

On the random-weight preset (default Llama-3.1-8B shapes, fp16), one random prompt: plain decoding
in ms/token, the EAGLE step in ms/step for every mask implementation, the per-segment step profile
in graph mode, the capture cost (time, memory), token-level checks (graphs vs eager, a repeat in
the same process), with `--modes ...,unfused` the same graphs over PyTorch's separate pointwise
kernels instead of the fused ones (`Kernels(fused=False)`; EAGLE's products then run on torch's default BLAS
library, as `eagle_blas` in each mode's report says) and, with --hf, transformers' `generate` with a
static cache (compiled, CUDA graphs) on the same weights.

ms/token = (wall(new tokens) - wall(1 token)) / (new - 1), the device synchronised around each
call, median of --repeat calls: the prefill cancels out. ms/step likewise divides by the steps.

    python -m benchmarks.graphs --out runs/graphs.json --hf
    python -m benchmarks.graphs --out runs/sampling.json --modes graphs --temperature 0.7
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from eagle import EaModel
from eagle.backend import Kernels
from eagle.config import TreeConfig
from eagle.presets import PRESETS, build_random
from eagle.tree.masks import MASK_IMPLS

from .peer_transformers import hf_llama, timed

log = logging.getLogger("bench_graphs")


def add_setup_args(p: argparse.ArgumentParser, new: int) -> None:
    """The random-weight setup of the GPU benchmarks: preset, dtype, prompt, new tokens, tree."""
    p.add_argument("--preset", default="llama3.1-8b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--prompt", type=int, default=200, help="prompt tokens (default: 200)")
    p.add_argument("--new", type=int, default=new, help=f"new tokens (default: {new})")
    p.add_argument("--tree", default="60,5,10", help="total_token,depth,top_k (default: 60,5,10)")
    p.add_argument("--max-length", type=int, default=4096)


def random_prompt(vocab: int, length: int, device: torch.device) -> torch.Tensor:
    """A random prompt [1, length] of ids 3.. (seed 0)."""
    return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(0)).to(device)


def random_setup(args: argparse.Namespace) -> tuple:
    """(base, head, prompt [1, --prompt], tree) on the GPU: the preset's random weights (seed 0)
    and a random prompt (seed 0)."""
    dev = torch.device("cuda")
    base, head = build_random(args.preset, getattr(torch, args.dtype), dev, seed=0)
    prompt = random_prompt(base.args.vocab_size, args.prompt, dev)
    return base, head, prompt, TreeConfig(*(int(x) for x in args.tree.split(",")))


def gpu_args(parse: Callable[[Optional[Sequence[str]]], argparse.Namespace],
             argv: Optional[Sequence[str]], logger: logging.Logger) -> Optional[argparse.Namespace]:
    """A GPU benchmark's start: logging, then its arguments; None (logged) without CUDA."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse(argv)
    if not torch.cuda.is_available():
        logger.error("needs a CUDA device")
        return None
    return args


def setup_report(args: argparse.Namespace) -> dict:
    """What a GPU benchmark's report starts with: the card, torch, the kernel path, the setup."""
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "kernels": Kernels().describe(torch.device("cuda")), "preset": args.preset,
            "dtype": args.dtype, "prompt": args.prompt, "new": args.new, "tree": args.tree}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_setup_args(p, new=128)
    p.add_argument("--repeat", type=int, default=3, help="timed calls per figure (median)")
    p.add_argument("--modes", default="graphs,eager",
                   help="comma-separated: graphs, eager, unfused (graphs on, PyTorch's separate "
                        "pointwise kernels instead of the fused ones; default: graphs,eager)")
    p.add_argument("--hf", action="store_true", help="also time transformers' static-cache generate")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="also time graph-mode EAGLE steps sampling at T (compiled, and "
                        "uncompiled) against greedy ones, interleaved in this process (default: 0, "
                        "off)")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    return p.parse_args(argv)


def per_unit_ms(run: Callable[[int], object], new: int, units: Callable[[object], int],
                repeat: int) -> tuple[float, object]:
    """Median over `repeat` of (wall(new) - wall(1)) / units(result of run(new)), in ms."""
    values, result = [], None
    for _ in range(repeat):
        result, full = timed(lambda: run(new))
        _, one = timed(lambda: run(1))
        values.append(1000 * (full - one) / units(result))
    return statistics.median(values), result


def eagle_ms(model: EaModel, prompt: torch.Tensor, args,
             **sampling) -> tuple[float, object, float]:
    """(ms/step, the last timed result, seconds of the warm-up) of EAGLE decoding with --new
    tokens (`sampling`: temperature and seed; greedy without): one warm-up call (capturing
    graphs), then `per_unit_ms` per step."""
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=args.new, **sampling)
    warm = time.perf_counter() - t0
    ms, res = per_unit_ms(lambda n: model.generate(prompt, max_new_tokens=n, **sampling), args.new,
                          lambda r: r.steps, args.repeat)
    return ms, res, warm


def bench_sampling(model: EaModel, uncompiled: EaModel, prompt: torch.Tensor, args) -> dict:
    """Graph-mode EAGLE ms/step per mask implementation: greedy and sampling at --temperature
    (seed 0) on `model` (sampling compiled, the default), and the same sampling on `uncompiled`
    (same weights, `Kernels(compile_sampling=False)`).
    After a warm-up of each, the three are timed in turn --repeat times (interleaved, so a drift
    of the card's clocks touches all three alike); each ratio is the median of the per-round
    ratios, with their range. Also whether the compiled and uncompiled sampling drew the same
    tokens (they compute one function; float rounding may part them at a near-tie)."""
    sampling = dict(temperature=args.temperature, seed=0)
    runs = {"greedy": (model, {}), "sampling": (model, sampling), "uncompiled": (uncompiled, sampling)}
    out: dict = {"temperature": args.temperature, "rounds": args.repeat}
    for impl in MASK_IMPLS:
        ms: dict = {name: [] for name in runs}
        last: dict = {}
        for m, kw in runs.values():
            m.mask_impl = impl
            m.generate(prompt, max_new_tokens=args.new, **kw)  # captures this mode's graphs
        for _ in range(args.repeat):
            for name, (m, kw) in runs.items():
                value, res = per_unit_ms(lambda n: m.generate(prompt, max_new_tokens=n, **kw),
                                         args.new, lambda r: r.steps, 1)
                ms[name].append(value)
                last[name] = res
        r = {f"{name}_ms_per_step": statistics.median(v) for name, v in ms.items()}
        for name in ("sampling", "uncompiled"):
            ratios = [x / g for x, g in zip(ms[name], ms["greedy"])]
            r[f"{name}_over_greedy"] = statistics.median(ratios)
            r[f"{name}_over_greedy_range"] = [min(ratios), max(ratios)]
        accepts = last["sampling"].accepted_drafts
        r["sampling_mean_accept"] = sum(accepts) / len(accepts)
        r["compiled_tokens_equal_uncompiled"] = (last["sampling"].new_token_ids ==
                                                 last["uncompiled"].new_token_ids)
        out[impl] = r
    return out


def bench_engine(model: EaModel, prompt: torch.Tensor, args) -> dict:
    """Plain ms/token and EAGLE ms/step per mask implementation, tokens of each run."""
    t0 = time.perf_counter()
    model.naive_generate(prompt, max_new_tokens=2)  # warm-up; captures the plain step's graphs
    out = {"warmup_plain_s": time.perf_counter() - t0}
    ms, res = per_unit_ms(lambda n: model.naive_generate(prompt, max_new_tokens=n), args.new,
                          lambda r: r.new_tokens - 1, args.repeat)
    out["plain"] = {"ms_per_token": ms, "tokens": res.new_token_ids}
    for impl in MASK_IMPLS:
        model.mask_impl = impl
        ms, res, warm = eagle_ms(model, prompt, args)
        prof = model.generate(prompt, max_new_tokens=args.new, profile=True).profile
        out[impl] = {"ms_per_step": ms, "steps": res.steps, "tokens": res.new_token_ids,
                     "mean_accept": sum(res.accepted_drafts) / len(res.accepted_drafts),
                     "warmup_s": warm, "profile": prof.to_dict()}
    stats = model.graphs.stats
    out["capture"] = {"eagle_graphs": stats.graphs, "eagle_s": stats.seconds,
                      "eagle_pool_mib": stats.pool_bytes / 2 ** 20,
                      "plain_graphs": model.plain_graphs.stats.graphs,
                      "plain_s": model.plain_graphs.stats.seconds,
                      "plain_pool_mib": model.plain_graphs.stats.pool_bytes / 2 ** 20}
    return out


def hf_static(base, prompt: torch.Tensor, args) -> dict:
    """transformers' LlamaForCausalLM on the engine's own tensors (assigned, not copied)."""
    import transformers

    hf = hf_llama(base)

    def run(n: int):
        return hf.generate(prompt, max_new_tokens=n, do_sample=False, cache_implementation="static",
                           pad_token_id=0, eos_token_id=None)

    t0 = time.perf_counter()
    run(args.new)
    run(args.new)
    warm = time.perf_counter() - t0
    ms, res = per_unit_ms(run, args.new, lambda r: r.shape[1] - prompt.shape[1] - 1, args.repeat)
    return {"ms_per_token": ms, "warmup_s": warm, "transformers": transformers.__version__,
            "tokens": res[0, prompt.shape[1]:].tolist()}


def summary(report: dict) -> str:
    lines = [f"{report['device']}, {report['preset']} {report['dtype']}, prompt {report['prompt']}, "
             f"{report['new']} new tokens, tree {report['tree']}"]
    for mode in [m for m in ("graphs", "eager", "unfused") if m in report]:
        r = report[mode]
        lines.append(f"[{mode}] plain {r['plain']['ms_per_token']:.2f} ms/token; EAGLE ms/step: " +
                     ", ".join(f"{i} {r[i]['ms_per_step']:.2f}" for i in MASK_IMPLS))
    if "sampling" in report:
        s = report["sampling"]
        lines.append(f"[graphs] EAGLE ms/step, greedy vs sampling at T = {s['temperature']} "
                     f"(compiled; uncompiled), median of {s['rounds']} interleaved rounds: " +
                     ", ".join(f"{i} {s[i]['greedy_ms_per_step']:.2f} vs "
                               f"{s[i]['sampling_ms_per_step']:.2f} "
                               f"({100 * (s[i]['sampling_over_greedy'] - 1):+.1f}%; "
                               f"{100 * (s[i]['uncompiled_over_greedy'] - 1):+.1f}%)"
                               for i in MASK_IMPLS))
    if "hf_static" in report:
        lines.append(f"transformers static-cache generate: {report['hf_static']['ms_per_token']:.2f} "
                     f"ms/token (warm-up {report['hf_static']['warmup_s']:.0f} s)")
    lines.append("checks: " + json.dumps(report["checks"]))
    if "graphs" in report:
        lines.append("capture: " + json.dumps(report["graphs"]["capture"]))
    return "\n".join(lines)


def checks(graphs: Optional[dict], eager: Optional[dict], again: dict) -> dict:
    """Token checks: a repeat in the same process (graphs on) against the graph runs, or the eager
    runs when only they ran; across the mask implementations; graphs against eager where both ran."""
    keys = ["plain", *MASK_IMPLS]
    first = graphs if graphs is not None else eager
    out = {"repeat_equal": {k: first[k]["tokens"] == again[k] for k in keys},
           "impls_equal": all(first[k]["tokens"] == first["rebuild"]["tokens"] for k in MASK_IMPLS)}
    if graphs is not None and eager is not None:
        out["graph_equals_eager"] = {k: graphs[k]["tokens"] == eager[k]["tokens"] for k in keys}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = gpu_args(parse_args, argv, log)
    if args is None:
        return 2
    dev = torch.device("cuda")
    base, head, prompt, tree = random_setup(args)
    report = setup_report(args)
    with torch.inference_mode():
        for mode, on in (("graphs", True), ("eager", False), ("unfused", True)):
            if mode not in args.modes.split(","):
                continue
            kernels = Kernels(fused=mode != "unfused")
            model = EaModel(base, head, tree, max_length=args.max_length, cuda_graph=on,
                            kernels=kernels)
            report[mode] = bench_engine(model, prompt, args)
            report[mode]["eagle_blas"] = kernels.eagle_blas_label(dev)
            log.info("%s done", mode)
        again = EaModel(base, head, tree, max_length=args.max_length, cuda_graph=True)
        if args.temperature > 0:
            uncompiled = EaModel(base, head, tree, max_length=args.max_length, cuda_graph=True,
                                 kernels=Kernels(compile_sampling=False))
            report["sampling"] = bench_sampling(again, uncompiled, prompt, args)
            del uncompiled
        repeat = {"plain": again.naive_generate(prompt, max_new_tokens=args.new).new_token_ids}
        for impl in MASK_IMPLS:
            again.mask_impl = impl
            repeat[impl] = again.generate(prompt, max_new_tokens=args.new).new_token_ids
    report["checks"] = checks(report.get("graphs"), report.get("eager"), repeat)
    if "unfused" in report and "graphs" in report:
        report["checks"]["unfused_equals_fused"] = {
            k: report["unfused"][k]["tokens"] == report["graphs"][k]["tokens"]
            for k in ("plain", *MASK_IMPLS)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")  # kept if transformers fails below
    if args.hf:
        report["hf_static"] = hf_static(base, prompt, args)
        report["checks"]["hf_equals_plain"] = report["hf_static"]["tokens"] == \
            report.get("graphs", report.get("eager", {})).get("plain", {}).get("tokens")
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))  # noqa: T201 - the script's table
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

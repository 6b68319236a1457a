"""Tensor-parallel GPU benchmark: plain decoding against its weight-read floor, with the share of
the all-reduces, and the EAGLE step per segment, on a random-weight preset sharded over the ranks.

    torchrun --standalone --nproc_per_node=2 -m benchmarks.tp --preset llama3.3-70b --out runs/tp2-70b.json
    python -m benchmarks.tp      --preset llama3.1-8b --out runs/tp1-8b.json      # one GPU, no group

Every rank builds its shard of the same weights (`eagle.parallel.build_random`) and runs the same
calls (CUDA graphs on, captured by every rank in the same order, all-reduces inside); rank 0
writes the report.
- plain ms/token: as `benchmarks.graphs` measures it (net of the prefill, median of --repeat);
- floor: the bytes a rank reads per token (its shards of the decoder layers, the replicated final
  norm and lm_head; the embedding lookup reads one row) at the copy bandwidth measured on its GPU
  (a device-to-device copy, bytes read + written per second);
- all-reduce ms/token: the 2 x layers all-reduces of one token's hidden state ([1, 1, hidden]),
  captured in one CUDA graph and replayed alone;
- EAGLE ms/step (60/5/10 by default) and its per-segment profile (`--profile`'s sections);
- whether EAGLE and plain decoding give the same tokens, and each the same with graphs off.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from .graphs import add_setup_args, eagle_ms, per_unit_ms
from eagle import EaModel, parallel
from eagle.backend import Kernels
from eagle.config import TreeConfig
from evaluation.atomic import write_atomic

log = logging.getLogger(__name__)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_setup_args(p, new=128)
    p.add_argument("--mask-impl", default="vectorized", help="tree-mask implementation (sync-free: "
                                                             "one graph a step; default: vectorized)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per figure (median)")
    p.add_argument("--copy-gib", type=float, default=4.0, help="buffer of the bandwidth copy")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    return p.parse_args(argv)


def events_ms(fn, repeat: int) -> float:
    """Mean ms of `fn()` over `repeat` calls after one warm-up, timed with CUDA events."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def copy_bandwidth(device: torch.device, gib: float) -> float:
    """Bytes read + written per second by a device-to-device copy of `gib` GiB."""
    src = torch.empty(int(gib * 2 ** 30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = events_ms(lambda: dst.copy_(src), 10)
    return 2 * src.numel() / (ms / 1000)


def read_bytes(model: EaModel) -> int:
    """Weight bytes this rank reads for one token of plain decoding (one embedding row)."""
    base = model.base
    embed = base.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in base.parameters() if p is not embed)
    return total + embed.shape[1] * embed.element_size()


def allreduce_ms(model: EaModel, repeat: int) -> float:
    """ms of one token's 2 x layers all-reduces, captured in a graph (0 alone)."""
    if parallel.current() is None:
        return 0.0
    a = model.base.args
    x = torch.zeros(1, 1, a.hidden_size, dtype=model.base.lm_head.weight.dtype, device=model.device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        dist.all_reduce(x)  # the communicator exists before the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(2 * a.num_hidden_layers):
            dist.all_reduce(x)
    return events_ms(graph.replay, repeat)


def measure(model: EaModel, prompt: torch.Tensor, args: argparse.Namespace) -> dict:
    model.naive_generate(prompt, max_new_tokens=2)  # warm-up; captures the plain step's graphs
    plain, res = per_unit_ms(lambda n: model.naive_generate(prompt, max_new_tokens=n), args.new,
                             lambda r: r.new_tokens - 1, args.repeat)
    floor = 1000 * read_bytes(model) / copy_bandwidth(model.device, args.copy_gib)
    reduce = allreduce_ms(model, 20)
    step, eagle, _ = eagle_ms(model, prompt, args)
    prof = model.generate(prompt, max_new_tokens=args.new, profile=True).profile
    eager = EaModel(model.base, model.head, model.tree, model.mask_impl, None, model.max_length,
                    cuda_graph=False)  # the same weights, no graphs
    same = {"plain": eager.naive_generate(prompt, max_new_tokens=args.new).new_token_ids ==
            res.new_token_ids,
            "eagle": eager.generate(prompt, max_new_tokens=args.new).new_token_ids ==
            eagle.new_token_ids}
    return {"graphs_match_eager": same, "plain_ms_per_token": plain, "floor_ms_per_token": floor, "plain_over_floor": plain / floor,
            "allreduce_ms_per_token": reduce, "allreduce_share": reduce / plain,
            "read_gb_per_token": read_bytes(model) / 1e9, "eagle_ms_per_step": step,
            "eagle_profile": prof.to_dict(),
            "lossless": eagle.new_token_ids == res.new_token_ids}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log.error("needs CUDA devices (one per rank)")
        return 2
    device = parallel.init_from_env(torch.device("cuda"))
    base, head = parallel.build_random(args.preset, getattr(torch, args.dtype), device, seed=0)
    model = EaModel(base, head, TreeConfig(*(int(x) for x in args.tree.split(","))),
                    args.mask_impl, None, args.max_length, cuda_graph=True)
    prompt = torch.randint(3, base.args.vocab_size, (1, args.prompt),
                           generator=torch.Generator().manual_seed(0)).to(device)
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "nccl": ".".join(map(str, torch.cuda.nccl.version())),
              "kernels": Kernels().describe(device), "tp_world_size": parallel.world_size(),
              "preset": args.preset, "dtype": args.dtype, "prompt": args.prompt, "new": args.new,
              "tree": args.tree, "mask_impl": args.mask_impl, **measure(model, prompt, args)}
    if parallel.current() is None or dist.get_rank() == 0:
        write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
        log.info("plain %.2f ms/token (floor %.2f, x%.2f; all-reduces %.2f ms, %.0f%%), EAGLE "
                 "%.2f ms/step; report in %s", report["plain_ms_per_token"],
                 report["floor_ms_per_token"], report["plain_over_floor"],
                 report["allreduce_ms_per_token"], 100 * report["allreduce_share"],
                 report["eagle_ms_per_step"], args.out)
    parallel.leave()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

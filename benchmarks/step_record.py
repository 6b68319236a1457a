"""The step against the memory floor, as one machine-readable record (JSON).

On the random-weight preset (default Llama-3.1-8B shapes), in one process: the device-to-device
copy bandwidth (a large torch copy timed with CUDA events, median; bytes read plus bytes
written per second), the floor it sets (the base model's weight bytes read once at that
bandwidth), plain decoding in ms/token and the EAGLE step in ms/step at each prompt length
(graphs on, `benchmarks.graphs`'s timing), both eager at the first prompt length, transformers'
compiled static-cache `generate` on the same weights, and the graph-mode step profile per segment
with the bytes each segment moves and the fraction of the copy bandwidth that makes.

Bytes per segment and step (weights counted once per forward that reads them; attention reads its
whole window of the KV cache, the window a step starts with):
- draft: the head's weights per draft forward (fc at the first), its norm and lm_head per top-k
  pass, the embedding rows it reads, and its KV cache at the window per forward;
- tree_mask: the tree buffers it writes; posterior: the verify logits it reads;
- verify_forward: the base's weights (of its embedding, the rows read) and its KV at the window;
- kv_update: the accepted slots' K/V gathered and scattered, all layers.

On the CPU (`--preset tiny`, a check of the record's form) graphs are off, the tree buffers are
built `vectorized`, the copy is timed with perf_counter and transformers' `generate` is not
compiled (`hf_compiled` says so); its figures are not the GPU's.

    python -m benchmarks.step_record --out docs/results/h200/step.json
    python -m benchmarks.step_record --dtype bfloat16 --out docs/results/h200/step_bf16.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from eagle import EaModel
from eagle.config import TreeConfig
from eagle.presets import PRESETS, build_random
from eagle.graphs import window_for

from .graphs import eagle_ms, hf_static, per_unit_ms, random_prompt

log = logging.getLogger("step_record")
SEGMENTS = ("draft", "tree_mask", "verify_forward", "posterior", "kv_update")
# eager profiles time finer sections inside these segments
PARTS = {"draft": ("draft", "draft_forward", "draft_select"),
         "tree_mask": ("tree_mask", "retrieve_indices")}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llama3.1-8b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--prompts", default="200,2000,6000",
                   help="prompt lengths (default: 200,2000,6000)")
    p.add_argument("--new", type=int, default=64, help="new tokens per timed call (default: 64)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per figure (median)")
    p.add_argument("--tree", default="60,5,10", help="total_token,depth,top_k (default: 60,5,10)")
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--copy-mib", type=int, default=None,
                   help="bytes of the timed copy (default: 2048 MiB on a GPU, 64 on the CPU)")
    p.add_argument("--device", default=None, help="default: cuda where there is one, else cpu")
    p.add_argument("--out", type=Path, required=True, metavar="JSON")
    return p.parse_args(argv)


def copy_tbps(device: torch.device, mib: int, repeat: int = 20) -> float:
    """Median (bytes read + bytes written) / time of copying `mib` MiB on `device`, in TB/s."""
    n = mib * 2 ** 20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = []
    for _ in range(repeat + 2):  # two warm-up copies
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            seconds.append(time.perf_counter() - t0)
    return 2 * n / statistics.median(seconds[2:]) / 1e12


def nbytes(module: Optional[nn.Module]) -> int:
    """Bytes of a module's parameters (each tensor once)."""
    return 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())


def kv_bytes(args, layers: int, window: int, element: int) -> int:
    """K and V of `layers` layers over a window of `window` slots."""
    return layers * 2 * args.num_key_value_heads * window * args.head_dim * element


def segment_bytes(model: EaModel, window: int) -> dict[str, int]:
    """Bytes each EAGLE segment moves in one step at attention window `window`."""
    base, head, tree = model.base, model.head, model.tree
    el = base.lm_head.weight.element_size()
    a, ha = base.args, head.args
    nodes, c = tree.num_nodes + 1, tree.max_depth + 1
    embed = base.model.embed_tokens.weight
    forwards = tree.depth + 1  # over the accepted tokens, then one per level
    draft_rows = c + tree.depth * tree.top_k  # token embeddings the draft forwards read
    draft = (nbytes(head.fc) + forwards * (nbytes(head.midlayer) + nbytes(head.norm) +
                                           nbytes(head.lm_head))
             + draft_rows * ha.hidden_size * el + forwards * kv_bytes(ha, 1, window, el))
    verify = (nbytes(base) - nbytes(base.model.embed_tokens) + nodes * embed.shape[1] * el
              + kv_bytes(a, a.num_hidden_layers, window, el))
    return {"draft": draft, "tree_mask": nodes * nodes + nodes * 8 + tree.num_nodes * c * 8,
            "verify_forward": verify, "posterior": nodes * a.vocab_size * el,
            "kv_update": 2 * kv_bytes(a, a.num_hidden_layers, c, el)}


def plain_bytes(model: EaModel, window: int) -> int:
    """Bytes one plain token moves: the base's weights (one embedding row), its KV at the window."""
    base, a = model.base, model.base.args
    el = base.lm_head.weight.element_size()
    return (nbytes(base) - nbytes(base.model.embed_tokens) + a.hidden_size * el
            + kv_bytes(a, a.num_hidden_layers, window, el))


def achieved(ms: float, moved: int, tbps: float) -> dict:
    """A segment's time, bytes and the fraction of the copy bandwidth they make."""
    return {"ms": ms, "bytes": moved,
            "copy_fraction": moved / (ms * 1e-3) / (tbps * 1e12) if ms > 0 else None}


def segments(model: EaModel, prompt: torch.Tensor, args: argparse.Namespace, tbps: float) -> dict:
    """The step profile per segment (one profiled generate), with bytes and bandwidth."""
    prof = model.generate(prompt, max_new_tokens=args.new, profile=True).profile
    window = window_for(prompt.shape[1] + model.tree.step_slots, model.max_length)
    moved = segment_bytes(model, window)
    out = {"window": window, "steps": prof.steps,
           "step_total_ms": prof.ms_per_step("step_total")}
    for name in SEGMENTS:
        ms = sum(prof.ms_per_step(part) for part in PARTS.get(name, (name,)))
        out[name] = achieved(ms, moved[name], tbps)
    return out


def graph_runs(model: EaModel, prompts: dict[str, torch.Tensor], args: argparse.Namespace,
               tbps: float) -> dict:
    """Plain ms/token, EAGLE ms/step and the step profile at every prompt length."""
    plain, eagle, profiles, plain_moved = {}, {}, {}, {}
    for key, prompt in prompts.items():
        model.naive_generate(prompt, max_new_tokens=2)  # warm-up (captures the plain graphs)
        plain[key], _ = per_unit_ms(lambda n: model.naive_generate(prompt, max_new_tokens=n),
                                    args.new, lambda r: r.new_tokens - 1, args.repeat)
        eagle[key], _, _ = eagle_ms(model, prompt, args)
        profiles[key] = segments(model, prompt, args, tbps)
        window = window_for(prompt.shape[1] + 1, model.max_length)
        plain_moved[key] = achieved(plain[key], plain_bytes(model, window), tbps)
        plain_moved[key]["window"] = window
        log.info("prompt %s: plain %.2f ms/token, EAGLE %.2f ms/step", key, plain[key], eagle[key])
    return {"plain_ms_per_token": plain, "eagle_ms_per_step": eagle, "segments": profiles,
            "plain_bytes": plain_moved}


def eager_runs(model: EaModel, prompt: torch.Tensor, args: argparse.Namespace) -> dict:
    """Plain ms/token and EAGLE ms/step with graphs off."""
    model.naive_generate(prompt, max_new_tokens=2)
    plain, _ = per_unit_ms(lambda n: model.naive_generate(prompt, max_new_tokens=n), args.new,
                           lambda r: r.new_tokens - 1, args.repeat)
    eagle, _, _ = eagle_ms(model, prompt, args)
    return {"eager_ms_per_token": plain, "eager_ms_per_step": eagle,
            "eager_prompt": prompt.shape[1]}


def provenance() -> dict:
    """Library versions, the engine's commit (and whether its tree had changes) and the date."""
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    repo = Path(__file__).resolve().parents[1]

    def git(*cmd: str) -> Optional[str]:
        try:
            return subprocess.run(["git", *cmd], cwd=repo, capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain")
    return {"torch": torch.__version__, "triton": triton_version,
            "transformers": transformers.__version__, "commit": git("rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def record(args: argparse.Namespace, device: torch.device) -> dict:
    """Every figure of the record, in one process."""
    cuda = device.type == "cuda"
    tbps = copy_tbps(device, args.copy_mib or (2048 if cuda else 64))
    base, head = build_random(args.preset, getattr(torch, args.dtype), device, seed=0)
    tree = TreeConfig(*(int(x) for x in args.tree.split(",")))
    mask_impl = "triton" if cuda else "vectorized"
    prompts = {str(n): random_prompt(base.args.vocab_size, int(n), device)
               for n in args.prompts.split(",")}
    out = {"gpu": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": args.dtype,
           "preset": args.preset, "tree": args.tree, "mask_impl": mask_impl, "new": args.new,
           "repeat": args.repeat, "copy_TBps": tbps, "base_weight_bytes": nbytes(base)}
    out["floor_ms"] = out["base_weight_bytes"] / (tbps * 1e12) * 1e3
    with torch.inference_mode():
        model = EaModel(base, head, tree, mask_impl, max_length=args.max_length, cuda_graph=cuda)
        out.update(graph_runs(model, prompts, args, tbps))
        eager = EaModel(base, head, tree, mask_impl, max_length=args.max_length, cuda_graph=False)
        out.update(eager_runs(eager, next(iter(prompts.values())), args))
    out["graphs"] = cuda
    hf = hf_static(base, next(iter(prompts.values())), args)
    out.update({"hf_compiled_ms_per_token": hf["ms_per_token"], "hf_compiled": cuda,
                "hf_prompt": int(next(iter(prompts))), "provenance": provenance()})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = record(args, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log.info("copy %.2f TB/s, floor %.2f ms; plain %s ms/token; EAGLE %s ms/step; eager %.2f"
             " / %.2f; transformers %.2f ms/token", report["copy_TBps"], report["floor_ms"],
             report["plain_ms_per_token"], report["eagle_ms_per_step"],
             report["eager_ms_per_token"], report["eager_ms_per_step"],
             report["hf_compiled_ms_per_token"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where does fp16 greedy decoding on a GPU stop reproducing itself? One process, 8B preset.

    python scripts/gpu_determinism_probe.py OUT.json

Checks, logging each result as it comes and rewriting OUT.json after each: a one-row `linear`
repeated and with its input at other alignments; one-query `scaled_dot_product_attention` with a
boolean mask on each backend, repeated; baseline decoding repeated, after reallocating the KV cache,
and with each attention backend forced; EAGLE decoding after reallocating both caches. Token
results are the index of the first differing token (None: identical). docs/BENCHMARKS.md §6 quotes
its output.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's `eagle`

from eagle.config import TreeConfig  # noqa: E402
from eagle.ea_model import EaModel  # noqa: E402
from eagle.presets import build_random  # noqa: E402

log = logging.getLogger("gpu_determinism_probe")
NEW_TOKENS = 96
FORCED = (("math", SDPBackend.MATH), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
          ("cudnn", SDPBackend.CUDNN_ATTENTION))


class Results:
    """Findings by name, logged and written to the JSON file as each arrives."""

    def __init__(self, path: Path):
        self.path, self.data, self.t0 = path, {}, time.time()

    def add(self, key: str, value) -> None:
        self.data[key] = value
        log.info("[%6.1fs] %s: %s", time.time() - self.t0, key, value)
        self.path.write_text(json.dumps(self.data, indent=1))


def first_div(a: list[int], b: list[int]) -> Optional[int]:
    """Index of the first differing token; the shorter length if one is a prefix; None if equal."""
    diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return diff if diff is not None or len(a) == len(b) else min(len(a), len(b))


def linear_checks(out: Results, weight: torch.Tensor, dev: torch.device) -> None:
    x = torch.randn(1, 1, 4096, device=dev, dtype=torch.float16)
    ref = F.linear(x, weight)
    out.add("linear_M1_repeat_equal", [torch.equal(ref, F.linear(x, weight)) for _ in range(5)])
    offsets = {}
    for off in (8, 16, 24, 64, 128, 1000):  # the same row read from other addresses
        buf = torch.empty(4096 + off, device=dev, dtype=torch.float16)
        moved = buf[off:off + 4096].view(1, 1, 4096)
        moved.copy_(x)
        offsets[off] = torch.equal(ref, F.linear(moved, weight))
    out.add("linear_M1_offset_equal", offsets)
    for m in (10, 60):  # draft and verify row counts
        xm = torch.randn(1, m, 4096, device=dev, dtype=torch.float16)
        r = F.linear(xm, weight)
        out.add(f"linear_M{m}_repeat_equal", [torch.equal(r, F.linear(xm, weight)) for _ in range(5)])


def sdpa_checks(out: Results, dev: torch.device) -> None:
    for n_ctx in (300, 333):
        q = torch.randn(1, 32, 1, 128, device=dev, dtype=torch.float16)  # [1, H, 1, D]
        k = torch.randn(1, 32, n_ctx, 128, device=dev, dtype=torch.float16)
        v = torch.randn(1, 32, n_ctx, 128, device=dev, dtype=torch.float16)
        mask = torch.ones(1, n_ctx, device=dev, dtype=torch.bool)
        equal = {}
        for name, backend in (("default", None),) + FORCED:
            try:
                with sdpa_kernel(backend) if backend is not None else nullcontext():
                    outs = [F.scaled_dot_product_attention(q, k, v, attn_mask=mask) for _ in range(20)]
                equal[name] = sum(torch.equal(outs[0], o) for o in outs[1:])
            except RuntimeError as exc:  # the backend cannot take these inputs
                equal[name] = f"unavailable: {str(exc)[:80]}"
        out.add(f"sdpa_q1_ctx{n_ctx}_equal_of_19", equal)


def decoding_checks(out: Results, model: EaModel, prompt: torch.Tensor, dev: torch.device) -> None:
    def naive() -> list[int]:
        return model.naive_generate(prompt, max_new_tokens=NEW_TOKENS).new_token_ids

    ref = naive()
    out.add("naive_repeat_first_div", [first_div(ref, naive()) for _ in range(2)])
    junk, divs = [], []  # junk keeps allocations alive so that new caches land elsewhere
    for i in range(3):
        junk.append(torch.empty(4096 * (i + 1) + 512, dtype=torch.uint8, device=dev))
        model.base.kv = None  # a fresh static cache at another address
        divs.append(first_div(ref, naive()))
    out.add("naive_realloc_first_div", divs)
    for name, backend in FORCED:
        try:
            with sdpa_kernel(backend):
                a = naive()
                model.base.kv = None
                junk.append(torch.empty(777, dtype=torch.uint8, device=dev))
                b = naive()
            out.add(f"naive_{name}_realloc_first_div", {"vs_self": first_div(a, b),
                                                        "vs_default": first_div(ref, a)})
        except RuntimeError as exc:
            out.add(f"naive_{name}", f"unavailable: {str(exc)[:100]}")
    eref = model.generate(prompt, max_new_tokens=NEW_TOKENS).new_token_ids
    edivs = []
    for i in range(2):
        junk.append(torch.empty(9999 + i, dtype=torch.uint8, device=dev))
        model.base.kv = None
        model.drafter.kv = None
        model.drafter.reset()
        edivs.append(first_div(eref, model.generate(prompt, max_new_tokens=NEW_TOKENS).new_token_ids))
    out.add("eagle_realloc_first_div", edivs)
    out.add("eagle_vs_naive_first_div", first_div(eref, ref))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT.json", help="where the findings go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        log.error("this probe needs a CUDA device")
        return 2
    dev = torch.device("cuda")
    out = Results(args.out)
    base, head = build_random("llama3.1-8b", torch.float16, dev, 0)
    model = EaModel(base, head, TreeConfig(60, 5, 10), "rebuild", None, 4096)
    prompt = torch.randint(0, 128000, (1, 300), generator=torch.Generator().manual_seed(1))
    b = torch.backends.cuda
    out.add("backend_flags", {"flash": b.flash_sdp_enabled(), "mem_eff": b.mem_efficient_sdp_enabled(),
                              "cudnn": b.cudnn_sdp_enabled(), "math": b.math_sdp_enabled()})
    with torch.inference_mode():
        linear_checks(out, base.model.layers[0].mlp.gate_proj.weight, dev)
        sdpa_checks(out, dev)
        decoding_checks(out, model, prompt, dev)
    out.add("done", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

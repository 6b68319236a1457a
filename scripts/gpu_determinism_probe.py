"""Where does fp16 greedy decoding on a GPU stop reproducing itself? One process, 8B preset.

    python scripts/gpu_determinism_probe.py OUT.json

Checks, printing each result as it comes and rewriting OUT.json after each: a one-row `linear`
repeated and with its input at other alignments; one-query `scaled_dot_product_attention` with a
boolean mask on each backend, repeated; baseline decoding repeated, after reallocating the KV cache,
and with each attention backend forced; EAGLE decoding after reallocating both caches. Token
results are the index of the first differing token (None: identical). docs/BENCHMARKS.md §6 quotes
its output.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from eagle.config import TreeConfig
from eagle.ea_model import EaModel
from eagle.presets import build_random

out_path = sys.argv[1]
log = {}
dev = torch.device("cuda")
t0 = time.time()


def say(key, value):
    log[key] = value
    print(f"[{time.time() - t0:6.1f}s] {key}: {value}", flush=True)
    with open(out_path, "w") as fh:
        json.dump(log, fh, indent=1)


def first_div(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


base, head = build_random("llama3.1-8b", torch.float16, dev, 0)
model = EaModel(base, head, TreeConfig(60, 5, 10), "rebuild", None, 4096)
prompt = torch.randint(0, 128000, (1, 300), generator=torch.Generator().manual_seed(1))
say("backend_flags", {"flash": torch.backends.cuda.flash_sdp_enabled(),
                      "mem_eff": torch.backends.cuda.mem_efficient_sdp_enabled(),
                      "cudnn": torch.backends.cuda.cudnn_sdp_enabled(), "math": torch.backends.cuda.math_sdp_enabled()})
N = 96

with torch.inference_mode():
    # op level: one-row linear with its input at different addresses
    W = base.model.layers[0].mlp.gate_proj.weight  # [14336, 4096]
    x = torch.randn(1, 1, 4096, device=dev, dtype=torch.float16)
    ref = F.linear(x, W)
    same = [torch.equal(ref, F.linear(x, W)) for _ in range(5)]
    offs = {}
    for off in (8, 16, 24, 64, 128, 1000):
        buf = torch.empty(4096 + off, device=dev, dtype=torch.float16)
        x2 = buf[off:off + 4096].view(1, 1, 4096)
        x2.copy_(x)
        offs[off] = torch.equal(ref, F.linear(x2, W))
    say("linear_M1_repeat_equal", same)
    say("linear_M1_offset_equal", offs)
    for m in (10, 60):
        xm = torch.randn(1, m, 4096, device=dev, dtype=torch.float16)
        r = F.linear(xm, W)
        say(f"linear_M{m}_repeat_equal", [torch.equal(r, F.linear(xm, W)) for _ in range(5)])
    # op level: SDPA with one query row, bool mask, per backend, repeated and with other key lengths
    for n_ctx in (300, 333):
        q = torch.randn(1, 32, 1, 128, device=dev, dtype=torch.float16)
        k = torch.randn(1, 32, n_ctx, 128, device=dev, dtype=torch.float16)
        v = torch.randn(1, 32, n_ctx, 128, device=dev, dtype=torch.float16)
        mask = torch.ones(1, n_ctx, device=dev, dtype=torch.bool)
        res = {}
        for name, be in (("default", None), ("math", SDPBackend.MATH), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                         ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                if be is None:
                    outs = [F.scaled_dot_product_attention(q, k, v, attn_mask=mask) for _ in range(20)]
                else:
                    with sdpa_kernel(be):
                        outs = [F.scaled_dot_product_attention(q, k, v, attn_mask=mask) for _ in range(20)]
                res[name] = sum(torch.equal(outs[0], o) for o in outs[1:])
            except RuntimeError as exc:
                res[name] = f"unavailable: {str(exc)[:80]}"
        say(f"sdpa_q1_ctx{n_ctx}_equal_of_19", res)

    # decoding level
    ref = model.naive_generate(prompt, max_new_tokens=N).new_token_ids
    say("naive_repeat_first_div", [first_div(ref, model.naive_generate(prompt, max_new_tokens=N).new_token_ids) for _ in range(2)])
    junk, divs = [], []
    for i in range(3):
        junk.append(torch.empty(4096 * (i + 1) + 512, dtype=torch.uint8, device=dev))
        model.base.kv = None  # a fresh static cache at another address
        divs.append(first_div(ref, model.naive_generate(prompt, max_new_tokens=N).new_token_ids))
    say("naive_realloc_first_div", divs)
    for name, be in (("math", SDPBackend.MATH), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                     ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(be):
                a = model.naive_generate(prompt, max_new_tokens=N).new_token_ids
                model.base.kv = None
                junk.append(torch.empty(777, dtype=torch.uint8, device=dev))
                b = model.naive_generate(prompt, max_new_tokens=N).new_token_ids
            say(f"naive_{name}_realloc_first_div", {"vs_self": first_div(a, b), "vs_default": first_div(ref, a)})
        except RuntimeError as exc:
            say(f"naive_{name}", f"unavailable: {str(exc)[:100]}")
    eref = model.generate(prompt, max_new_tokens=N).new_token_ids
    edivs = []
    for i in range(2):
        junk.append(torch.empty(9999 + i, dtype=torch.uint8, device=dev))
        model.base.kv = None
        model.drafter.kv = None
        model.drafter.reset()
        edivs.append(first_div(eref, model.generate(prompt, max_new_tokens=N).new_token_ids))
    say("eagle_realloc_first_div", edivs)
    say("eagle_vs_naive_first_div", first_div(eref, ref))
say("done", True)

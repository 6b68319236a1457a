"""Host work of eager decoding: what a plain token and an EAGLE step cost the host.

With graphs off a step on a GPU is host-bound: its time is Python, the dispatcher and kernel
launches, op by op. This counts them, per plain token and per EAGLE step (graphs off), on any
device: aten ops dispatched (a `TorchDispatchMode`, views included), Python function calls
(cProfile), Triton launches per kernel, and host microseconds (wall time, the device
synchronised around each call; on a GPU with graphs off that is the host's time).

On the CPU the default model is `llama3.1-8b-mini`, the 8B's structure (32 layers, 32 query
and 8 KV heads, the one-layer head) at a small width, so its counts are the 8B's counts.
`--fused` runs the fused path on the CPU in Triton's interpreter (triton installed,
TRITON_INTERPRET=1 set by this module before triton is imported): the same Python as on a GPU,
every launch counted, the interpreter's own time and ops left out of every figure. A Triton
launch's own host cost (a compiled kernel's, tens of microseconds or less) shows only on a GPU.

ms figures per unit = (figure(new tokens) - figure(1 token)) / units, as `benchmarks.graphs`
times them: the prefill cancels out.

    python -m benchmarks.host_overhead --fused --out runs/host_cpu.json
    python -m benchmarks.host_overhead --device cuda --preset llama3.1-8b --out runs/host_gpu.json
"""
from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from eagle import EaModel
from eagle.backend import Kernels
from eagle.config import TreeConfig
from eagle.presets import PRESETS, build_random

log = logging.getLogger("host_overhead")
TOP = 15  # rows of each table


class CPUFused(Kernels):
    """The fused path on any device (on the CPU: Triton's interpreter)."""

    def active(self, device: torch.device) -> bool:
        return self.fused


class OpCount(TorchDispatchMode):
    """Counts aten ops by name while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


class Launches:
    """Triton launches by kernel, and the seconds spent in interpreted ones (left out of the
    host time); while a launch runs in the interpreter, op counting and cProfile pause."""

    def __init__(self, interpreted: bool) -> None:
        self.interpreted = interpreted
        self.count: Counter = Counter()
        self.excluded = 0.0
        self.profiler: Optional[cProfile.Profile] = None

    def launch(self, name: str, kernel, grid) -> Callable:
        def run(*args, **kwargs):
            self.count[name] += 1
            if not self.interpreted:
                return kernel[grid](*args, **kwargs)
            t0 = time.perf_counter()
            if self.profiler is not None:
                self.profiler.disable()
            with _disable_current_modes():
                out = kernel[grid](*args, **kwargs)
            if self.profiler is not None:
                self.profiler.enable()
            self.excluded += time.perf_counter() - t0
            return out
        return run


class Counted:
    """A Triton kernel whose launches `Launches` sees."""

    def __init__(self, name: str, kernel, launches: Launches) -> None:
        self.name, self.kernel, self.launches = name, kernel, launches

    def __getitem__(self, grid) -> Callable:
        return self.launches.launch(self.name, self.kernel, grid)


@contextmanager
def counting_launches(launches: Launches, fused: bool) -> Iterator[None]:
    """Every `*_kernel` of the fused and tree Triton modules wrapped while inside (`fused`)."""
    if not fused:
        yield
        return
    from eagle import fused_triton
    from eagle.tree import triton_tree

    saved = []
    for module in (fused_triton, triton_tree):
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and hasattr(obj, "__getitem__"):
                saved.append((module, name, obj))
                setattr(module, name, Counted(name.strip("_"), obj, launches))
    try:
        yield
    finally:
        for module, name, obj in saved:
            setattr(module, name, obj)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[int], int], n: int, device: torch.device,
          launches: Launches) -> tuple[float, int]:
    """(host seconds of run(n), less interpreted launches; the units it returned)."""
    sync(device)
    launches.excluded, t0 = 0.0, time.perf_counter()
    units = run(n)
    sync(device)
    return time.perf_counter() - t0 - launches.excluded, units


def host_us(run: Callable[[int], int], new: int, device: torch.device, launches: Launches,
            repeat: int) -> float:
    """Median over `repeat` of microseconds per unit: (time(new) - time(1)) / units."""
    values = []
    for _ in range(repeat):
        full, units = timed(run, new, device, launches)
        one, _ = timed(run, 1, device, launches)
        values.append(1e6 * (full - one) / units)
    return statistics.median(values)


def profiled(run: Callable[[int], int], n: int, launches: Launches) -> tuple[int, dict]:
    """(units, cProfile's stats) of run(n)."""
    prof = cProfile.Profile()
    launches.profiler = prof
    prof.enable()
    units = run(n)
    prof.disable()
    launches.profiler = None
    return units, pstats.Stats(prof).stats


def where(key: tuple) -> str:
    file, line, func = key
    return func if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line}({func})"


def per_unit(new: Counter, one: Counter, units: int) -> dict:
    """(new - one) / units per key, largest first."""
    diff = Counter(new)
    diff.subtract(one)
    return {k: v / units for k, v in diff.most_common() if v > 0}


def top(table: dict) -> dict:
    return {k: round(v, 2) for k, v in list(table.items())[:TOP]}


def counts(run: Callable[[int], int], new: int, launches: Launches) -> dict:
    """Per unit: aten ops, Python function calls (cProfile; builtins counted apart), Triton
    launches and the functions' own time under the profiler, with the largest of each."""
    runs = {}
    for n in (new, 1):
        launches.count.clear()
        with OpCount() as mode:
            run(n)
        launched = Counter(launches.count)
        units, stats = profiled(run, n, launches)
        runs[n] = (units, mode.ops, launched, stats)
    units, ops, launched, stats = runs[new]
    _, ops1, launched1, stats1 = runs[1]
    both = (stats, stats1)
    py = [Counter({where(f): v[1] for f, v in s.items() if f[0] != "~"}) for s in both]
    builtin = [Counter({where(f): v[1] for f, v in s.items() if f[0] == "~"}) for s in both]
    own = [Counter({where(f): 1e3 * v[2] for f, v in s.items()}) for s in both]
    op_table, py_table = per_unit(ops, ops1, units), per_unit(*py, units)
    builtin_table, launch_table = per_unit(*builtin, units), per_unit(launched, launched1, units)
    return {"units": units, "aten_ops": sum(op_table.values()),
            "python_calls": sum(py_table.values()), "builtin_calls": sum(builtin_table.values()),
            "triton_launches": sum(launch_table.values()), "top_aten_ops": top(op_table),
            "top_python_calls": top(py_table), "top_builtin_calls": top(builtin_table),
            "launches": top(launch_table), "top_own_ms_profiled": top(per_unit(*own, units))}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--preset", default="llama3.1-8b-mini", choices=sorted(PRESETS))
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="default: float16 on a GPU, float32 on the CPU")
    p.add_argument("--fused", action="store_true",
                   help="on the CPU: the fused path in Triton's interpreter (the GPU's own Python)")
    p.add_argument("--mask-impl", default=None, help="default: triton on a GPU, else vectorized")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens (default: 32)")
    p.add_argument("--new", type=int, default=24, help="new tokens (default: 24)")
    p.add_argument("--tree", default="60,5,10", help="total_token,depth,top_k (default: 60,5,10)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed calls per figure (median; 0: counts only)")
    p.add_argument("--out", type=Path, default=None, metavar="JSON")
    return p.parse_args(argv)


def interpreter_ready() -> None:
    """Triton's interpreter chosen before triton is imported; SystemExit where it cannot be."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton
    except ImportError:
        raise SystemExit("--fused on the CPU needs triton (pip install triton)") from None
    if not triton.knobs.runtime.interpret:
        raise SystemExit("triton was imported before TRITON_INTERPRET=1 could be set")


def build(args: argparse.Namespace, device: torch.device) -> tuple[EaModel, torch.Tensor]:
    """The preset's random weights (seed 0) as a model with graphs off, and a random prompt."""
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    base, head = build_random(args.preset, dtype, device, seed=0)
    kernels = CPUFused() if args.fused and device.type == "cpu" else Kernels()
    mask_impl = args.mask_impl or ("triton" if device.type == "cuda" else "vectorized")
    tree = TreeConfig(*(int(x) for x in args.tree.split(",")))
    model = EaModel(base, head, tree, mask_impl, max_length=args.prompt + args.new + 256,
                    cuda_graph=False, kernels=kernels)
    prompt = torch.randint(3, base.args.vocab_size, (1, args.prompt),
                           generator=torch.Generator().manual_seed(0)).to(device)
    return model, prompt


def measure(model: EaModel, prompt: torch.Tensor, args: argparse.Namespace,
            device: torch.device, launches: Launches) -> dict:
    """Plain tokens and EAGLE steps: host microseconds, then the counts."""
    runs = {"plain": lambda n: model.naive_generate(prompt, max_new_tokens=n).steps,
            "eagle": lambda n: model.generate(prompt, max_new_tokens=n).steps}
    out = {}
    with counting_launches(launches, model.kernels.active(device)):
        for name, run in runs.items():
            run(args.new)  # warm-up: allocation, kernel compilation
            out[name] = {"host_us": host_us(run, args.new, device, launches, args.repeat)
                         if args.repeat > 0 else None, **counts(run, args.new, launches)}
    return out


def summary(report: dict) -> str:
    lines = [f"{report['machine']}: {report['preset']} {report['dtype']}, kernels "
             f"{report['kernels']}, masks {report['mask_impl']}, graphs off"]
    for name, unit in (("plain", "token"), ("eagle", "step")):
        r = report[name]
        host = "" if r["host_us"] is None else f"{r['host_us']:.0f} us host, "
        lines.append(f"[{name}] per {unit}: {host}{r['aten_ops']:.0f} aten ops, "
                     f"{r['python_calls']:.0f} Python calls (+{r['builtin_calls']:.0f} builtin), "
                     f"{r['triton_launches']:.0f} Triton launches")
        lines += [f"    {k:<28}{v:>8}" for k, v in list(r["top_aten_ops"].items())[:8]]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    interpreted = args.fused and device.type == "cpu"
    if interpreted:
        interpreter_ready()
    model, prompt = build(args, device)
    report = {"machine": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "preset": args.preset,
              "dtype": str(model.base.lm_head.weight.dtype).removeprefix("torch."),
              "kernels": model.kernels.describe(device) if not interpreted else
              "fused (triton interpreter)", "mask_impl": model.mask_impl, "prompt": args.prompt,
              "new": args.new, "tree": args.tree}
    report.update(measure(model, prompt, args, device, Launches(interpreted)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))  # noqa: T201 - the script's table
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

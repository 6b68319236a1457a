"""Per-step section timing: CUDA events on a GPU (no synchronisation inside a step), perf_counter on
the CPU. Events are resolved once, in `report()`, after generation has finished.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

TimeSection = Callable[[str], AbstractContextManager]  # opens the timing section of a name


def no_section(_name: str) -> AbstractContextManager:
    return nullcontext()


# "draft": draft forwards and selection together, one captured segment (graph-mode profiles)
SECTIONS = ("draft", "draft_forward", "draft_select", "tree_mask", "retrieve_indices", "verify_forward",
            "posterior", "kv_update", "step_total")


@dataclass
class ProfileReport:
    steps: int
    total_ms: dict[str, float]  # section -> summed milliseconds over all steps

    def ms_per_step(self, name: str) -> float:
        return self.total_ms.get(name, 0.0) / max(self.steps, 1)

    def pct_of_step(self, name: str) -> float:
        step = self.total_ms.get("step_total", 0.0)
        return 100.0 * self.total_ms.get(name, 0.0) / step if step else 0.0

    def merge(self, other: "ProfileReport") -> "ProfileReport":
        total = dict(self.total_ms)
        for k, v in other.total_ms.items():
            total[k] = total.get(k, 0.0) + v
        return ProfileReport(self.steps + other.steps, total)

    def to_dict(self) -> dict:
        names = [n for n in SECTIONS if n in self.total_ms] + sorted(set(self.total_ms) - set(SECTIONS))
        return {"steps": self.steps,
                "sections": {n: {"ms_per_step": self.ms_per_step(n), "pct_of_step": self.pct_of_step(n),
                                 "total_ms": self.total_ms[n]} for n in names}}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileReport":
        return cls(d["steps"], {k: v["total_ms"] for k, v in d["sections"].items()})

    def table(self) -> str:
        lines = [f"{'section':<20}{'ms/step':>10}{'% of step':>11}"]
        for name, row in self.to_dict()["sections"].items():
            lines.append(f"{name:<20}{row['ms_per_step']:>10.3f}{row['pct_of_step']:>10.1f}%")
        lines.append(f"({self.steps} steps)")
        return "\n".join(lines)


@dataclass
class StepProfiler:
    """`section(name)` is a context manager; a disabled profiler hands out null contexts."""

    enabled: bool = False
    cuda: bool = False
    steps: int = 0
    _cpu_ms: dict = field(default_factory=lambda: defaultdict(float))
    _events: list = field(default_factory=list)  # (name, start event, end event)

    def section(self, name: str) -> AbstractContextManager:
        if not self.enabled:
            return nullcontext()
        return self._cuda_section(name) if self.cuda else self._cpu_section(name)

    @contextmanager
    def _cpu_section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self._cpu_ms[name] += (time.perf_counter() - t0) * 1e3

    @contextmanager
    def _cuda_section(self, name: str) -> Iterator[None]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._events.append((name, start, end))

    def end_step(self) -> None:
        if self.enabled:
            self.steps += 1

    def report(self) -> ProfileReport:
        total = defaultdict(float, self._cpu_ms)
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                total[name] += start.elapsed_time(end)
        return ProfileReport(self.steps, dict(total))

"""CUDA graphs of decoding steps: attention windows, capture, replay.

A step reads and writes only preallocated buffers, so the same step function runs eagerly or is
recorded once and replayed. Attention covers a window of the KV cache: the next power of two above
what the step needs (at least MIN_WINDOW slots, at most the cache), so a graph exists per window
and per segment, all captured together before a configuration's first prefill. A sampling step
draws from a generator registered with its graphs, so one seed gives the same tokens replayed or
eager; its graphs are kept per decoding mode (`mode_of`).

An EAGLE step (`eagle/step.py`) is captured from its declared segments: the whole step as one graph
per window (`one_graph`: a sync-free mask implementation, no profiling), or each capturable
segment as its own graph, replayed segment by segment and timed, with the host part of
`rebuild`/`incremental` run eagerly between them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

import torch

from .profiling import TimeSection, no_section
from .step import EagleStep, Segment
from .verify import SamplerState

log = logging.getLogger(__name__)

MIN_WINDOW = 128  # smallest attention window; windows double up to the cache length


def window_for(need: int, max_len: int) -> int:
    """The attention window for a step that touches cache slots < need."""
    w = MIN_WINDOW
    while w < need:
        w *= 2
    return min(w, max_len)


def all_windows(max_len: int) -> list[int]:
    """Every window `window_for` can return for a cache of max_len slots."""
    out, w = [], MIN_WINDOW
    while w < max_len:
        out.append(w)
        w *= 2
    return out + [max_len]


def mode_of(sampler: Optional[SamplerState]) -> Hashable:
    """The decoding mode a captured step is specific to: None for greedy, else the sampling
    settings' shape (whether top-p applies, top-k); their values are read at replay."""
    return None if sampler is None else sampler.shape


@dataclass
class CaptureStats:
    graphs: int = 0
    seconds: float = 0.0  # warm-up and capture, device synchronised
    pool_bytes: int = 0  # GPU memory reserved while capturing (the graphs' private pool)


class StepGraphs:
    """CUDA graphs of step segments, keyed by (segment, window, ...); eager when disabled.

    Graphs remember buffer addresses: `check` drops them all when the fingerprint (the addresses
    of weights, caches and buffers, the kernels) has changed since they were captured."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[Hashable, object] = {}  # what each segment returned while captured
        self.pool = None
        self.fingerprint: Optional[tuple] = None
        self.stats = CaptureStats()

    def check(self, fingerprint: tuple) -> None:
        if fingerprint != self.fingerprint:
            if self.graphs:
                log.info("weights, caches or kernels changed: recapturing CUDA graphs")
            self.graphs.clear()
            self.outputs.clear()
            self.pool, self.fingerprint = None, fingerprint

    def run(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Replay the segment's graph and return its (static) outputs, or call `fn` eagerly."""
        if not self.enabled:
            return fn()
        self.graphs[key].replay()
        return self.outputs[key]

    def capture(self, segments: dict[Hashable, Callable[[], Any]], reset: Callable[[], None],
                generator: Optional[torch.Generator] = None) -> None:
        """Capture every missing segment, in order (a segment may read an earlier one's outputs):
        `reset` puts the buffers in a valid state, one eager run on a side stream warms up
        (kernel selection, JIT), then the graph is recorded and replayed once. `generator`: the
        random generator the segments draw from, registered with each graph, so that a replay
        reads its seed and offset then and advances it as the eager calls would."""
        missing = {k: fn for k, fn in segments.items() if k not in self.graphs}
        if not self.enabled or not missing:
            return
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # so that what stays reserved afterwards is the graphs' pool
        t0, reserved = time.perf_counter(), torch.cuda.memory_reserved()
        for key, fn in missing.items():
            reset()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            reset()
            graph = torch.cuda.CUDAGraph()
            if generator is not None:
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[key] = fn()
            graph.replay()  # real outputs for the warm-up of a segment that reads them
            self.pool = graph.pool() if self.pool is None else self.pool
            self.graphs[key] = graph
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        seconds, grown = time.perf_counter() - t0, torch.cuda.memory_reserved() - reserved
        self.stats = CaptureStats(self.stats.graphs + len(missing), self.stats.seconds + seconds,
                                  self.stats.pool_bytes + grown)
        log.info("captured %d CUDA graphs in %.2f s (graph pool: %.1f MiB)", len(missing), seconds,
                 grown / 2 ** 20)

    def capture_step(self, step: EagleStep, windows: list[int], one_graph: bool,
                     sampler: Optional[SamplerState] = None) -> None:
        """Capture an EAGLE step's graphs for this configuration and decoding mode, keyed as
        `run_step` replays them: the whole step per window (`one_graph`), else each capturable
        segment per window (each reading the earlier segments' captured outputs)."""
        mode = mode_of(sampler)
        if one_graph:
            fns = {("step", step.mask_impl, w, mode): (lambda w=w: step.eager(w, sampler=sampler))
                   for w in windows}
        else:
            fns = {}
            for w in windows:
                got = (lambda name, w=w: self.outputs[segment_key(step, step.segment(name), w, mode)])
                for seg in step.segments():
                    if seg.capturable and segment_key(step, seg, w, mode) not in fns:
                        fns[segment_key(step, seg, w, mode)] = (lambda seg=seg, w=w, got=got:
                                                                seg.run(w, no_section, sampler, got))
        self.capture(fns, step.reset, sampler.generator if sampler else None)

    def run_step(self, step: EagleStep, window: int, section: TimeSection, one_graph: bool,
                 sampler: Optional[SamplerState] = None) -> None:
        """One EAGLE step (greedy, or sampling from `sampler`): eager with graphs disabled;
        otherwise replayed, as one graph (`one_graph`) or segment by segment, each timed in its
        own section, with the host part of a tree build that cannot be captured run eagerly."""
        mode = mode_of(sampler)
        if not self.enabled:
            step.eager(window, section, sampler)
        elif one_graph:
            self.run(("step", step.mask_impl, window, mode),
                     lambda: step.eager(window, sampler=sampler))
        else:
            out: dict[str, Any] = {}
            for seg in step.segments():
                if seg.capturable:
                    with section(seg.name):
                        out[seg.name] = self.run(
                            segment_key(step, seg, window, mode),
                            lambda seg=seg: seg.run(window, no_section, sampler, out.__getitem__))
                else:
                    out[seg.name] = seg.run(window, section, sampler, out.__getitem__)


def segment_key(step: EagleStep, segment: Segment, window: int, mode: Hashable = None) -> Hashable:
    """A segment's graph: one per window, or one per mask implementation (the tree); the posterior
    and what reads it also one per decoding `mode` (`mode_of`)."""
    key = (segment.name, window) if segment.windowed else (segment.name, step.mask_impl)
    return key + (mode,) if segment.per_mode else key

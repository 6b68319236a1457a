"""Fixed-shape decoding steps and the object that runs them eagerly or as CUDA graphs.

A step reads and writes only preallocated buffers (token ids, the cache length on the device, the
tree buffers, the accepted path padded to a fixed width), so one step function serves both ways:
`StepGraphs.run` calls it, or replays its graph. The decode loop reads one small result per step.
Greedy and sampling steps alike: a sampling step reads its settings from device buffers and draws
from a generator of its own, registered with its graphs (`SamplerState`), so that the same seed
gives the same tokens replayed or eager; its graphs are kept per decoding mode (`mode_of`).
Attention covers a window of the KV cache: the next power of two above what the step needs (at
least MIN_WINDOW slots, at most the cache), so a graph exists per window and per segment, all
captured together before a configuration's first prefill (`StepGraphs.capture`).

An EAGLE step is declared once, as data (`EagleStep.segments`): draft (draft forward over the
accepted tokens, tree levels, selection), tree buffers (`--mask-impl`), verify forward, posterior
(acceptance) and KV update (compaction, next inputs). Eager runs, capture, per-segment replay and
one-graph replay all walk that list. With a sync-free mask implementation the whole step is one
graph; `rebuild` and `incremental` run their host part eagerly between the captured segments, and
a profiled run replays every segment as its own graph to time it.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor

from .config import TreeConfig
from .draft import Drafter
from .llama import BaseOutput, LlamaForCausalLM, causal_mask, tree_attention_mask
from .profiling import TimeSection, no_section
from .tree.masks import build_tree_buffers, get_mask_impl
from .verify import (AcceptResult, SamplerState, accept_greedy_on_device, accept_sampling_on_device,
                     read_accepted)

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


@dataclass(frozen=True)
class Segment:
    """One named part of a step. `run(window, section, sampler, got)` does its work and returns
    its output (`sampler`: the sampling state, None for greedy); `got(name)` is an earlier
    segment's output."""
    name: str  # its timing section and graph
    run: Callable[[int, TimeSection, Optional[SamplerState], Callable[[str], Any]], Any]
    windowed: bool = True  # a graph per attention window (else one per mask implementation)
    per_mode: bool = False  # a graph per decoding mode (greedy, each sampling shape)
    times_itself: bool = False  # eagerly, it opens finer sections of its own
    capturable: bool = True  # False: host work that runs eagerly between replayed segments


@dataclass
class CaptureStats:
    graphs: int = 0
    seconds: float = 0.0  # warm-up and capture, device synchronised
    pool_bytes: int = 0  # GPU memory reserved while capturing (the graphs' private pool)


class StepGraphs:
    """CUDA graphs of step segments, keyed by (segment, window, ...); eager when disabled.

    Graphs remember buffer addresses: `check` drops them all when the fingerprint (the addresses
    of weights, caches and buffers, the attention backend) has changed since they were captured."""

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
                log.info("weights, caches or attention backend changed: recapturing CUDA graphs")
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


def mode_of(sampler: Optional[SamplerState]) -> Hashable:
    """The decoding mode a captured step is specific to: None for greedy, else the sampling
    settings' shape (whether top-p applies, top-k); their values are read at replay."""
    return None if sampler is None else sampler.shape


class PlainStep:
    """One token of plain decoding: forward at the device-side cache length, argmax in place."""

    def __init__(self, base: LlamaForCausalLM, device: torch.device):
        self.base = base
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)  # [1, 1] the last token
        self.cache_len = torch.zeros((), dtype=torch.long, device=device)
        self.sampling = SamplerState(device)

    def forward(self, window: int) -> Tensor:
        """Write the last token's K/V at slot cache_len, advance it; returns next logits [V]."""
        pos = self.cache_len.view(1)
        out = self.base(self.token, pos, self.cache_len, causal_mask(self.cache_len, 1, pos.device,
                                                                     window))
        self.cache_len += 1
        return out.logits[0, -1]

    def greedy(self, window: int) -> None:
        self.token.copy_(self.forward(window).argmax().view(1, 1))

    def sample(self, window: int) -> None:
        self.token.copy_(self.sampling.sample(self.forward(window)).view(1, 1))

    def reset(self) -> None:
        self.token.zero_()
        self.cache_len.zero_()


class EagleStep:
    """The static buffers of one EAGLE step and its segments: draft, tree buffers, verify forward,
    posterior, KV update (C = max_depth + 1).

    Inputs of a step: `features` [1, C, 3H] base aux states at the accepted nodes and `tokens` [C]
    the tokens that follow them, `count` of them real; `cache_len` the base cache length. Its
    outputs are the next step's inputs; the host reads `count` and `tokens` (`result`)."""

    def __init__(self, base: LlamaForCausalLM, drafter: Drafter, tree: TreeConfig, mask_impl: str):
        self.base, self.drafter, self.tree, self.mask_impl = base, drafter, tree, mask_impl
        w = base.lm_head.weight
        c, t, dev = tree.max_depth + 1, tree.num_nodes, w.device
        width = len(base.aux_layers) * base.args.hidden_size  # the aux features the draft reads
        self.features = torch.zeros(1, c, width, dtype=w.dtype, device=dev)
        self.tokens = torch.zeros(c, dtype=torch.long, device=dev)
        self.count = torch.zeros((), dtype=torch.long, device=dev)
        self.cache_len = torch.zeros((), dtype=torch.long, device=dev)
        self.tree_tokens = torch.zeros(t + 1, dtype=torch.long, device=dev)
        self.parents = torch.zeros(t, dtype=torch.long, device=dev)
        self.mask = torch.zeros(t + 1, t + 1, dtype=torch.bool, device=dev)
        self.positions = torch.zeros(t + 1, dtype=torch.long, device=dev)
        self.retrieve = torch.full((t, c), -1, dtype=torch.long, device=dev)
        self.sampling = SamplerState(dev)
        self._plan: tuple[Optional[str], list[Segment]] = (None, [])  # (mask_impl, segments)

    def start(self, features: Tensor, token: Tensor) -> None:
        """The first step's inputs after a prefill (`Drafter.prefill` took the positions before):
        the prompt's last position (features [1, 1, 3H]) and the root token [1] after it."""
        for buf in (self.features, self.tokens):
            buf.zero_()
        self.features[:, :1].copy_(features)
        self.tokens[:1].copy_(token)
        self.count.fill_(1)

    def draft(self, window: int, section: TimeSection = no_section) -> None:
        """Draft a tree from the step's inputs."""
        tree = self.drafter.step(self.features, self.tokens, section, self.count, window)
        self.tree_tokens.copy_(tree.tokens)
        self.parents.copy_(tree.parents)

    def tree_buffers(self, section: TimeSection = no_section) -> None:
        out = build_tree_buffers(self.parents, self.tree.max_depth, self.mask_impl, section)
        self.mask.copy_(out.mask)
        self.positions.copy_(out.position_ids)
        r = out.retrieve_indices  # host implementations return [leaves, deepest + 1]
        if r.shape == self.retrieve.shape:
            self.retrieve.copy_(r)
        else:  # paths cut at max_depth, as the sync-free implementations cut them
            c = min(r.shape[1], self.retrieve.shape[1])
            self.retrieve.fill_(-1)[: r.shape[0], :c].copy_(r[:, :c])

    def verify_forward(self, window: int) -> BaseOutput:
        """The base model over the tree: K/V at slots cache_len.., positions by node depth."""
        start = self.cache_len
        return self.base(self.tree_tokens[None], start + self.positions, start,
                         tree_attention_mask(start, self.mask, window))

    def posterior(self, out: BaseOutput, sampler: Optional[SamplerState] = None) -> AcceptResult:
        logits = out.logits[0]  # [T+1, V]
        if sampler is None:
            return accept_greedy_on_device(logits, self.tree_tokens, self.retrieve)
        return accept_sampling_on_device(logits, self.tree_tokens, self.retrieve, sampler)

    def kv_update(self, out: BaseOutput, res: AcceptResult) -> None:
        """Accepted nodes' K/V in place after the prefix; the next step's inputs; the length."""
        self.base.kv.compact(self.cache_len, self.cache_len + res.path)
        self.features.copy_(out.aux_hidden.index_select(1, res.path))
        self.tokens.copy_(res.tokens)
        self.count.copy_(res.count)
        self.cache_len += res.count

    def segments(self) -> list[Segment]:
        """The step, declared once: its segments in order. Each reads earlier segments' outputs
        through `got(name)`; every way of running a step walks this list (built once per mask
        implementation, which decides whether the tree build can be captured)."""
        if self._plan[0] != self.mask_impl:
            self._plan = (self.mask_impl, self._declare(get_mask_impl(self.mask_impl).sync_free))
        return self._plan[1]

    def _declare(self, sync_free: bool) -> list[Segment]:
        return [
            Segment("draft", lambda w, sec, smp, got: self.draft(w, sec), times_itself=True),
            Segment("tree_mask", lambda w, sec, smp, got: self.tree_buffers(sec), windowed=False,
                    times_itself=True, capturable=sync_free),  # rebuild/incremental: host work
            Segment("verify_forward", lambda w, sec, smp, got: self.verify_forward(w)),
            Segment("posterior", lambda w, sec, smp, got: self.posterior(got("verify_forward"), smp),
                    per_mode=True),
            Segment("kv_update", lambda w, sec, smp, got: self.kv_update(got("verify_forward"),
                                                                         got("posterior")),
                    per_mode=True),  # it reads the posterior's outputs
        ]

    def key(self, segment: Segment, window: int, mode: Hashable = None) -> Hashable:
        """A segment's graph: one per window, or one per mask implementation (the tree); the
        posterior and what reads it also one per decoding `mode` (`mode_of`)."""
        key = (segment.name, window) if segment.windowed else (segment.name, self.mask_impl)
        return key + (mode,) if segment.per_mode else key

    def eager(self, window: int, section: TimeSection = no_section,
              sampler: Optional[SamplerState] = None) -> None:
        """Every segment in order, eagerly (or under capture as one graph, with the defaults)."""
        out: dict[str, Any] = {}
        for seg in self.segments():
            with nullcontext() if seg.times_itself else section(seg.name):
                out[seg.name] = seg.run(window, section, sampler, out.__getitem__)

    def captures(self, graphs: StepGraphs, windows: list[int], one_graph: bool,
                 sampler: Optional[SamplerState] = None) -> dict[Hashable, Callable[[], Any]]:
        """The graphs of this configuration and decoding mode, in capture order, keyed as `run`
        replays them: the whole step per window (`one_graph`), else each capturable segment per
        window (each reading the earlier segments' captured outputs)."""
        mode = mode_of(sampler)
        if one_graph:
            return {("step", self.mask_impl, w, mode): (lambda w=w: self.eager(w, sampler=sampler))
                    for w in windows}
        out: dict[Hashable, Callable[[], Any]] = {}
        for w in windows:
            got = (lambda name, w=w: graphs.outputs[self.key(self._segment(name), w, mode)])
            for seg in self.segments():
                if seg.capturable and self.key(seg, w, mode) not in out:
                    out[self.key(seg, w, mode)] = (lambda seg=seg, w=w, got=got:
                                                   seg.run(w, no_section, sampler, got))
        return out

    def _segment(self, name: str) -> Segment:
        return next(seg for seg in self.segments() if seg.name == name)

    def run(self, graphs: StepGraphs, window: int, section: TimeSection, one_graph: bool,
            sampler: Optional[SamplerState] = None) -> None:
        """One step (greedy, or sampling from `sampler`): eager with graphs disabled; otherwise
        replayed, as one graph (`one_graph`) or segment by segment, each timed in its own section,
        with the host part of a tree build that cannot be captured run eagerly between them."""
        mode = mode_of(sampler)
        if not graphs.enabled:
            self.eager(window, section, sampler)
        elif one_graph:
            graphs.run(("step", self.mask_impl, window, mode),
                       lambda: self.eager(window, sampler=sampler))
        else:
            out: dict[str, Any] = {}
            for seg in self.segments():
                if seg.capturable:
                    with section(seg.name):
                        out[seg.name] = graphs.run(
                            self.key(seg, window, mode),
                            lambda seg=seg: seg.run(window, no_section, sampler, out.__getitem__))
                else:
                    out[seg.name] = seg.run(window, section, sampler, out.__getitem__)

    def reset(self) -> None:
        """A valid dummy state for warm-up and capture: empty caches, a root-only step input."""
        for buf in (self.features, self.tokens, self.cache_len, self.tree_tokens, self.parents):
            buf.zero_()
        self.count.fill_(1)
        self.drafter.n_ctx.zero_()
        self.tree_buffers()

    def result(self) -> list[int]:
        """The step's one device->host read: the accepted tokens and the bonus token."""
        return read_accepted(self.count, self.tokens)

"""One EAGLE decoding step, declared once as an ordered list of named segments.

Read a step here top to bottom: `EagleStep.segments` lists draft (`eagle/draft.py`: draft forward
over the accepted tokens, tree levels, selection), tree buffers (the `--mask-impl` registry,
`eagle/tree/masks.py`), verify forward (the base model, `eagle/llama.py`), posterior (acceptance,
`eagle/verify.py`) and KV update (compaction, the next step's inputs). A step reads and writes only
preallocated buffers (fixed shapes, the cache length on the device), so the same segments run
eagerly (`EagleStep.eager`) or are captured and replayed as CUDA graphs (`eagle/graphs.py`); the
decode loop reads one small result per step. `PlainStep` is the baseline's one-token step.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .config import TreeConfig
from .draft import Drafter
from .llama import BaseOutput, LlamaForCausalLM, causal_mask, tree_attention_mask
from .profiling import TimeSection, no_section
from .tree.masks import build_tree_buffers, get_mask_impl
from .verify import (AcceptResult, SamplerState, accept_greedy_on_device, accept_sampling_on_device,
                     first_argmax, read_accepted)


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

    def eager(self, window: int, section: TimeSection = no_section,
              sampler: Optional[SamplerState] = None) -> None:
        """Every segment in order, eagerly (or under capture as one graph, with the defaults)."""
        out: dict[str, Any] = {}
        for seg in self.segments():
            with nullcontext() if seg.times_itself else section(seg.name):
                out[seg.name] = seg.run(window, section, sampler, out.__getitem__)

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

    def segment(self, name: str) -> Segment:
        return next(seg for seg in self.segments() if seg.name == name)

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
        self.token.copy_(first_argmax(self.forward(window)).view(1, 1))

    def sample(self, window: int) -> None:
        self.token.copy_(self.sampling.sample(self.forward(window)).view(1, 1))

    def reset(self) -> None:
        self.token.zero_()
        self.cache_len.zero_()

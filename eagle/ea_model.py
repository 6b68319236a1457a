"""`EaModel`: a Llama base plus an EAGLE-3 draft head, decoding with draft trees.

The decode loop (`generate`) prefills, then runs one step (`eagle/step.py`: draft -> tree buffers
-> verify -> accept -> update) per round, eagerly or replayed (`eagle/graphs.py`). Stopping: at the
first eos / `<|eot_id|>` (kept in the output) or after exactly `max_new_tokens` new tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .backend import Kernels
from .checkpoint import Sharding, check_kinds, load_base, load_draft
from .config import ConfigError, TreeConfig, aux_layer_inputs
from .draft import Drafter, Eagle3Draft
from .llama import LlamaForCausalLM, causal_mask, stack_projections
from .profiling import ProfileReport, StepProfiler
from .graphs import StepGraphs, all_windows, mode_of, window_for
from .step import EagleStep, PlainStep
from .threads import pick_cpu_threads
from .tree.masks import get_mask_impl
from .verify import Sampler, SamplerState

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    output_ids: Tensor  # [1, prompt + new]
    new_token_ids: list[int]
    steps: int  # decoding steps after the prefill (EAGLE: draft/verify rounds)
    # accepted draft tokens per step (the answer file's detail.accepted_drafts; its accept_lengths
    # count the tokens a step added, one more except where a stop token or the budget cut it)
    accepted_drafts: list[int] = field(default_factory=list)
    profile: Optional[ProfileReport] = None

    @property
    def new_tokens(self) -> int:
        return len(self.new_token_ids)


def resolve_device(device_map: Union[str, torch.device, None]) -> torch.device:
    """"auto"/None: the GPU when there is one, else the CPU; a named CUDA device must exist."""
    if device_map in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device_map)
    except RuntimeError as exc:  # torch's message for an unknown device string
        raise ValueError(f"{device_map!r} is not a device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device_map} asked for, but CUDA is not available here; use cpu")
    return device


class TokenBudget:
    """Collects new tokens and says when to stop (stop token kept, never more than the budget)."""

    def __init__(self, max_new_tokens: int, stop_ids: frozenset):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self.max_new, self.stop_ids = max_new_tokens, stop_ids
        self.ids: list[int] = []
        self.done = False

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            self.ids.append(t)
            if t in self.stop_ids or len(self.ids) == self.max_new:
                self.done = True
                return


class EaModel(nn.Module):
    def __init__(self, base: LlamaForCausalLM, head: Optional[Eagle3Draft], tree: TreeConfig,
                 mask_impl: str = "rebuild", tokenizer=None, max_length: int = 4096,
                 cuda_graph: Optional[bool] = None, attention: str = "auto",
                 kernels: Optional[Kernels] = None):
        """`head=None`: a base model alone, for `naive_generate` (the baseline). `cuda_graph`:
        replay decoding steps as CUDA graphs (default: on with CUDA). `kernels`: what the
        forwards run (default `Kernels(attention=attention)`), installed on the base and head
        modules. A small model on the CPU sets torch to one thread unless OMP_NUM_THREADS is set."""
        super().__init__()
        if head is not None and (head.args.target_hidden_size != base.args.hidden_size or
                                 head.args.vocab_size != base.args.vocab_size):
            raise ConfigError(
                f"draft head expects hidden {head.args.target_hidden_size} / vocab "
                f"{head.args.vocab_size}, base has {base.args.hidden_size} / {base.args.vocab_size}")
        get_mask_impl(mask_impl, base.lm_head.weight.device)
        pick_cpu_threads(base.lm_head.weight.device, base.args.hidden_size)
        if head is not None:
            base.set_aux_layers(aux_layer_inputs(base.args.num_hidden_layers,
                                                 head.args.aux_layer_ids))
            if head.args.aux_layer_ids:
                log.info("the head's config names base layers %s (eagle_aux_hidden_state_layer_"
                         "ids): it reads the inputs of layers %s", list(head.args.aux_layer_ids),
                         list(base.aux_layers))
        self.base, self.head, self.tree = base, head, tree
        self.mask_impl, self.tokenizer, self.max_length = mask_impl, tokenizer, max_length
        self.stop_ids = self._stop_ids()
        self.drafter = Drafter(head, head.token_embedding(base.model.embed_tokens), tree,
                               max_length) if head is not None else None
        on_cuda = self.device.type == "cuda"
        if cuda_graph and not on_cuda:
            raise ConfigError(f"CUDA graphs need a CUDA device, the model is on {self.device.type}; "
                              f"turn them off")
        self.kernels = kernels if kernels is not None else Kernels(attention=attention)
        self.use_kernels(self.kernels)
        self.graphs = StepGraphs(on_cuda if cuda_graph is None else cuda_graph)
        self.plain_graphs = StepGraphs(self.graphs.enabled)
        self.eagle_step: Optional[EagleStep] = None
        self.plain_step: Optional[PlainStep] = None

    @classmethod
    def from_pretrained(cls, base_model_path: Union[str, Path], ea_model_path: Union[str, Path, None],
                        total_token: int = 60, depth: int = 5, top_k: int = 10,
                        torch_dtype: torch.dtype = torch.float16, device_map="auto",
                        mask_impl: str = "rebuild", use_eagle3: bool = True,
                        max_length: int = 4096,
                        tokenizer_path: Union[str, Path, None] = None,
                        cuda_graph: Optional[bool] = None, attention: str = "auto",
                        kernels: Optional[Kernels] = None,
                        tp: Optional[Sharding] = None) -> "EaModel":
        """Load an HF Llama base and an EAGLE-3 head (upstream keyword names); the tokenizer comes
        from `tokenizer_path`, by default the base model's directory. `ea_model_path=None` loads
        the base alone (`naive_generate` only). `tp`: load this rank's shard of the base
        (`eagle.parallel`; the head is replicated)."""
        if not use_eagle3:
            raise ConfigError("only EAGLE-3 draft heads are supported (use_eagle3=True)")
        from transformers import AutoTokenizer

        device = resolve_device(device_map)
        tree = TreeConfig(total_token, depth, top_k)
        check_kinds(Path(base_model_path), Path(ea_model_path) if ea_model_path else None)
        base = load_base(Path(base_model_path), torch_dtype, device, tp)
        head = load_draft(Path(ea_model_path), torch_dtype, device,
                          base.model.embed_tokens.weight) if ea_model_path else None
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or base_model_path))
        return cls(base, head, tree, mask_impl, tokenizer, max_length, cuda_graph, attention, kernels)

    def use_kernels(self, kernels: Kernels) -> None:
        """Run `kernels` from now on (captured graphs are recaptured: the fingerprint names them)."""
        self.kernels = kernels
        for module in (self.base, self.head):
            if module is not None:
                kernels.install(module)
                if kernels.active(self.device):
                    stack_projections(module)

    @property
    def attention(self) -> str:
        return self.kernels.attention

    def get_tokenizer(self):
        return self.tokenizer

    @property
    def device(self) -> torch.device:
        return self.base.lm_head.weight.device

    def _stop_ids(self) -> frozenset:
        ids = set(self.base.args.eos_token_ids)
        if self.tokenizer is not None:
            for tok in (self.tokenizer.eos_token, "<|eot_id|>"):
                tid = self.tokenizer.convert_tokens_to_ids(tok) if tok else None
                if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                    ids.add(tid)
        return frozenset(ids)

    def _prefill(self, input_ids: Tensor, max_new_tokens: int, extra: int):
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must have shape [1, n] (batch size 1), got "
                             f"{list(input_ids.shape)}")
        ids = input_ids[0].to(self.device)
        n = ids.shape[0]
        need = n + max_new_tokens + extra
        if need > self.max_length:
            raise ValueError(f"prompt ({n}) + max_new_tokens ({max_new_tokens}) + tree ({extra}) "
                             f"exceeds max_length {self.max_length}")
        self.base.setup_cache(self.max_length)
        out = self.base(ids[None], torch.arange(n, device=ids.device), 0,
                        causal_mask(0, n, ids.device), last_only=True)
        return ids, out

    @staticmethod
    def _next_token(logits: Tensor, sampler: Optional[SamplerState]) -> int:
        return int(sampler.sample(logits) if sampler else logits.argmax())

    def _fingerprint(self, modules: list, tensors: list) -> tuple:
        """What captured graphs depend on: the addresses and shapes of the weights of `modules`
        and of `tensors` (caches, step buffers), and the model's kernels."""
        every = [p for m in modules for p in m.parameters()] + tensors
        return (self.kernels.resolve_attention(self.device), self.kernels.describe(self.device),
                *((t.data_ptr(), tuple(t.shape)) for t in every))

    def _eagle_ready(self, sampler: Optional[Sampler], profile: bool) -> tuple[EagleStep, bool]:
        """Caches, step buffers, (graphs on) the captured segments of this decoding mode, then the
        sampling state seeded (after the capture, which draws), before the prefill. Returns the
        step and whether it replays as one graph."""
        self.base.setup_cache(self.max_length)
        self.drafter.reset()
        w = self.base.lm_head.weight
        step = self.eagle_step
        if step is None or step.features.dtype != w.dtype or step.features.device != w.device:
            step = self.eagle_step = EagleStep(self.base, self.drafter, self.tree, self.mask_impl)
        step.drafter, step.mask_impl = self.drafter, self.mask_impl  # either may be swapped
        one_graph = self.graphs.enabled and not profile and get_mask_impl(self.mask_impl).sync_free
        state = self._load_sampling(step.sampling, sampler)
        if self.graphs.enabled:
            d = self.drafter
            buffers = [self.base.kv.data, d.kv.data, d.n_ctx, d.level_positions, d.level_starts,
                       step.features, step.retrieve]
            blas = self.kernels.eagle_blas_name(self.device)  # the library the steps' products run on
            self.graphs.check(self._fingerprint([self.base, self.head], buffers) + (blas,))
            self.graphs.capture_step(step, all_windows(self.max_length), one_graph, state)
        self._load_sampling(step.sampling, sampler)
        return step, one_graph

    def _load_sampling(self, state: SamplerState, sampler: Optional[Sampler]) -> Optional[SamplerState]:
        """`state` set to `sampler` (seeded afresh; compiled on the fused path), or None for greedy
        decoding."""
        if sampler is None:
            return None
        state.load(sampler, compiled=self.kernels.sampling_compiled(self.device))
        return state

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, temperature: float = 0.0, top_p: float = 0.0,
                 top_k: int = 0, max_new_tokens: int = 512, seed: int = 0,
                 profile: bool = False) -> GenerationResult:
        """EAGLE-3 decoding of one prompt ([1, n] ids); returns ids and per-call statistics.

        The draft head takes the prompt's positions before the last in one eager forward
        (`Drafter.prefill`); every step then starts from one accepted position or more, so with
        graphs on every step replays captured graphs. `profile` times each segment of a step
        (with graphs on, each replayed as its own graph)."""
        if self.drafter is None:
            raise ConfigError("this model has no draft head (loaded for the baseline); use "
                              "naive_generate, or load an EAGLE-3 head to decode with draft trees")
        sampler = Sampler(temperature, top_p, top_k, seed) if temperature > 0 else None
        prof = StepProfiler(enabled=profile, cuda=self.device.type == "cuda")
        with self.kernels.attention_context(self.device), self.kernels.blas_context(self.device):
            step, one_graph = self._eagle_ready(sampler, profile)
            state = step.sampling if sampler else None
            ids, out = self._prefill(input_ids, max_new_tokens, self.tree.step_slots)
            budget = TokenBudget(max_new_tokens, self.stop_ids)
            root = self._next_token(out.logits[0, -1], state)
            budget.extend([root])
            n = ids.shape[0]
            follow = torch.cat((ids[1:], torch.tensor([root], device=ids.device)))
            self.drafter.prefill(out.aux_hidden[:, :n - 1], follow[:n - 1])
            step.start(out.aux_hidden[:, n - 1:], follow[n - 1:])
            step.cache_len.fill_(n)
            cache_len, accepts = n, []
            while not budget.done:
                window = window_for(cache_len + self.tree.step_slots, self.max_length)
                with prof.section("step_total"):
                    self.graphs.run_step(step, window, prof.section, one_graph, state)
                prof.end_step()
                tokens = step.result()
                cache_len += len(tokens)
                accepts.append(len(tokens) - 1)
                budget.extend(tokens)
        return self._result(ids, budget, len(accepts), accepts, prof.report() if profile else None)

    def _plain_ready(self, sampler: Optional[Sampler]) -> PlainStep:
        """Cache, step buffers and (graphs on) the captured steps of this decoding mode; then the
        sampling state seeded."""
        self.base.setup_cache(self.max_length)
        w = self.base.lm_head.weight
        step = self.plain_step
        if step is None or step.token.device != w.device:
            step = self.plain_step = PlainStep(self.base, w.device)
        state = self._load_sampling(step.sampling, sampler)
        if self.plain_graphs.enabled:
            self.plain_graphs.check(self._fingerprint([self.base], [self.base.kv.data, step.token]))
            self.plain_graphs.capture({("plain", window, mode_of(state)): self._plain_fn(step, window, state)
                                       for window in all_windows(self.max_length)}, step.reset,
                                      state.generator if state else None)
        self._load_sampling(step.sampling, sampler)
        return step

    @staticmethod
    def _plain_fn(step: PlainStep, window: int, state: Optional[SamplerState]):
        return (lambda: step.sample(window)) if state else (lambda: step.greedy(window))

    @torch.inference_mode()
    def naive_generate(self, input_ids: Tensor, temperature: float = 0.0, top_p: float = 0.0,
                       top_k: int = 0, max_new_tokens: int = 512, seed: int = 0) -> GenerationResult:
        """Plain autoregressive decoding of the base model with the same stopping rules: a step
        per token (captured with graphs on), one read of its token."""
        sampler = Sampler(temperature, top_p, top_k, seed) if temperature > 0 else None
        with self.kernels.attention_context(self.device):
            step = self._plain_ready(sampler)
            state = step.sampling if sampler else None
            ids, out = self._prefill(input_ids, max_new_tokens, 0)
            budget = TokenBudget(max_new_tokens, self.stop_ids)
            budget.extend([self._next_token(out.logits[0, -1], state)])
            step.cache_len.fill_(ids.shape[0])
            step.token.fill_(budget.ids[-1])
            while not budget.done:
                window = window_for(ids.shape[0] + len(budget.ids), self.max_length)
                self.plain_graphs.run(("plain", window, mode_of(state)),
                                      self._plain_fn(step, window, state))
                budget.extend([int(step.token)])
        return self._result(ids, budget, len(budget.ids) - 1, [], None)

    @staticmethod
    def _result(ids: Tensor, budget: TokenBudget, steps: int, accepts: list[int],
                profile: Optional[ProfileReport]) -> GenerationResult:
        new = torch.tensor(budget.ids, dtype=ids.dtype, device=ids.device)
        return GenerationResult(torch.cat((ids, new))[None], budget.ids, steps, accepts, profile)

    def eagenerate(self, input_ids: Tensor, temperature: float = 0.0, top_p: float = 0.0,
                   top_k: int = 0, max_new_tokens: int = 512, seed: int = 0) -> Tensor:
        """Upstream-compatible: the token ids [1, prompt + new]."""
        return self.generate(input_ids, temperature, top_p, top_k, max_new_tokens, seed).output_ids

    def naivegenerate(self, input_ids: Tensor, temperature: float = 0.0, top_p: float = 0.0,
                      top_k: int = 0, max_new_tokens: int = 512, seed: int = 0) -> Tensor:
        return self.naive_generate(input_ids, temperature, top_p, top_k, max_new_tokens,
                                   seed).output_ids

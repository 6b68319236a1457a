"""`EaModel`: a Llama base plus an EAGLE-3 draft head, decoding with draft trees.

One decoding step reads as its parts: draft -> tree buffers (`mask_impl`) -> verify -> accept ->
update. Stopping: at the first eos / `<|eot_id|>` (kept in the output) or after exactly
`max_new_tokens` new tokens, never more.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .checkpoint import load_base, load_draft
from .config import ConfigError, TreeConfig, aux_layer_inputs
from .draft import Drafter, Eagle3Draft
from .llama import LlamaForCausalLM, causal_mask, tree_attention_mask
from .profiling import ProfileReport, StepProfiler
from .tree.masks import build_tree_buffers, require_available
from .verify import Sampler, accept_greedy, accept_sampling

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    output_ids: Tensor  # [1, prompt + new]
    new_token_ids: list[int]
    steps: int  # decoding steps after the prefill (EAGLE: draft/verify rounds)
    accept_lengths: list[int] = field(default_factory=list)  # accepted draft tokens per step
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
                 mask_impl: str = "rebuild", tokenizer=None, max_length: int = 4096):
        """`head=None`: a base model alone, for `naive_generate` (the baseline)."""
        super().__init__()
        if head is not None and (head.args.target_hidden_size != base.args.hidden_size or
                                 head.args.vocab_size != base.args.vocab_size):
            raise ConfigError(
                f"draft head expects hidden {head.args.target_hidden_size} / vocab "
                f"{head.args.vocab_size}, base has {base.args.hidden_size} / {base.args.vocab_size}")
        require_available(mask_impl, base.lm_head.weight.device)
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

    @classmethod
    def from_pretrained(cls, base_model_path: Union[str, Path], ea_model_path: Union[str, Path, None],
                        total_token: int = 60, depth: int = 5, top_k: int = 10,
                        torch_dtype: torch.dtype = torch.float16, device_map="auto",
                        mask_impl: str = "rebuild", use_eagle3: bool = True,
                        max_length: int = 4096,
                        tokenizer_path: Union[str, Path, None] = None) -> "EaModel":
        """Load an HF Llama base and an EAGLE-3 head (upstream keyword names); the tokenizer comes
        from `tokenizer_path`, by default the base model's directory. `ea_model_path=None` loads
        the base alone (`naive_generate` only)."""
        if not use_eagle3:
            raise ConfigError("only EAGLE-3 draft heads are supported (use_eagle3=True)")
        from transformers import AutoTokenizer

        device = resolve_device(device_map)
        tree = TreeConfig(total_token, depth, top_k)
        base = load_base(Path(base_model_path), torch_dtype, device)
        head = load_draft(Path(ea_model_path), torch_dtype, device,
                          base.model.embed_tokens.weight) if ea_model_path else None
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or base_model_path))
        return cls(base, head, tree, mask_impl, tokenizer, max_length)

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
    def _next_token(logits: Tensor, sampler: Optional[Sampler]) -> int:
        return sampler.sample(sampler.probs(logits)) if sampler else int(logits.argmax())

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, temperature: float = 0.0, top_p: float = 0.0,
                 top_k: int = 0, max_new_tokens: int = 512, seed: int = 0,
                 profile: bool = False) -> GenerationResult:
        """EAGLE-3 decoding of one prompt ([1, n] ids); returns ids and per-call statistics."""
        if self.drafter is None:
            raise ConfigError("this model has no draft head (loaded for the baseline); use "
                              "naive_generate, or load an EAGLE-3 head to decode with draft trees")
        sampler = Sampler(temperature, top_p, top_k, seed) if temperature > 0 else None
        prof = StepProfiler(enabled=profile, cuda=self.device.type == "cuda")
        t = self.tree.num_nodes
        ids, out = self._prefill(input_ids, max_new_tokens, t + 1)
        self.drafter.reset()
        budget = TokenBudget(max_new_tokens, self.stop_ids)
        root = self._next_token(out.logits[0, -1], sampler)
        budget.extend([root])
        features = out.aux_hidden  # [1, n, 3H]
        follow = torch.cat((ids[1:], torch.tensor([root], device=ids.device)))
        cache_len, steps, accepts = ids.shape[0], 0, []
        while not budget.done:
            with prof.section("step_total"):
                tree = self.drafter.step(features, follow, prof.section)
                buffers = build_tree_buffers(tree.parents, self.tree.max_depth, self.mask_impl,
                                             prof.section)
                with prof.section("verify_forward"):
                    verify = self.base(tree.tokens[None], cache_len + buffers.position_ids, cache_len,
                                       tree_attention_mask(cache_len, buffers.mask))
                with prof.section("posterior"):
                    logits = verify.logits[0]  # [T+1, V]
                    acc = accept_sampling(logits, tree.tokens, buffers.retrieve_indices, sampler) \
                        if sampler else accept_greedy(logits, tree.tokens, buffers.retrieve_indices)
                with prof.section("kv_update"):
                    self.base.kv.compact(cache_len, cache_len + acc.path)
                    features = verify.aux_hidden[:, acc.path]  # [1, a+1, 3H]
                    follow = torch.tensor(acc.tokens, device=ids.device)
                    cache_len += acc.path.shape[0]
            prof.end_step()
            steps += 1
            accepts.append(acc.accept_length)
            budget.extend(acc.tokens)
        return self._result(ids, budget, steps, accepts, prof.report() if profile else None)

    @torch.inference_mode()
    def naive_generate(self, input_ids: Tensor, temperature: float = 0.0, top_p: float = 0.0,
                       top_k: int = 0, max_new_tokens: int = 512, seed: int = 0) -> GenerationResult:
        """Plain autoregressive decoding of the base model with the same stopping rules."""
        sampler = Sampler(temperature, top_p, top_k, seed) if temperature > 0 else None
        ids, out = self._prefill(input_ids, max_new_tokens, 0)
        budget = TokenBudget(max_new_tokens, self.stop_ids)
        budget.extend([self._next_token(out.logits[0, -1], sampler)])
        pos = ids.shape[0]
        while not budget.done:
            tok = torch.tensor([[budget.ids[-1]]], device=ids.device)
            out = self.base(tok, torch.tensor([pos], device=ids.device), pos,
                            causal_mask(pos, 1, ids.device))
            budget.extend([self._next_token(out.logits[0, -1], sampler)])
            pos += 1
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

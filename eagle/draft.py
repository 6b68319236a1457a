"""The EAGLE-3 draft head and the tree-drafting loop (upstream `topK_genrate` semantics).

The head is one Llama-style layer whose attention reads `cat(input_layernorm(embed(token)),
hidden_norm(h))` (width 2H). On the first draft forward of a step, `h` is `fc` applied to the base
model's three auxiliary hidden states (width 3H); on later forwards it is the draft's own output.
The token embedding is the base model's, except in a head whose hidden size differs from its
target's (`target_hidden_size`, e.g. the Llama-3.3-70B head): that one has its own `embed_tokens`,
and `fc` maps 3 x target hidden to the head's hidden.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import fused
from .backend import Kernels
from .config import ModelArgs, TreeConfig
from .llama import MLP, Attention, Frame, KVCache, RMSNorm, Rotary, Start, causal_mask
from .profiling import TimeSection, no_section
from .tree.select import Candidates, DraftTree, TopK, top_of


class DraftLayer(nn.Module):
    kernels = Kernels()  # an EaModel installs its own (Kernels.install)

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args, 2 * args.hidden_size)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.hidden_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, emb: Tensor, h: Tensor, frame: Frame, kv: KVCache) -> Tensor:
        x = self.attention_input(emb, h)
        h, normed = self.post_attention_layernorm.after_add(h, self.self_attn(x, frame, kv, 0))
        return h + self.mlp(normed)

    def attention_input(self, emb: Tensor, h: Tensor) -> Tensor:
        """cat(input_layernorm(emb), hidden_norm(h)): [1, S, 2H]. On the fused path each norm
        writes its half of one buffer (no cat)."""
        if not self.kernels.active(emb.device):
            return torch.cat((self.input_layernorm(emb), self.hidden_norm(h)), dim=-1)
        half = emb.shape[-1]
        x = torch.empty(*emb.shape[:-1], 2 * half, device=emb.device,
                        dtype=torch.result_type(self.input_layernorm.weight, emb))
        for norm, rows, part in ((self.input_layernorm, emb, x[..., :half]),
                                 (self.hidden_norm, h, x[..., half:])):
            fused.ops().rms_norm(rows, norm.weight, norm.eps, out=part)
        return x


class Eagle3Draft(nn.Module):
    """Tensor names and shapes follow the published EAGLE-3 checkpoints exactly."""
    kernels = Kernels()

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.fc = nn.Linear(3 * args.target_hidden_size, args.hidden_size, bias=False)
        self.midlayer = DraftLayer(args)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(args.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(args.vocab_size, dtype=torch.bool))
        self.rotary = Rotary(args.rope, args.head_dim)
        # [vocab, H_head]; None: the head reads the base's embedding (same width)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size) \
            if args.has_own_embedding else None

    def token_embedding(self, base_embed: nn.Embedding) -> nn.Embedding:
        """The embedding the head reads its tokens with: its own, else the base's."""
        return self.embed_tokens if self.embed_tokens is not None else base_embed

    def forward(self, emb: Tensor, h: Tensor, positions: Tensor, kv: KVCache, start: Start,
                mask: Tensor) -> Tensor:
        """emb: [1, S, H] token embeddings; h: [1, S, 3 x target H] base features or [1, S, H]
        draft state (H: the head's hidden size)."""
        if h.shape[-1] != self.args.hidden_size:
            h = self.fc(h)
        frame = self.midlayer.self_attn.frame(self.rotary, positions, start, mask, emb.dtype,
                                              kv.max_len)
        return self.midlayer(emb, h, frame, kv)

    def log_probs(self, h: Tensor) -> Tensor:
        # h: [..., H] -> [..., draft_vocab]
        return torch.log_softmax(self.lm_head(self.norm(h)).float(), dim=-1)

    def top_log_probs(self, h: Tensor, k: int) -> TopK:
        """The k most likely draft tokens after each row of h [..., H], best first: float32
        log-probs and draft ids, [..., k] each (two launches on the fused path, which never
        writes out the whole distribution)."""
        if self.kernels.active(h.device):
            return TopK(*fused.ops().top_log_probs(self.lm_head(self.norm(h)), k))
        return top_of(self.log_probs(h), k)

    def to_target(self, draft_ids: Tensor) -> Tensor:
        """Draft-vocabulary ids to target ids (target = draft + d2t[draft])."""
        return draft_ids + self.d2t[draft_ids]


class Drafter:
    """Runs the draft head over accepted tokens and grows a token tree, one call per decoding step.

    The head's own KV cache holds one entry per accepted token (the tree levels written after them
    are scratch and get overwritten next step); its length `n_ctx` lives on the device, so a step
    has fixed shapes when its input is padded to a fixed width. `reset` reallocates the cache when
    the head has moved to another device or dtype since, so a model moved or cast after
    construction drafts correctly.
    """

    def __init__(self, head: Eagle3Draft, embed: nn.Embedding, tree: TreeConfig, max_len: int):
        self.head, self.embed, self.tree = head, embed, tree
        # accepted tokens, one padded step input and one step's tree levels
        self.kv_len = max_len + tree.max_depth + 1 + tree.depth * tree.top_k
        self.kv: Optional[KVCache] = None
        self.n_ctx: Optional[Tensor] = None  # 0-d int64 on the head's device
        self.level_positions: Optional[Tensor] = None  # [depth, k]: i in row i
        self.level_starts: Optional[Tensor] = None  # [depth]: i * k
        self.reset()

    def reset(self) -> None:
        """Start a new sequence (reallocating the KV cache when it no longer fits the head)."""
        w = self.head.lm_head.weight
        if self.kv is None or not self.kv.fits(self.kv_len, w):
            self.kv = None  # free the old buffer before allocating the new one
            a = self.head.args
            self.kv = KVCache(1, a.num_key_value_heads, a.head_dim, self.kv_len, w.dtype, w.device)
        if self.n_ctx is None or self.n_ctx.device != w.device:
            self.n_ctx = torch.zeros((), dtype=torch.long, device=w.device)
            depth, k = self.tree.depth, self.tree.top_k
            levels = torch.arange(depth, device=w.device)
            self.level_positions = levels[:, None].repeat(1, k)
            self.level_starts = levels * k
        self.n_ctx.zero_()

    def prefill(self, features: Tensor, tokens: Tensor) -> None:
        """Start a sequence at a prompt's positions: their draft K/V (features [1, m, 3H] base aux
        states, tokens [m] the tokens that follow them) at slots 0..m-1, in one forward; the next
        `step` drafts from the position after them."""
        m = tokens.shape[0]
        if m > 0:
            self.head(self.embed(tokens)[None], features, torch.arange(m, device=tokens.device),
                      self.kv, 0, causal_mask(0, m, tokens.device))
        self.n_ctx.fill_(m)

    def step(self, features: Tensor, tokens: Tensor, section: TimeSection = no_section,
             count: Optional[Tensor] = None, window: Optional[int] = None) -> DraftTree:
        """features: [1, m, 3H] base aux states at the newly accepted positions; tokens: [m] the
        tokens that follow them. Only the first `count` rows (0-d tensor; default all m) are
        real, the last real token being the new root; the rest is padding. Attention runs over
        the first `window` slots of the draft cache (default: all of them); the caller promises
        n_ctx + max(m, depth * top_k) <= window."""
        k, head, m, dev = self.tree.top_k, self.head, tokens.shape[0], tokens.device
        count = torch.full((), m, device=dev) if count is None else count
        window = self.kv_len if window is None else window
        start = self.n_ctx.clone()
        with section("draft_forward"):
            h = head(self.embed(tokens)[None], features, start + torch.arange(m, device=dev),
                     self.kv, start, causal_mask(start, m, dev, window))
        self.n_ctx += count
        ctx, last = self.n_ctx, count - 1
        with section("draft_select"):
            h_root = h[0].index_select(0, last[None])  # [1, H]
            cands = Candidates(head.top_log_probs(h_root[0], k), k)
            frontier_h = h_root[None].expand(1, k, h.shape[-1])  # [1, k, H]
            # level i: rope position ctx + i, cache slots ctx + i*k..
            positions, starts = ctx + self.level_positions, ctx + self.level_starts
        ancestors, rows = None, None
        for i in range(self.tree.depth):
            with section("draft_forward"):
                ancestors, mask = level_masks(ancestors, rows, ctx, k, window, head.kernels)
                out = head(self.embed(head.to_target(cands.frontier_ids))[None], frontier_h,
                           positions[i], self.kv, starts[i], mask)
            with section("draft_select"):
                rows = cands.expand(head.top_log_probs(out[0], k))  # [k] parent row of each new node
                frontier_h = out[:, rows]  # [1, k, H]
        with section("draft_select"):
            return cands.select(tokens.index_select(0, last[None]), self.tree, head.to_target)


def level_masks(ancestors: Optional[Tensor], rows: Optional[Tensor], ctx: Tensor, k: int,
                width: int, kernels: Kernels = Kernels()) -> tuple[Tensor, Tensor]:
    """A draft level's masks. ancestors: [k, k*i] bool, which nodes of the levels so far each
    node of the previous level descends from or is (None at the first level); rows: [k] the
    previous-level row each node of this level descends from; ctx: the accepted slots' count
    (0-d). Returns this level's ancestors [k, k*(i+1)] and its attention mask [k, width]: the
    accepted slots < ctx, and from slot ctx on the levels' nodes it descends from and itself."""
    if kernels.active(ctx.device):
        return fused.ops().draft_level_mask(ancestors, rows, ctx, k, width)
    eye = torch.eye(k, dtype=torch.bool, device=ctx.device)
    ancestors = eye if ancestors is None else torch.cat((ancestors[rows], eye), dim=1)
    span, cols = ancestors.shape[1], torch.arange(width, device=ctx.device)
    levels = ancestors.gather(1, (cols - ctx).clamp(0, span - 1)[None, :].expand(k, -1))
    return ancestors, (cols < ctx)[None, :] | (levels & (cols < ctx + span)[None, :])

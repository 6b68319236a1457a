"""A compact Llama (Llama-3.x) with a preallocated static KV cache and explicit attention masks.

Parameter names match Hugging Face's `LlamaForCausalLM` so checkpoints load with a strict
`load_state_dict`. One forward serves prefill, plain decoding and tree verification: the caller says
where the new tokens' K/V go in the cache, which rope positions they take and (for a tree) which
earlier tokens each may attend to. It returns logits and the EAGLE-3 auxiliary hidden states.
On CUDA the layers take the fused path of `eagle.fused` (Triton pointwise kernels, stacked
projection weights); elsewhere they run the PyTorch operations written out below.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .backend import Kernels
from .config import ConfigError, ModelArgs, RopeConfig

Start = Union[int, Tensor]  # a first cache slot: a host int, or a 0-d int64 tensor on the device


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> Tensor:
    """Inverse frequencies [head_dim/2], float32, with transformers' `linear`/`llama3` scaling."""
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    s = rope.scaling
    if s is None:
        return inv
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv / s["factor"]
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    """cos/sin from float32 inverse frequencies kept per device. They are not a buffer, so dtype
    casts (`.half()`) and construction on the meta device never touch their precision."""

    def __init__(self, rope: RopeConfig, head_dim: int):
        super().__init__()
        self.rope, self.head_dim = rope, head_dim
        self._inv_freq: dict[torch.device, Tensor] = {}
        self._tables: list[tuple[Tensor, Tensor]] = []  # every table made (see `table`)

    def table(self, length: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin [>= length, head_dim] of positions 0.., row p being what `forward` gives
        position p. A table is made once per device, dtype and longer length, and never freed:
        CUDA graphs captured over a shorter one may still read it."""
        for cos, sin in reversed(self._tables):
            if cos.device == device and cos.dtype == dtype and cos.shape[0] >= length:
                return cos, sin
        self._tables.append(self(torch.arange(length, device=device), dtype))
        return self._tables[-1]

    def inv_freq(self, device: torch.device) -> Tensor:
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.rope, self.head_dim).to(device)
        return self._inv_freq[device]

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # positions: [S] -> cos, sin: [S, head_dim], computed in float32 as transformers does
        freqs = positions.float()[:, None] * self.inv_freq(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [B, H, S, D]; cos/sin: [S, D]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    kernels = Kernels()  # an EaModel installs its own (Kernels.install)

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.kernels.active(x.device):
            return fused.ops().rms_norm(x, self.weight, self.eps)[1]
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def after_add(self, x: Tensor, delta: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(x + delta, this norm of it), in one launch where the kernels are fused; without
        delta, (x, this norm of x)."""
        if self.kernels.active(x.device):
            return fused.ops().rms_norm(x, self.weight, self.eps, delta)
        if delta is not None:
            x = x + delta
        return x, self(x)


class MLP(nn.Module):
    kernels = Kernels()

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.gate_up: Optional[Tensor] = None  # both weights stacked (fused.stack_weights)

    def stack(self) -> None:
        if not fused.stacked(self.gate_up, (self.gate_proj, self.up_proj)):
            self.gate_up = fused.stack_weights((self.gate_proj, self.up_proj))

    def forward(self, x: Tensor) -> Tensor:
        if not self.kernels.active(x.device):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if fused.stacked(self.gate_up, (self.gate_proj, self.up_proj)):
            gate, up = F.linear(x, self.gate_up).split(self.up_proj.out_features, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        rows = x.numel() // x.shape[-1]
        act = fused.ops().silu_mul(gate.reshape(rows, -1), up.reshape(rows, -1))
        return self.down_proj(act.view(*x.shape[:-1], -1))


class Frame(NamedTuple):
    """What every attention of one forward shares, built once per forward (`Attention.frame`)."""
    start: Start  # the new tokens' first cache slot
    positions: Tensor  # [S] their rope positions
    mask: Tensor  # [S, W] bool over the window, cache slots 0..W-1 (True = may attend)
    rope: tuple[Tensor, Tensor]  # cos, sin: [S, D] per token, or [L, D] tables (fused rotary)
    bias: Optional[Tensor]  # [rep*S, W] SDPA's additive bias; None: the fused kernel reads `mask`


class Attention(nn.Module):
    """Grouped-query attention over a fixed window of the KV cache; `in_features` is 2H in the
    EAGLE-3 draft layer.

    The window is the mask's width: keys and values are the cache's first `width` slots, a view
    (no copy). Grouped-query attention folds each group's query heads into query rows of its K/V
    head ([1, Hkv, rep*S, D]), so no K/V head is ever repeated and every SDPA backend, the
    deterministic memory-efficient one included, can run it. On the fused path one Triton kernel
    (`fused_triton.attention`) reads the queries, the window and the boolean mask as they are."""
    kernels = Kernels()

    def __init__(self, args: ModelArgs, in_features: int):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (args.num_attention_heads, args.num_key_value_heads,
                                                  args.head_dim)
        self.q_proj = nn.Linear(in_features, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(in_features, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(in_features, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, args.hidden_size, bias=False)
        self.qkv: Optional[Tensor] = None  # the three input projections stacked (stack())

    def stack(self) -> None:
        if not fused.stacked(self.qkv, (self.q_proj, self.k_proj, self.v_proj)):
            self.qkv = fused.stack_weights((self.q_proj, self.k_proj, self.v_proj))

    def fused_rope(self, device: torch.device) -> bool:
        return self.kernels.active(device) and fused.rope_fits(self.head_dim)

    def fused_attention(self, device: torch.device) -> bool:
        # the kernel's matrix products need a head of 16 or more
        return self.fused_rope(device) and self.head_dim >= 16 and \
            self.kernels.attention_active(device)

    def frame(self, rotary: Rotary, positions: Tensor, start: Start, mask: Tensor,
              dtype: torch.dtype, slots: int) -> Frame:
        """The shared inputs of a forward's attentions over a cache of `slots` slots."""
        dev = mask.device
        rope = rotary.table(slots, dtype, dev) if self.fused_rope(dev) else rotary(positions, dtype)
        bias = None if self.fused_attention(dev) else self.bias(mask, dtype)
        return Frame(start, positions, mask, rope, bias)

    def bias(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """mask: [S, W] bool (True = may attend) -> [rep*S, W] additive bias for the folded query
        rows (0 or -inf, what SDPA makes of a boolean mask), built once per forward."""
        rep = self.n_heads // self.n_kv
        rows = mask if rep == 1 else mask.repeat(rep, 1)
        bias = torch.zeros(rows.shape, dtype=dtype, device=mask.device)
        return bias.masked_fill_(~rows, -math.inf)

    def forward(self, x: Tensor, frame: Frame, kv: "KVCache", layer: int) -> Tensor:
        # x: [1, S, in]; the new tokens' K/V go to cache slots frame.start..
        s, rep, d, width = x.shape[1], self.n_heads // self.n_kv, self.head_dim, frame.mask.shape[1]
        if self.fused_rope(x.device):
            kv.check(frame.start, s, width)
            k_cache, v_cache = kv.layer(layer)
            q = self.rotate_into_cache(x[0], frame, k_cache, v_cache)  # [H, S, D]
            if frame.bias is None:
                out = fused.ops().attention(q, k_cache, v_cache, frame.mask, frame.start)
                return self.o_proj(out[None])
            keys, values = k_cache[:, :width][None], v_cache[:, :width][None]
        else:
            cos, sin = frame.rope
            q = self.q_proj(x).view(1, s, self.n_heads, d).transpose(1, 2)  # [1, H, S, D]
            k = self.k_proj(x).view(1, s, self.n_kv, d).transpose(1, 2)  # [1, Hkv, S, D]
            v = self.v_proj(x).view(1, s, self.n_kv, d).transpose(1, 2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            keys, values = kv.write(layer, frame.start, k, v, width)  # [1, Hkv, W, D] views
        q = q.reshape(1, self.n_kv, rep * s, d)  # head h = g*rep + r -> group g, row r*S + i
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=frame.bias)
        return self.o_proj(out.reshape(1, self.n_heads, s, d).transpose(1, 2).reshape(1, s, -1))

    def rotate_into_cache(self, x: Tensor, frame: Frame, k_cache: Tensor,
                          v_cache: Tensor) -> Tensor:
        """The fused path's projections and rotary: x [S, in] -> queries [H, S, D]; the keys
        and values go straight to their slots of the layer's cache (`KVCache.layer`)."""
        linears = (self.q_proj, self.k_proj, self.v_proj)
        if fused.stacked(self.qkv, linears):
            q, k, v = F.linear(x, self.qkv).split([lin.out_features for lin in linears], dim=-1)
        else:
            q, k, v = (lin(x) for lin in linears)
        return fused.ops().rope_into_cache(q, k, v, frame.positions, *frame.rope, k_cache,
                                           v_cache, frame.start)


class KVCache(nn.Module):
    """All layers' keys and values in one preallocated buffer [layers, 2, Hkv, max_len, D].

    Writes go to slots given by a start that may live on the device (`index_copy_`), reads are
    views of a fixed window, and compaction gathers then scatters along the slot axis: no
    operation here needs the cache length on the host."""

    def __init__(self, layers: int, n_kv: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("data", torch.zeros(layers, 2, n_kv, max_len, head_dim, dtype=dtype,
                                                 device=device), persistent=False)
        self._layers: list[tuple[Tensor, Tensor]] = []  # views of `data`, per layer
        self._layers_of: Optional[weakref.ref] = None  # the `data` they view

    def layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """The layer's keys and values, [Hkv, max_len, D] each: views made once per buffer
        (again after a move or cast replaced `data`), not two indexing ops per forward."""
        if self._layers_of is None or self._layers_of() is not self.data:
            self._layers = [(d[0], d[1]) for d in self.data]
            self._layers_of = weakref.ref(self.data)
        return self._layers[layer]

    def fits(self, max_len: int, weight: Tensor) -> bool:
        """Whether this cache holds max_len slots in `weight`'s dtype on its device."""
        return self.max_len >= max_len and self.data.dtype == weight.dtype and \
            self.data.device == weight.device

    def write(self, layer: int, start: Start, k: Tensor, v: Tensor,
              width: int) -> tuple[Tensor, Tensor]:
        """Store k/v [1, Hkv, S, D] at slots start..start+S; return the layer's first `width`
        slots of keys/values ([1, Hkv, width, D] views)."""
        slots = start + torch.arange(k.shape[2], device=k.device)  # [S]
        keys, values = self.window(layer, start, k.shape[2], width)
        k_cache, v_cache = self.layer(layer)
        k_cache.index_copy_(1, slots, k[0])
        v_cache.index_copy_(1, slots, v[0])
        return keys, values

    def check(self, start: Start, new: int, width: int) -> None:
        """Raises unless `new` tokens from `start` (a host int; a device start is not read) and
        a window of `width` slots fit the cache."""
        end = start + new if isinstance(start, int) else new
        if max(end, width) > self.max_len:
            raise RuntimeError(f"KV cache overflow: need {max(end, width)} slots, have "
                               f"{self.max_len}; raise max_length")

    def window(self, layer: int, start: Start, new: int, width: int) -> tuple[Tensor, Tensor]:
        """The layer's first `width` slots of keys and values ([1, Hkv, width, D] views), after
        checking that `new` tokens from `start` and the window fit the cache."""
        self.check(start, new, width)
        k_cache, v_cache = self.layer(layer)
        return k_cache[:, :width][None], v_cache[:, :width][None]

    def compact(self, start: Start, slots: Tensor) -> None:
        """Move the K/V of `slots` (absolute) to start..start+len(slots), all layers at once."""
        dest = start + torch.arange(slots.shape[0], device=slots.device)
        self.data.index_copy_(3, dest, self.data.index_select(3, slots))


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args, args.hidden_size)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x: Tensor, normed: Tensor, frame: Frame, kv: "KVCache",
                layer: int) -> tuple[Tensor, Tensor]:
        """x: the layer's input, normed: input_layernorm(x). Returns the output as a pair whose
        sum it is (x after attention, MLP output): the next norm adds them in its own launch."""
        x, h = self.post_attention_layernorm.after_add(x, self.self_attn(normed, frame, kv, layer))
        return x, self.mlp(h)


class LlamaBody(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


def stack_projections(model: nn.Module) -> None:
    """Stack the q/k/v weights of every attention and the gate/up weights of every MLP in
    `model` (one matrix product each on the fused path; see `fused.stack_weights`)."""
    for module in model.modules():
        if isinstance(module, (Attention, MLP)):
            module.stack()


class BaseOutput(NamedTuple):
    logits: Tensor  # [1, S', vocab] (S' = S, or 1 with last_only)
    aux_hidden: Tensor  # [1, S, 3H]: inputs of the `aux_layers` (default 2, L//2, L-3), in order


def causal_mask(start: Start, length: int, device: torch.device,
                width: Optional[int] = None) -> Tensor:
    """[length, width] bool: new token i (at slot start + i) sees slots <= start + i. `width`
    defaults to start + length (an int start); a device `start` needs an explicit window."""
    cols = torch.arange(start + length if width is None else width, device=device)
    rows = torch.arange(length, device=device)
    return cols[None, :] <= (start + rows)[:, None]


def tree_attention_mask(start: Start, tree_mask: Tensor, width: Optional[int] = None) -> Tensor:
    """[T+1, width] bool: every tree node (at slots start..start+T) sees the whole prefix plus its
    ancestors; slots past the tree are masked. `width` defaults to start + T+1 (an int start)."""
    n = tree_mask.shape[0]
    cols = torch.arange(start + n if width is None else width, device=tree_mask.device)  # [W]
    rel = cols - start  # tree node at each slot, negative in the prefix
    inside = (rel >= 0) & (rel < n)
    tree = tree_mask.gather(1, rel.clamp(0, n - 1)[None, :].expand(n, -1))  # [T+1, W]
    return (rel < 0)[None, :] | (tree & inside[None, :])


class LlamaForCausalLM(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.num_hidden_layers < 3:
            raise ConfigError(f"EAGLE-3 reads the inputs of layers 2, L//2 and L-3: the base needs "
                              f"at least 3 layers, the config has {args.num_hidden_layers}")
        self.args = args
        self.model = LlamaBody(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.rotary = Rotary(args.rope, args.head_dim)
        self.kv: Optional[KVCache] = None
        self.aux_layers = args.aux_layers  # whose inputs feed the draft head; see set_aux_layers

    def set_aux_layers(self, layers: tuple) -> None:
        """Feed the draft head the inputs of these layers (a head's config may name other ones
        than the default; `config.aux_layer_inputs` derives and checks them)."""
        self.aux_layers = tuple(layers)

    def tie_weights(self) -> None:
        if self.args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def setup_cache(self, max_len: int) -> KVCache:
        """(Re)allocate the static cache when its size, dtype or device no longer fits."""
        w = self.lm_head.weight
        if self.kv is None or not self.kv.fits(max_len, w):
            self.kv = None  # free the old buffer before allocating the new one
            a = self.args
            self.kv = KVCache(a.num_hidden_layers, a.num_key_value_heads, a.head_dim, max_len,
                              w.dtype, w.device)
        return self.kv

    def forward(self, input_ids: Tensor, positions: Tensor, start: Start, mask: Tensor,
                last_only: bool = False) -> BaseOutput:
        """input_ids: [1, S] written to cache slots start..start+S; positions: [S] rope positions;
        mask: [S, W] over the cache's first W slots (the attention window)."""
        x = self.model.embed_tokens(input_ids)  # [1, S, H]
        frame = self.model.layers[0].self_attn.frame(self.rotary, positions, start, mask, x.dtype,
                                                     self.kv.max_len)  # shared by all layers
        aux_at = self.aux_layers
        saved, delta = {}, None  # each layer's output is x + delta
        for i, layer in enumerate(self.model.layers):
            x, normed = layer.input_layernorm.after_add(x, delta)
            if i in aux_at:
                saved[i] = x
            x, delta = layer(x, normed, frame, self.kv, i)
        if last_only:
            x, delta = x[:, -1:], delta[:, -1:]
        normed = self.model.norm.after_add(x, delta)[1]
        return BaseOutput(self.lm_head(normed), torch.cat([saved[i] for i in aux_at], dim=-1))

"""Tensor parallelism over torch.distributed: a Llama base sharded across the ranks of one group.

Launched by `torchrun --nproc_per_node=N` (WORLD_SIZE, RANK, LOCAL_RANK in the environment), each
rank holds 1/N of every decoder layer, Megatron-style:
- q/k/v and gate/up are column-parallel: a rank keeps the output rows of its attention heads, its
  KV heads and its share of the MLP's intermediate features, so attention and the SiLU product run
  on local heads and features with no communication;
- o_proj and down_proj are row-parallel (`RowParallelLinear`): a rank keeps the matching input
  columns and its product is a partial sum; one all-reduce after attention and one after the MLP
  give every rank the whole output;
- a model with fewer KV heads than ranks keeps its KV heads whole: each rank holds the one KV head
  its query heads read (N a multiple of the KV head count), as vLLM does;
- the embedding, the norms, lm_head and the EAGLE-3 draft head are replicated.

After each all-reduce every rank holds the same hidden states, hence the same logits, so greedy
acceptance needs no broadcast: every rank accepts the same tokens and the ranks stay in lockstep
(the answer runner checks it). NCCL on CUDA (device cuda:LOCAL_RANK), gloo on the CPU.

The KV cache is sharded with the heads (`ModelArgs` of a rank count its own heads), and the fused
path stacks the weights of a rank's shards (`stack_projections` runs after loading).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from .checkpoint import IGNORED_SUFFIXES, CheckpointError
from .config import ConfigError, ModelArgs
from .llama import LlamaForCausalLM

log = logging.getLogger(__name__)

# sharded decoder weights: projection name -> (dimension split, what it is split by)
SPLITS = {"q_proj": (0, "heads"), "k_proj": (0, "kv_heads"), "v_proj": (0, "kv_heads"),
          "o_proj": (1, "heads"), "gate_proj": (0, "intermediate"), "up_proj": (0, "intermediate"),
          "down_proj": (1, "intermediate")}


def shard_args(args: ModelArgs, world: int) -> ModelArgs:
    """The shapes one rank of `world` holds: its attention heads, KV heads and intermediate
    features (hidden size, vocabulary and head size unchanged). Raises `ConfigError` when the
    model does not divide."""
    heads, kv, inter = args.num_attention_heads, args.num_key_value_heads, args.intermediate_size
    problems = []
    if heads % world:
        problems.append(f"num_attention_heads {heads}")
    if kv % world and world % kv:
        problems.append(f"num_key_value_heads {kv} (neither a multiple nor a divisor of it)")
    if inter % world:
        problems.append(f"intermediate_size {inter}")
    if problems:
        raise ConfigError(f"tensor parallel over {world} ranks needs the model's sizes divisible by "
                          f"{world}: {', '.join(problems)} is not; run with a world size "
                          f"(--nproc_per_node) that divides them")
    return replace(args, num_attention_heads=heads // world,
                   num_key_value_heads=max(kv // world, 1), intermediate_size=inter // world,
                   head_dim=args.head_dim)


class Span(NamedTuple):
    dim: int  # 0: output rows, 1: input columns
    start: int
    length: int
    full: int  # the unsharded size along `dim`


class RowParallelLinear(nn.Linear):
    """A bias-free linear layer holding its rank's input columns: the local product is a partial
    sum, and one in-place all-reduce over `group` gives every rank the whole output. CUDA graphs
    capture the all-reduce with the product (NCCL collectives are capturable)."""

    def __init__(self, in_features: int, out_features: int, group: Optional[dist.ProcessGroup],
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight)
        dist.all_reduce(out, group=self.group)
        return out


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group: rank of world. `group` None: the default
    group (loading and shape checks need none: only forwards communicate)."""
    rank: int
    world: int
    group: Optional[dist.ProcessGroup] = None

    def span(self, name: str, full: ModelArgs) -> Optional[Span]:
        """Which part of the base checkpoint tensor `name` this rank holds; None: all of it."""
        parts = name.split(".")
        if parts[0] != "model" or parts[1] != "layers" or len(parts) < 3 or parts[-2] not in SPLITS:
            return None
        dim, by = SPLITS[parts[-2]]
        d = full.head_dim
        if by == "heads":
            size = full.num_attention_heads // self.world * d
            return Span(dim, self.rank * size, size, full.num_attention_heads * d)
        if by == "intermediate":
            size = full.intermediate_size // self.world
            return Span(dim, self.rank * size, size, full.intermediate_size)
        kv = full.num_key_value_heads
        # more ranks than KV heads: ranks sharing a KV head (their query heads' group) keep it whole
        head = self.rank * kv // self.world
        per = max(kv // self.world, 1)
        return Span(dim, head * d, per * d, kv * d)

    def base_model(self, full: ModelArgs) -> LlamaForCausalLM:
        """A base model of this rank's shard shapes, built where torch's default device is (meta
        for loading), with row-parallel o_proj and down_proj."""
        model = LlamaForCausalLM(shard_args(full, self.world))
        for layer in model.model.layers:
            for owner, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
                lin = getattr(owner, name)
                setattr(owner, name, RowParallelLinear(lin.in_features, lin.out_features, self.group,
                                                       lin.weight.device, lin.weight.dtype))
        return model

    def take(self, name: str, shape: tuple, full: ModelArgs, read) -> Tensor:
        """This rank's part of tensor `name` (of checkpoint shape `shape`): `read(index)` reads
        the tensor at a tuple of slices (or None: all of it)."""
        span = self.span(name, full)
        if span is None:
            return read(None)
        if shape[span.dim] != span.full:
            expected = list(shape)
            expected[span.dim] = span.full
            raise CheckpointError(f"mis-shaped tensor {name}: checkpoint {tuple(shape)} vs model "
                                  f"{tuple(expected)}")
        index = (slice(None),) * span.dim + (slice(span.start, span.start + span.length),)
        return read(index)

    def read_shards(self, files: list[Path], full: ModelArgs,
                    device: torch.device) -> dict[str, Tensor]:
        """This rank's part of every tensor of a base checkpoint, read slice by slice (safetensors)
        or from a memory-mapped file (.bin), each moved to `device` as it is read."""
        state: dict[str, Tensor] = {}
        for path in files:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for k in f.keys():
                        part = f.get_slice(k)
                        state[k] = self.take(k, tuple(part.get_shape()), full, lambda index, part=part:
                                             part[index] if index else part[:]).to(device)
            else:
                tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                for k, v in tensors.items():
                    state[k] = self.take(k, tuple(v.shape), full, lambda index, v=v:
                                         v[index] if index else v).clone().to(device)
        return {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}


def current() -> Optional[TensorParallel]:
    """The tensor-parallel group this process joined (`init_from_env`), or None alone."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return TensorParallel(dist.get_rank(), dist.get_world_size())


def world_size() -> int:
    """Ranks sharing the model: 1 without a group."""
    tp = current()
    return 1 if tp is None else tp.world


def init_from_env(device: torch.device) -> torch.device:
    """Join the group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, each rank on
    cuda:LOCAL_RANK, gloo on the CPU. Returns this rank's device (`device` itself alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index not in (None, local):
            raise ConfigError(f"under torchrun each rank runs on cuda:LOCAL_RANK; --device {device} "
                              f"names another GPU: pass --device cuda (or auto)")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"rank with LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} "
                              f"visible): run at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"tensor parallel runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        log.info("rank %d of %d joined its tensor-parallel group (%s, %s)", dist.get_rank(), world,
                 backend, device)
    return device


LEFT_KEY = "eagle/tp/left"


def leave() -> None:
    """Leave the group after the last collective (no-op alone): a barrier, then `depart` on the
    group's store, then the teardown."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        depart(dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size())
        dist.destroy_process_group()


def depart(store: dist.Store, rank: int, world: int, key: str = LEFT_KEY) -> None:
    """Return when this rank may tear its group down. A gloo rank that tears down while a peer
    is still finishing a collective can abort the peer's process, and the last collective (a
    barrier too) always ends on one rank before another: so every rank first waits, on the
    store, until all have returned from it. Rank 0 then waits until every other rank has made
    its last store call, since under a plain launch (MASTER_ADDR) it hosts the store and its
    exit ends it (torchrun's store lives in the launcher)."""
    back = f"{key}/back"
    n = arrive(store, back, world)
    store.wait([f"{back}/{n}"])
    if world == 1:
        return
    gone = f"{key}/gone"
    if rank:
        arrive(store, gone, world - 1)
    else:
        store.wait([f"{gone}/{n}"])


def arrive(store: dist.Store, key: str, members: int) -> int:
    """Count this process in at `key` and return its round: the process that completes round n
    of `members` sets KEY/n. Rounds keep a group made again on the same store from reading an
    earlier group's count."""
    count = store.add(key, 1)
    n = (count - 1) // members
    if count % members == 0:
        store.set(f"{key}/{n}", "1")
    return n


def broadcast(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (a picklable object; itself alone)."""
    if current() is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_agreement(value: object, what: str) -> None:
    """Raise on every rank when the ranks' `value`s (picklable, comparable) differ: ranks that
    accepted different tokens would deadlock or write an answer only one of them computed."""
    tp = current()
    if tp is None:
        return
    values: list = [None] * tp.world
    dist.all_gather_object(values, value)
    differ = [r for r in range(tp.world) if values[r] != values[0]]
    if differ:
        raise RuntimeError(f"tensor-parallel ranks disagree on {what}: rank(s) {differ} differ "
                           f"from rank 0; the sharded forwards are not computing the same logits")


@torch.no_grad()
def randomize_shards_(base: LlamaForCausalLM, full: ModelArgs, tp: TensorParallel, seed: int,
                      std: float = 0.02) -> None:
    """`presets.randomize_` of the whole model, each rank keeping its part: one generator draws
    the same whole tensors in the same order, so a preset's weights do not depend on the world
    size."""
    gen = torch.Generator(device=next(base.parameters()).device).manual_seed(seed)
    for name, p in base.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
            continue
        span = tp.span(name, full)
        shape = list(p.shape)
        if span is not None:
            shape[span.dim] = span.full
        whole = torch.randn(shape, generator=gen, device=p.device, dtype=torch.float32) * std
        p.copy_(whole if span is None else whole.narrow(span.dim, span.start, span.length))


def build_random(preset: str, dtype: torch.dtype, device: torch.device, seed: int = 0,
                 draft: bool = True):
    """`presets.build_random` for this process: alone, the whole model; in a group, this rank's
    shard of the same weights (never the whole base on one device) and the whole head."""
    from . import presets

    tp = current()
    if tp is None or preset not in presets.PRESETS:
        return presets.build_random(preset, dtype, device, seed, draft)
    full, head_args = presets.PRESETS[preset]
    with torch.device("meta"):
        base = tp.base_model(full).to(dtype)
    base.to_empty(device=device)
    randomize_shards_(base, full, tp, seed)
    return base.eval(), presets.random_head(head_args, dtype, device, seed) if draft else None

"""Tensor parallel on the CPU with 2 gloo ranks: shards of every weight, token-identical answers to
one process (the tiny checkpoints through torchrun, a preset whose KV heads split through
torch.multiprocessing), ranks that disagree or fail stopping the run."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from eagle import parallel
from eagle.checkpoint import load_base
from eagle.config import ConfigError, ModelArgs, TreeConfig
from eagle.ea_model import EaModel
from eagle.presets import PRESETS, build_random
from evaluation.answers import answer_problem, iter_lines
from evaluation.gen_cli import main as gen_main

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
TREE = TreeConfig(16, 3, 4)
PROMPT = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
NEW = 12

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shard_args_divide_heads_kv_heads_and_mlp():
    base70, head70 = PRESETS["llama3.3-70b"]
    a = parallel.shard_args(base70, 2)
    assert (a.num_attention_heads, a.num_key_value_heads, a.intermediate_size, a.head_dim,
            a.hidden_size) == (32, 4, 14336, 128, 8192)
    a = parallel.shard_args(base70, 16)  # more ranks than KV heads: each keeps one whole
    assert (a.num_attention_heads, a.num_key_value_heads) == (4, 1)
    with pytest.raises(ConfigError, match=r"divisible by 3: num_attention_heads 64.*--nproc_per_node"):
        parallel.shard_args(base70, 3)
    odd = ModelArgs(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                    num_attention_heads=6, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="num_key_value_heads 3"):
        parallel.shard_args(odd, 2)


def expected_part(name: str, full: torch.Tensor, args: ModelArgs, rank: int) -> torch.Tensor:
    """Rank `rank`'s part of a whole weight, from what each rank computes: its own query heads,
    the KV heads those read, its share of the MLP's features."""
    h, kv, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
    mine = list(range(rank * h // WORLD, (rank + 1) * h // WORLD))  # query heads
    groups = sorted({q // (h // kv) for q in mine})  # the KV heads they read
    kind = name.split(".")[-2]
    if kind == "q_proj":
        return full.view(h, d, -1)[mine].reshape(-1, full.shape[1])
    if kind in ("k_proj", "v_proj"):
        return full.view(kv, d, -1)[groups].reshape(-1, full.shape[1])
    if kind == "o_proj":
        return full.view(full.shape[0], h, d)[:, mine].reshape(full.shape[0], -1)
    if kind in ("gate_proj", "up_proj"):
        return full.chunk(WORLD, 0)[rank]
    if kind == "down_proj":
        return full.chunk(WORLD, 1)[rank]
    return full


def check_shards(models: list, whole: dict, args: ModelArgs) -> None:
    for rank, model in enumerate(models):
        state = model.state_dict()
        assert set(state) == set(whole)
        for name, full in whole.items():
            assert torch.equal(state[name], expected_part(name, full, args, rank)), (rank, name)
        for layer in model.model.layers:
            assert isinstance(layer.self_attn.o_proj, parallel.RowParallelLinear)
            assert isinstance(layer.mlp.down_proj, parallel.RowParallelLinear)


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_every_weight_of_a_checkpoint_is_sharded_on_load(tiny_ckpt, tmp_path, layout):
    src = tiny_ckpt / "base"
    args = ModelArgs.from_json(src / "config.json")
    assert (args.num_attention_heads, args.num_key_value_heads) == (2, 1)  # one KV head: kept whole
    if layout == "bin":
        shutil.copy(src / "config.json", tmp_path / "config.json")
        torch.save(load_file(src / "model.safetensors"), tmp_path / "pytorch_model.bin")
        src = tmp_path
    whole = load_base(src, torch.float32, torch.device("cpu")).state_dict()
    shards = [load_base(src, torch.float32, torch.device("cpu"), parallel.TensorParallel(r, WORLD))
              for r in range(WORLD)]
    check_shards(shards, whole, args)
    assert shards[0].kv is None and shards[0].setup_cache(8).data.shape[2] == 1  # [L, 2, Hkv, ...]


def test_every_weight_of_a_preset_is_cut_from_the_same_random_tensors():
    args = PRESETS["tiny"][0]
    assert (args.num_attention_heads, args.num_key_value_heads) == (4, 2)  # KV heads split
    whole = build_random("tiny", torch.float32, torch.device("cpu"), seed=3, draft=False)[0]
    shards = []
    for rank in range(WORLD):
        tp = parallel.TensorParallel(rank, WORLD)
        with torch.device("meta"):
            shard = tp.base_model(args)
        shard.to_empty(device="cpu")
        parallel.randomize_shards_(shard, args, tp, seed=3)
        shards.append(shard)
    check_shards(shards, whole.state_dict(), args)


@pytest.mark.parametrize("world", [2, 3])
def test_no_rank_departs_before_all_arrive_and_rank_0_departs_last(world):
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=20))  # a rank never released fails instead of hanging
    for group in range(2):  # a second group on the same store: its own rounds
        ranks = [threading.Thread(target=parallel.depart, args=(store, r, world)) for r in range(world)]
        for thread in ranks[:-1]:
            thread.start()
        time.sleep(0.3)
        assert all(thread.is_alive() for thread in ranks[:-1])  # each waits for the last rank
        ranks[-1].start()
        for thread in ranks:
            thread.join(20)
            assert not thread.is_alive()
        assert store.add(f"{parallel.LEFT_KEY}/back", 0) == (group + 1) * world
        assert store.add(f"{parallel.LEFT_KEY}/gone", 0) == (group + 1) * (world - 1)


def test_rank_0_waits_for_every_other_rank_to_be_gone():
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=20))
    store.set(f"{parallel.LEFT_KEY}/back/0", "1")  # every rank is back from the barrier
    store.add(f"{parallel.LEFT_KEY}/back", 1)
    zero = threading.Thread(target=parallel.depart, args=(store, 0, 2))
    zero.start()
    zero.join(0.3)
    assert zero.is_alive()  # rank 1 has not made its last store call
    parallel.arrive(store, f"{parallel.LEFT_KEY}/gone", 1)
    zero.join(20)
    assert not zero.is_alive()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preset_rank(rank: int, port: int, out: Path) -> None:
    """One rank of the preset run: its shard of `tiny`, EAGLE and plain tokens, the agreement
    check on values that differ."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    parallel.init_from_env(torch.device("cpu"))
    base, head = parallel.build_random("tiny", torch.float32, torch.device("cpu"))
    model = EaModel(base, head, TREE, "vectorized", None, max_length=256)
    eagle = model.generate(PROMPT, max_new_tokens=NEW).new_token_ids
    plain = model.naive_generate(PROMPT, max_new_tokens=NEW).new_token_ids
    parallel.check_agreement(eagle + plain, "the tokens")
    try:
        parallel.check_agreement(rank, "the rank")
        disagreement = None
    except RuntimeError as exc:
        disagreement = str(exc)
    (out / f"rank{rank}.json").write_text(json.dumps({"eagle": eagle, "plain": plain,
                                                      "disagreement": disagreement}))
    parallel.leave()


@pytest.mark.slow
def test_two_ranks_decode_a_preset_as_one_process_does(tmp_path):
    base, head = build_random("tiny", torch.float32, torch.device("cpu"))
    model = EaModel(base, head, TREE, "vectorized", None, max_length=256)
    eagle = model.generate(PROMPT, max_new_tokens=NEW).new_token_ids
    plain = model.naive_generate(PROMPT, max_new_tokens=NEW).new_token_ids
    mp.spawn(preset_rank, args=(free_port(), tmp_path), nprocs=WORLD)
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (got["eagle"], got["plain"]) == (eagle, plain), rank
        assert "ranks disagree on the rank: rank(s) [1] differ from rank 0" in got["disagreement"]
    assert eagle == plain  # lossless greedy


def torchrun(*args: str, env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def gen_args(ckpt: Path, question_file: Path, answer_file: Path) -> list[str]:
    return ["--base-model-path", str(ckpt / "base"), "--question-file", str(question_file),
            "--answer-file", str(answer_file), "--question-end", "2", "--max-new-token", "10",
            "--device", "cpu", "--warmup", "0"]


def token_ids(path: Path) -> list:
    return [c["detail"]["token_ids"] for _, obj in iter_lines(path) for c in obj["choices"]]


@pytest.mark.slow
def test_torchrun_answers_match_one_process(tiny_ckpt, question_file, tmp_path):
    one, tp = tmp_path / "one", tmp_path / "tp"
    extra = ["--ea-model-path", str(tiny_ckpt / "draft"), "--mask-impl", "rebuild", "--with-baseline"]
    assert gen_main("eagle", gen_args(tiny_ckpt, question_file, one / "{impl}.jsonl") + extra) == 0
    run = torchrun("evaluation/gen_ea_answer_llama3chat.py",
                   *gen_args(tiny_ckpt, question_file, tp / "{impl}.jsonl"), *extra, env={})
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in tp.iterdir()) == ["baseline.jsonl", "rebuild.jsonl"]  # rank 0's
    for name in ("rebuild.jsonl", "baseline.jsonl"):
        assert token_ids(tp / name) == token_ids(one / name), name
        settings = [obj["settings"] for _, obj in iter_lines(tp / name)]
        assert [s["tp_world_size"] for s in settings] == [WORLD, WORLD]
        assert [obj["settings"]["tp_world_size"] for _, obj in iter_lines(one / name)] == [1, 1]


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_and_the_file_keeps_whole_lines(tiny_ckpt, question_file,
                                                                      tmp_path):
    answers = tmp_path / "baseline.jsonl"
    run = torchrun("tests/tp_failing_rank.py", "evaluation/gen_baseline_answer_llama3chat.py",
                   *gen_args(tiny_ckpt, question_file, answers),
                   env={"TP_FAIL_RANK": "1", "TP_FAIL_AT": "3"})  # question 2, turn 1
    assert run.returncode != 0
    assert "RuntimeError: injected failure on rank 1" in run.stderr
    assert answers.read_bytes().endswith(b"\n")
    lines = [obj for _, obj in iter_lines(answers)]
    assert [obj["question_id"] for obj in lines] == [81]
    assert all(answer_problem(obj) is None for obj in lines)


def test_bench_tp_counts_the_weights_a_rank_reads(tmp_path):
    from benchmarks import tp as bench

    args = PRESETS["tiny"][0]
    whole = build_random("tiny", torch.float32, torch.device("cpu"), draft=False)[0]
    with torch.device("meta"):
        shard = parallel.TensorParallel(0, WORLD).base_model(args)
    split = sum(p.numel() for n, p in whole.named_parameters() if n.split(".")[-2] in parallel.SPLITS)
    rest = sum(p.numel() for p in whole.parameters()) - split - args.vocab_size * args.hidden_size
    expected = 4 * (split // WORLD + rest + args.hidden_size)  # float32; one embedding row
    assert bench.read_bytes(type("Model", (), {"base": shard})) == expected


@pytest.mark.no_cuda
def test_bench_tp_refuses_without_cuda(tmp_path):
    from benchmarks import tp as bench

    assert bench.main(["--out", str(tmp_path / "tp.json")]) == 2

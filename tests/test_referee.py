"""The divergence referee on the tiny checkpoints: identical files, a substituted token (a real
difference, the right side named), a constructed near-tie, sampling runs, unlike or missing inputs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluation import referee
from evaluation.gen_cli import main as gen_main
from evaluation.referee_judge import FOLLOWS, NEAR_TIE, REAL, tie_margin, ulp
from evaluation.referee_model import batches, load_reference, next_token_logits

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def generate(ckpt: Path, question_file: Path, out: Path, *extra: str, questions=("0", "2")) -> dict:
    """Baseline and EAGLE (rebuild) answers (questions 81-82 by default), interleaved in one process."""
    argv = ["--base-model-path", str(ckpt / "base"), "--ea-model-path", str(ckpt / "draft"),
            "--question-file", str(question_file), "--answer-file", str(out / "{impl}.jsonl"),
            "--question-begin", questions[0], "--question-end", questions[1], "--max-new-token", "8",
            "--device", "cpu", "--warmup", "0", "--mask-impl", "rebuild", "--with-baseline", *extra]
    assert gen_main("eagle", argv) == 0
    return {label: out / f"{label}.jsonl" for label in ("baseline", "rebuild")}


@pytest.fixture(scope="module")
def runs(tiny_ckpt, question_file, tmp_path_factory) -> dict:
    return generate(tiny_ckpt, question_file, tmp_path_factory.mktemp("referee_runs"))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def substitute(src: Path, dst: Path, qid: int, turn: int, pos: int, token: int,
               text: str = None) -> Path:
    """A copy of `src` whose token at (question, turn, position) is `token` (and reply text `text`)."""
    rows = lines(src)
    choice = next(r for r in rows if r["question_id"] == qid)["choices"][0]
    choice["detail"]["token_ids"][turn - 1][pos] = token
    if text is not None:
        choice["turns"][turn - 1] = text
    return write(dst, rows)


def judge(a: Path, b: Path, tmp_path: Path, question_file: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "referee.json"
    code = referee.main([str(a), str(b), "--question-file", str(question_file), "--device", "cpu",
                         "--json", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else {})


def test_identical_outputs_have_no_divergence(runs, tmp_path, question_file):
    code, report = judge(runs["baseline"], runs["rebuild"], tmp_path, question_file)
    assert (code, report["divergences"], report["counts"]) == (0, [], {})


@pytest.mark.parametrize("swap", [False, True])
def test_substituted_token_is_a_real_difference_of_the_right_side(runs, tmp_path, question_file,
                                                                  swap):
    ids = lines(runs["rebuild"])[1]["choices"][0]["detail"]["token_ids"][1]  # question 82, turn 2
    changed = substitute(runs["rebuild"], tmp_path / "changed.jsonl", 82, 2, 3, (ids[3] + 7) % 1040)
    a, b = (changed, runs["baseline"]) if swap else (runs["baseline"], changed)
    code, report = judge(a, b, tmp_path, question_file)
    (div,) = report["divergences"]
    original, substituted = (1, 0) if swap else (0, 1)
    assert code == 1 and div["class"] == REAL
    assert div["departed"] == [["A", "B"][substituted]]
    assert (div["question_id"], div["turn"], div["position"]) == (82, 2, 3)
    # the prefix is the generator's: the greedy token is the referee's argmax there
    assert div["ranks"][original] == 1 and div["top"] == ids[3]
    assert div["ranks"][substituted] >= 2
    assert div["logits"][original] - div["logits"][substituted] > 100 * div["margin"]
    assert report["verdict"].startswith("referee: REAL DIFFERENCES: question 82 turn 2")


def test_a_later_turn_after_a_changed_reply_follows_it(runs, tmp_path, question_file):
    rows = lines(runs["rebuild"])
    choice = rows[0]["choices"][0]
    t1, t2 = choice["detail"]["token_ids"]
    t1[0], t2[0] = (t1[0] + 1) % 1040, (t2[0] + 1) % 1040
    choice["turns"][0] = "another reply"
    code, report = judge(runs["baseline"], write(tmp_path / "b.jsonl", rows), tmp_path, question_file)
    first, second = report["divergences"]
    assert code == 1 and (first["turn"], first["class"]) == (1, REAL)
    assert (second["turn"], second["class"], second["ranks"]) == (2, FOLLOWS, [None, None])


def near_tie_checkpoint(ckpt: Path, out: Path, prefix: list[int], token: int, rival: int,
                        fraction: float) -> float:
    """Copy the tiny base to `out`, its lm_head row `rival` set so that its logit after `prefix`
    lies `fraction` near-tie margins below `token`'s: row_rival = row_token - gap * h / |h|^2,
    h the final normed hidden state there. Returns the margin (float32 runs, 8 ulps)."""
    shutil.copytree(ckpt / "base", out)
    model = load_reference(str(out), torch.float32, torch.float64, torch.device("cpu"), 0)
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([prefix])).last_hidden_state[0, -1]  # [H]
        margin = tie_margin("float32", model.lm_head(h), 8)
    weights = load_file(out / "model.safetensors")
    rows = weights["lm_head.weight"]
    rows[rival] = (rows[token].double() - fraction * margin * h / h.dot(h)).float()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return margin


@pytest.mark.parametrize("fraction, klass", [(0.25, NEAR_TIE), (4.0, REAL)])
def test_constructed_near_tie(runs, tiny_ckpt, tmp_path, question_file, fraction, klass):
    """Two logits set `fraction` margins apart: a quarter margin is a near-tie, four margins is not."""
    from transformers import AutoTokenizer

    from evaluation.generate import chat_messages, chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))
    questions = {r["question_id"]: r["turns"] for r in lines(question_file)}
    ids = lines(runs["rebuild"])[0]["choices"][0]["detail"]["token_ids"][0]  # question 81, turn 1
    pos, rival = 4, 1039  # a token in neither the prompt nor the answer
    prefix = chat_prompt_ids(tokenizer, chat_messages(questions[81][:1], [])) + ids[:pos]
    assert rival not in prefix
    base = tmp_path / "tie"
    margin = near_tie_checkpoint(tiny_ckpt, base, prefix, ids[pos], rival, fraction)
    changed = substitute(runs["rebuild"], tmp_path / "b.jsonl", 81, 1, pos, rival)
    code, report = judge(runs["baseline"], changed, tmp_path, question_file,
                         "--base-model-path", str(base))
    (div,) = report["divergences"]
    assert div["margin"] == margin and div["class"] == klass and code == (klass == REAL)
    assert div["ranks"] == [1, 2]
    # the float32 row rounds the constructed gap by a fraction of an ulp
    assert div["logits"][0] - div["logits"][1] == pytest.approx(fraction * margin, abs=margin / 10)


def test_sampling_runs_are_explained_not_judged(tiny_ckpt, question_file, tmp_path, monkeypatch):
    files = generate(tiny_ckpt, question_file, tmp_path, "--temperature", "0.8", "--seed", "5")

    def refuse(*args, **kwargs):
        raise AssertionError("the referee loaded a model for sampling runs")

    monkeypatch.setattr("evaluation.referee_model.load_reference", refuse)
    code, report = judge(files["baseline"], files["rebuild"], tmp_path, question_file)
    assert code == 0 and "temperature 0.8" in report["sampling"] and "divergences" not in report


@pytest.mark.parametrize("key, value", [("tokenizer", "/elsewhere/tokenizer"), ("dtype", "float16"),
                                        ("base_model", "/elsewhere/base"), ("chat", "other")])
def test_unlike_runs_are_refused(runs, tmp_path, question_file, caplog, key, value):
    rows = lines(runs["rebuild"])
    for row in rows:
        row["settings"][key] = value
    code, report = judge(runs["baseline"], write(tmp_path / "b.jsonl", rows), tmp_path, question_file)
    assert (code, report) == (2, {}) and f"'{key}'" in caplog.text and "unlike runs" in caplog.text


def test_missing_and_malformed_inputs_exit_2_naming_the_file(runs, tmp_path, question_file, caplog):
    missing = tmp_path / "none.jsonl"
    assert judge(runs["baseline"], missing, tmp_path, question_file)[0] == 2
    assert str(missing) in caplog.text
    broken = tmp_path / "broken.jsonl"
    broken.write_text(runs["rebuild"].read_text() + "{not json\n")
    assert judge(broken, runs["baseline"], tmp_path, question_file)[0] == 2
    assert f"{broken}:3" in caplog.text
    changed = substitute(runs["rebuild"], tmp_path / "b.jsonl", 81, 1, 0, 5)
    assert judge(runs["baseline"], changed, tmp_path, tmp_path / "no-questions.jsonl")[0] == 2
    assert "no-questions.jsonl" in caplog.text
    assert judge(runs["baseline"], changed, tmp_path, question_file,
                 "--base-model-path", str(tmp_path))[0] == 2
    assert "not a checkpoint directory" in caplog.text


def test_batches_stay_within_the_budget_and_cover_every_row():
    lengths = [5, 50, 7, 40, 3, 60, 60]
    groups = batches(lengths, 120)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= 120 for g in groups)


def test_padded_batch_gives_each_row_its_own_logits(tiny_ckpt):
    model = load_reference(str(tiny_ckpt / "base"), torch.float32, torch.float64,
                           torch.device("cpu"), 0)
    prefixes = [[5, 9, 30, 2, 8, 100], [7, 3], [11, 12, 13, 14]]
    together = next_token_logits(model, prefixes, 1000)
    alone = [next_token_logits(model, [p], 1000)[0] for p in prefixes]
    assert all(torch.allclose(x, y, rtol=0, atol=1e-12) for x, y in zip(together, alone))


def test_ulp_is_the_spacing_of_the_runs_dtype():
    assert ulp("float16", 5.0) == 2.0 ** -8 and ulp("float16", 8.0) == 2.0 ** -7
    assert ulp("bfloat16", 1.5) == 2.0 ** -7 and ulp("float32", 12.0) == 2.0 ** -20
    assert (torch.tensor(9.0, dtype=torch.float16) + ulp("float16", 9.0)).item() == 9.0 + 2 ** -7


def test_preset_reference_holds_the_weights_the_run_drew(tiny_ckpt, question_file, tmp_path,
                                                         preset_1040):
    """A preset run judged with the preset's weights (seed 3, drawn in float32 on the CPU): the
    run's greedy token is the reference's argmax where a substituted token departs."""
    path = tmp_path / "preset.jsonl"
    argv = ["--base-model-path", preset_1040, "--ea-model-path", "preset",
            "--tokenizer-path", str(tiny_ckpt / "base"), "--question-file", str(question_file),
            "--answer-file", str(path), "--question-end", "1", "--max-new-token", "6", "--seed", "3",
            "--device", "cpu", "--warmup", "0"]
    assert gen_main("eagle", argv) == 0
    ids = lines(path)[0]["choices"][0]["detail"]["token_ids"][1]
    changed = substitute(path, tmp_path / "b.jsonl", 81, 2, 4, (ids[4] + 1) % 1040)
    code, report = judge(path, changed, tmp_path, question_file)
    (div,) = report["divergences"]
    assert (code, div["class"], div["departed"], div["top"]) == (1, REAL, ["B"], ids[4])
    assert report["referee"]["base_model"] == "preset:tiny-1040" and report["referee"]["seed"] == 3


@pytest.mark.slow
def test_float16_divergences_of_baseline_and_eagle_are_near_ties(tiny_ckpt, question_file, tmp_path):
    """Question 85 in float16 on the CPU, where plain decoding and EAGLE's tree verify round the two
    best logits of one position apart (on this 2-core CPU); whatever the CPU's float16 kernels
    do, every divergence they make must be a near-tie."""
    files = generate(tiny_ckpt, question_file, tmp_path, "--dtype", "float16", "--max-new-token",
                     "16", questions=("4", "5"))
    code, report = judge(files["baseline"], files["rebuild"], tmp_path, question_file)
    assert code == 0 and report["referee"]["runs_dtype"] == "float16"
    assert all(d["class"] == NEAR_TIE and 1 in d["ranks"] for d in report["divergences"])


@pytest.mark.slow
def test_run_script_ends_with_the_referee_verdict_on_a_reduced_precision_pair(tiny_ckpt, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("BASE_MODEL_PATH", "EA_MODEL_PATH",
                                                            "TOKENIZER_PATH", "MASK_IMPLS", "REPEAT")}
    env.update(TINY_DIR=str(tiny_ckpt), OUT_DIR=str(tmp_path), DTYPE="float16", DEVICE="cpu",
               QUESTION_BEGIN="4", QUESTION_END="5", MAX_NEW_TOKEN="16", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "scripts" / "run_mt_bench.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    if "token ids DIFFER" in done.stdout:  # this CPU's float16 kernels parted the pair
        assert last == "baseline-vs-rebuild: referee: outputs differ only at near-ties (float rounding)"
        assert (tmp_path / "referee-baseline-vs-rebuild.json").is_file()
    else:
        assert last.startswith("baseline-vs-rebuild: verdict:")


def test_help_imports_no_torch():
    code = "import sys; from evaluation import referee; referee.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr

"""The MT-Bench answer generators on the tiny checkpoints: schema, equivalence across mask
implementations and with the baseline, resume after a kill, settings checks, FastChat's reader."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eagle.tree.masks import MASK_IMPLS
from evaluation import profile_table, speed
from evaluation.run_settings import settings_differences as differences
from evaluation.answers import answer_problem, iter_lines
from evaluation.gen_cli import main as gen_main

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = 3  # 81, 82, 83: two turns each
MAX_NEW = 16
CPU_IMPLS = sorted(set(MASK_IMPLS) - {"rebuild", "triton"})  # triton: CUDA only


pytestmark = pytest.mark.usefixtures("one_thread")


def generate(method: str, ckpt: Path, question_file: Path, answer_file: Path, *extra: str) -> int:
    argv = ["--base-model-path", str(ckpt / "base"), "--ea-model-path", str(ckpt / "draft"),
            "--question-file", str(question_file), "--answer-file", str(answer_file),
            "--question-end", str(QUESTIONS), "--max-new-token", str(MAX_NEW), "--device", "cpu",
            *extra]
    return gen_main(method, argv)


@pytest.fixture(scope="module")
def answer_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model_answer")


@pytest.fixture(scope="module")
def rebuild_file(tiny_ckpt, question_file, answer_dir) -> Path:
    path = answer_dir / "ea-rebuild.jsonl"
    assert generate("eagle", tiny_ckpt, question_file, path, "--mask-impl", "rebuild", "--profile") == 0
    return path


def rows(path: Path) -> list[dict]:
    return [obj for _, obj in iter_lines(path)]


def test_answer_lines_follow_the_schema(rebuild_file):
    answers = rows(rebuild_file)
    assert [a["question_id"] for a in answers] == [81, 82, 83]
    for a in answers:
        assert answer_problem(a) is None
        assert a["category"] == "writing" and a["model_id"] == "ea-rebuild"
        s = a["settings"]
        assert (s["method"], s["mask_impl"], s["dtype"], s["max_new_token"]) == \
            ("eagle", "rebuild", "float32", MAX_NEW)
        assert set(s["machine"]) == {"cpu_count", "torch_threads", "omp_num_threads", "load_start",
                                     "load_end"} and s["machine"]["torch_threads"] >= 1
        (choice,) = a["choices"]
        assert len(choice["turns"]) == 2 and all(isinstance(t, str) for t in choice["turns"])
        detail, flat = choice["detail"], list(choice["accept_lengths"])
        for t, (new, steps, idx) in enumerate(zip(choice["new_tokens"], choice["decoding_steps"],
                                                  choice["idxs"])):
            accepts, ids = detail["accepted_drafts"][t], detail["token_ids"][t]
            added, flat = flat[:steps], flat[steps:]  # this turn's steps of the flat list
            assert 1 <= new == len(ids) <= MAX_NEW and steps == len(accepts) and idx == steps - 1
            assert added[:-1] == [n + 1 for n in accepts[:-1]]  # accepted + bonus per step
            assert 1 <= added[-1] <= accepts[-1] + 1  # the last step keeps what the stop/budget left
            assert new == 1 + sum(added)  # the prefill's token + what the steps added
        assert flat == []
        assert "tree_mask" in a["profile"]["sections"]


def test_profile_report_beside_the_answer_file(rebuild_file):
    report = json.loads(Path(f"{rebuild_file}.profile.json").read_text())
    assert report["answers"] == QUESTIONS
    assert report["steps"] == sum(a["profile"]["steps"] for a in rows(rebuild_file))
    assert {"tree_mask", "verify_forward", "step_total"} <= set(report["sections"])


def test_profile_table_reads_the_report(rebuild_file, tmp_path):
    out = tmp_path / "profile.json"
    assert profile_table.main([f"{rebuild_file}.profile.json", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["label"] == "rebuild" and run["steps"] > 0
    assert 0 < run["tree_buffers_ms"] < run["ms_per_step"]["step_total"]


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_mask_impls_give_identical_tokens(impl, tiny_ckpt, question_file, answer_dir, rebuild_file,
                                          tmp_path):
    path = answer_dir / f"ea-{impl}.jsonl"
    assert generate("eagle", tiny_ckpt, question_file, path, "--mask-impl", impl) == 0
    out = tmp_path / "speed.json"
    assert speed.main(["--baseline", str(rebuild_file), "--opt", str(path), "--json", str(out)]) == 0
    audit = json.loads(out.read_text())["audit"]
    assert (audit["turns"], audit["differing"]) == (2 * QUESTIONS, 0)


def test_baseline_matches_eagle_in_float32(tiny_ckpt, question_file, answer_dir, rebuild_file):
    path = answer_dir / "baseline.jsonl"
    assert generate("baseline", tiny_ckpt, question_file, path) == 0
    base = rows(path)
    assert all(a["settings"]["method"] == "baseline" and a["settings"]["mask_impl"] is None and
               a["settings"]["draft_model"] is None for a in base)
    for c in (c for a in base for c in a["choices"]):  # Spec-Bench's baseline: a step per token
        assert c["decoding_steps"] == c["new_tokens"] and c["idxs"] == [n - 1 for n in c["new_tokens"]]
        assert c["accept_lengths"] == [1] * sum(c["new_tokens"])
    assert speed.main(["--baseline", str(path), "--opt", str(rebuild_file)]) == 0


def test_baseline_never_loads_the_draft_head(tiny_ckpt, question_file, rebuild_file, monkeypatch,
                                            tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the baseline loaded the draft head")

    monkeypatch.setattr("eagle.checkpoint.load_draft", refuse)
    common = ["--base-model-path", str(tiny_ckpt / "base"), "--question-file", str(question_file),
              "--question-end", "1", "--max-new-token", str(MAX_NEW), "--device", "cpu"]
    with_path, without = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    assert gen_main("baseline", common + ["--ea-model-path", str(tiny_ckpt / "draft"),
                                          "--answer-file", str(with_path)]) == 0
    assert gen_main("baseline", common + ["--answer-file", str(without)]) == 0  # no head needed
    (a,), (b,) = rows(with_path), rows(without)
    assert differences(a["settings"], b["settings"]) == [] and a["settings"]["draft_model"] is None
    eagle_ids = rows(rebuild_file)[0]["choices"][0]["detail"]["token_ids"]  # float32: the same tokens
    assert a["choices"][0]["detail"]["token_ids"] == b["choices"][0]["detail"]["token_ids"] == eagle_ids


@pytest.mark.parametrize("backend", ["math", "flash"])  # the two with a CPU kernel for boolean masks
def test_pinned_attention_backend_keeps_float32_tokens(backend, tiny_ckpt, question_file, rebuild_file,
                                                       tmp_path):
    path = tmp_path / f"{backend}.jsonl"
    assert generate("eagle", tiny_ckpt, question_file, path, "--attention-backend", backend) == 0
    pinned, auto = rows(path), rows(rebuild_file)
    assert all(a["settings"]["attention_backend"] == backend for a in pinned)
    assert [a["choices"][0]["detail"] for a in pinned] == [a["choices"][0]["detail"] for a in auto]


def test_attention_backend_without_a_kernel_here_is_refused(tiny_ckpt, question_file, tmp_path, caplog):
    path = tmp_path / "efficient.jsonl"
    assert generate("baseline", tiny_ckpt, question_file, path, "--attention-backend", "efficient") == 2
    assert "--attention-backend efficient cannot run the engine's attention on cpu" in caplog.text
    assert not path.exists()


def test_pinned_attention_backend_is_in_force_while_decoding(tiny_ckpt, question_file, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr("evaluation.preflight.check_attention_backend", lambda *args: None)
    with pytest.raises(RuntimeError, match="No viable backend"):  # efficient has no CPU kernel
        generate("baseline", tiny_ckpt, question_file, tmp_path / "a.jsonl",
                 "--attention-backend", "efficient")


def test_perturbed_answer_file_is_caught(rebuild_file, tmp_path, caplog, capsys):
    answers = rows(rebuild_file)
    ids = answers[1]["choices"][0]["detail"]["token_ids"][1]
    position = min(3, len(ids) - 1)
    ids[position] += 1
    perturbed = tmp_path / "perturbed.jsonl"
    perturbed.write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert speed.main(["--baseline", str(rebuild_file), "--opt", str(perturbed)]) == 1
    expected = f"question 82, turn 2, choice 0: first divergence at token {position}"
    assert expected in capsys.readouterr().out and expected in caplog.text


def load_model_answers():
    """FastChat's own reader; its module imports the judge API clients, stubbed when absent."""
    import importlib
    import types

    for name in ("openai", "anthropic"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules.setdefault(name, types.ModuleType(name))  # unused by the reader
    from fastchat.llm_judge.common import load_model_answers as reader

    return reader


def test_answer_files_load_with_fastchat(rebuild_file, answer_dir):
    loaded = load_model_answers()(str(answer_dir))
    assert loaded["ea-rebuild"].keys() == {81, 82, 83}
    for model_answers in loaded.values():
        for qid, answer in model_answers.items():
            assert answer["question_id"] == qid and answer["choices"][0]["turns"]


def test_multi_turn_prompt_carries_the_history(tiny_ckpt):
    from transformers import AutoTokenizer

    from eagle.ea_model import GenerationResult
    from evaluation.generate import SYSTEM_PROMPT, Answerer
    from evaluation.run_settings import GenConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))
    reply = tokenizer.encode("The capital is Paris.", add_special_tokens=False)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    prompts = []

    class Recorder:
        device = torch.device("cpu")
        stop_ids = frozenset({eot})

        def generate(self, input_ids, **kwargs):
            prompts.append(tokenizer.decode(input_ids[0]))
            return GenerationResult(input_ids, reply + [eot], 1, [len(reply) - 1])  # one step

    Recorder.tokenizer = tokenizer
    cfg = GenConfig("eagle", "b", "d", "m", Path("a.jsonl"), Path("q.jsonl"))
    question = {"category": "writing", "turns": ["First question?", "Second one?"]}
    choice, _ = Answerer(Recorder(), cfg, {}).choice(question, 0)
    assert choice["turns"] == ["The capital is Paris."] * 2
    assert choice["new_tokens"] == [len(reply) + 1] * 2 and choice["detail"]["token_ids"][0][-1] == eot
    first, second = prompts
    assert first.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert SYSTEM_PROMPT.strip() in first and first.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert second.startswith(first)  # turn 2 sees turn 1 and its answer
    assert "The capital is Paris.<|eot_id|>" in second and "Second one?" in second


@pytest.mark.parametrize("option, want", [
    (["--mt-bench-temperatures"], {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1,
                                   "math": 0.0, "coding": 0.0, "reasoning": 0.0, "extraction": 0.0}),
    (["--temperature", "0.3"], {"writing": 0.3, "math": 0.3}),
])
def test_each_question_is_answered_at_its_categorys_temperature(option, want, tiny_ckpt):
    """--mt-bench-temperatures: FastChat llm_judge's temperature per category, recorded in the
    settings; without it every category gets --temperature."""
    from eagle.ea_model import GenerationResult
    from evaluation.gen_cli import build_parser
    from evaluation.generate import Answerer
    from evaluation.run_settings import GenConfig

    from transformers import AutoTokenizer

    asked = []

    class Recorder:
        device = torch.device("cpu")
        stop_ids = frozenset({0})
        tokenizer = AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))

        def generate(self, input_ids, **kwargs):
            asked.append(kwargs["temperature"])
            return GenerationResult(input_ids, [5, 0], 1, [0])

    args = build_parser("eagle", "gen").parse_args(["--base-model-path", "b"] + option)
    cfg = GenConfig.from_args(args, "eagle", paths=False)
    answerer = Answerer(Recorder(), cfg, {})
    for category in want:
        answerer.choice({"category": category, "turns": ["q?"]}, 0)
    assert asked == list(want.values())
    recorded = cfg.temperature_by_category
    assert recorded == ({k: v for k, v in want.items() if v > 0} if option[0] != "--temperature"
                        else None)


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        assert proc.poll() is None, "generation ended before it could be killed"
        time.sleep(0.2)
    pytest.fail(f"{path} did not reach {count} lines in {timeout} s")


def test_killed_and_restarted_generation_has_one_answer_per_question(tiny_ckpt, question_file,
                                                                     tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "answers.jsonl"
    args = ["--base-model-path", str(tiny_ckpt / "base"), "--ea-model-path", str(tiny_ckpt / "draft"),
            "--question-file", str(question_file), "--answer-file", str(path), "--question-end", "6",
            "--max-new-token", "8", "--warmup", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "evaluation.gen_ea_answer_llama3chat", *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for_lines(path, 2, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    survivors = rows(path)
    with open(path, "a") as fh:  # a kill in the middle of a write leaves a torn line
        fh.write(json.dumps(survivors[0])[:40])
    assert gen_main("eagle", args) == 0
    answers = rows(path)
    assert [a["question_id"] for a in answers] == [81, 82, 83, 84, 85, 86]
    assert all(answer_problem(a) is None for a in answers)
    kept = {a["question_id"]: a["answer_id"] for a in survivors}
    assert all(a["answer_id"] == kept[a["question_id"]] for a in answers if a["question_id"] in kept)
    assert "incomplete last line" in caplog.text


def test_rerun_with_other_settings_is_refused(tiny_ckpt, question_file, rebuild_file, tmp_path, caplog):
    before = rebuild_file.read_bytes()
    assert generate("eagle", tiny_ckpt, question_file, rebuild_file, "--mask-impl", "rebuild",
                    "--max-new-token", "8") == 2
    assert "cannot resume" in caplog.text and "'max_new_token'" in caplog.text
    assert rebuild_file.read_bytes() == before


def test_preset_with_borrowed_tokenizer(tiny_ckpt, question_file, tmp_path, preset_1040):
    path = tmp_path / "preset.jsonl"
    argv = ["--base-model-path", preset_1040, "--ea-model-path", "preset",
            "--tokenizer-path", str(tiny_ckpt / "base"), "--question-file", str(question_file),
            "--answer-file", str(path), "--question-end", "1", "--max-new-token", "4", "--seed", "3"]
    assert gen_main("eagle", argv) == 0
    (answer,) = rows(path)
    s = answer["settings"]
    assert (s["preset"], s["seed"], s["base_model"], s["draft_model"]) == \
        ("tiny-1040", 3, "preset:tiny-1040", "preset")


@pytest.mark.parametrize("argv, message", [
    (["--base-model-path", "preset:tiny"], "--tokenizer-path"),
    (["--base-model-path", "preset:nope", "--tokenizer-path", "."], "unknown preset 'nope'"),
    (["--base-model-path", "BASE", "--ea-model-path", "DRAFT", "--mask-impl", "bogus"],
     "unknown --mask-impl 'bogus'; registered: rebuild"),
    (["--base-model-path", "BASE", "--ea-model-path", "DRAFT", "--question-file", "/none.jsonl"],
     "eagle-mt-bench-data"),
    (["--base-model-path", "/none", "--ea-model-path", "DRAFT"], "is not a directory"),
    (["--base-model-path", "BASE"], "--ea-model-path DIR is needed"),
    (["--base-model-path", "BASE", "--ea-model-path", "/none"], "/none is not a directory"),
    (["--base-model-path", "BASE", "--ea-model-path", "DRAFT", "--max-new-token", "0"],
     "--max-new-token must be >= 1"),
    (["--base-model-path", "BASE", "--ea-model-path", "DRAFT", "--total-token", "600"],
     "total_token must be in"),
    (["--base-model-path", "BASE", "--ea-model-path", "DRAFT", "--mt-bench-temperatures",
      "--temperature", "0.5"], "leave out --temperature"),
])
def test_user_errors_exit_2_saying_what_to_fix(argv, message, tiny_ckpt, question_file, caplog):
    subst = {"BASE": str(tiny_ckpt / "base"), "DRAFT": str(tiny_ckpt / "draft")}
    argv = [subst.get(a, a) for a in argv]
    if "--question-file" not in argv:
        argv += ["--question-file", str(question_file)]
    assert gen_main("eagle", argv + ["--answer-file", "/nonexistent/never.jsonl"]) == 2
    assert message in caplog.text


def test_baseline_with_a_missing_head_directory_says_it_is_unused(tiny_ckpt, question_file, caplog):
    argv = ["--base-model-path", str(tiny_ckpt / "base"), "--ea-model-path", "/none",
            "--question-file", str(question_file), "--answer-file", "/nonexistent/never.jsonl"]
    assert gen_main("baseline", argv) == 2
    assert "the baseline does not load it" in caplog.text


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_ckpt, question_file, tmp_path,
                                                               caplog):
    argv = ["--base-model-path", "preset:tiny", "--tokenizer-path", str(tiny_ckpt / "base"),
            "--question-file", str(question_file), "--answer-file", str(tmp_path / "a.jsonl")]
    assert gen_main("eagle", argv) == 2
    assert "more than the model's vocabulary" in caplog.text


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys, evaluation.gen_cli, evaluation.speed, evaluation.mt_bench_data; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    for script in ("gen_ea_answer_llama3chat.py", "gen_baseline_answer_llama3chat.py"):
        done = subprocess.run([sys.executable, str(REPO / "evaluation" / script), "--help"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "examples:" in done.stdout


def test_the_settings_name_the_tokenizers_chat_template(tiny_ckpt, tmp_path):
    from evaluation.generate import chat_template_name

    assert chat_template_name(tiny_ckpt / "base") == "llama3"
    for template, name in (("{{ '<|im_start|>' + m['role'] }}", "chatml"), ("{{ messages }}", "sha256:")):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
        assert chat_template_name(tmp_path).startswith(name)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert chat_template_name(tmp_path) == "none"

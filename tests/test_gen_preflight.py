"""Settings errors refused before any model loads, swapped checkpoint paths, Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.answers import iter_lines
from evaluation.gen_cli import check_main, main as gen_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: every check must have happened before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr("evaluation.generate.load_model", refuse)


def argv_for(ckpt: Path, question_file: Path, answer_file, *extra: str, base: str = "base",
             draft: str = "draft") -> list[str]:
    return ["--base-model-path", str(ckpt / base), "--ea-model-path", str(ckpt / draft),
            "--question-file", str(question_file), "--answer-file", str(answer_file),
            "--question-end", "1", "--max-new-token", "4", "--device", "cpu", *extra]


@pytest.mark.parametrize("extra, message", [
    pytest.param(["--mask-impl", "triton"], "--mask-impl triton", marks=pytest.mark.no_cuda),
    pytest.param(["--mask-impl", "rebuild,triton"], "--mask-impl triton", marks=pytest.mark.no_cuda),
    (["--mask-impl", "rebuild,bogus"], "--mask-impl 'bogus'"),
    (["--attention-backend", "efficient"], "--attention-backend efficient"),
    pytest.param(["--device", "cuda:7"], "--device cuda:7", marks=pytest.mark.no_cuda),
    pytest.param(["--device", "auto", "--cuda-graph", "on"], "--cuda-graph on",
                 marks=pytest.mark.no_cuda),
])
def test_unavailable_settings_are_refused_before_loading(extra, message, tiny_ckpt, question_file,
                                                         tmp_path, caplog, no_loading):
    assert gen_main("eagle", argv_for(tiny_ckpt, question_file, tmp_path / "{impl}.jsonl", *extra)) == 2
    assert message in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_cache_too_short_for_the_conversation_is_refused_before_loading(tiny_ckpt, question_file,
                                                                         tmp_path, caplog, no_loading):
    argv = argv_for(tiny_ckpt, question_file, tmp_path / "a.jsonl", "--max-length", "300",
                    "--max-new-token", "100")
    assert gen_main("eagle", argv) == 2
    assert "question 81" in caplog.text and "--max-length 300" in caplog.text


def test_several_members_need_the_placeholder(tiny_ckpt, question_file, tmp_path, caplog, no_loading):
    argv = argv_for(tiny_ckpt, question_file, tmp_path / "a.jsonl", "--mask-impl", "rebuild,vectorized")
    assert gen_main("eagle", argv) == 2
    assert "{impl}" in caplog.text


def test_unwritable_answer_place_is_refused_before_loading(tiny_ckpt, question_file, tmp_path, caplog,
                                                           no_loading):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert gen_main("eagle", argv_for(tiny_ckpt, question_file, blocker / "a.jsonl")) == 2
    assert "--answer-file" in caplog.text
    assert gen_main("eagle", argv_for(tiny_ckpt, question_file, tmp_path)) == 2
    assert "is a directory" in caplog.text


@pytest.mark.parametrize("method", ["eagle", "baseline"])
def test_swapped_checkpoint_paths_say_so(method, tiny_ckpt, question_file, tmp_path, caplog,
                                         no_loading):
    argv = argv_for(tiny_ckpt, question_file, tmp_path / "a.jsonl", base="draft", draft="base")
    assert gen_main(method, argv) == 2
    assert "swapped" in caplog.text and str(tiny_ckpt / "draft") in caplog.text


def test_a_head_as_the_base_or_a_base_as_the_head_is_named(tiny_ckpt, question_file, tmp_path, caplog,
                                                           no_loading):
    argv = argv_for(tiny_ckpt, question_file, tmp_path / "a.jsonl", base="draft", draft="draft")
    assert gen_main("eagle", argv) == 2
    assert "LlamaForCausalLMEagle3" in caplog.text and "not a base model" in caplog.text
    argv = argv_for(tiny_ckpt, question_file, tmp_path / "a.jsonl", base="base", draft="base")
    assert gen_main("eagle", argv) == 2
    assert "not an EAGLE-3 draft head" in caplog.text


def test_settings_check_entry_needs_no_files(capsys):
    argv = ["--base-model-path", "/not/built/yet", "--ea-model-path", "/nor/this", "--device", "cpu",
            "--mask-impl", "rebuild,vectorized", "--with-baseline", "--answer-file", "r/{impl}.jsonl"]
    assert check_main(argv) == 0
    assert check_main(argv + ["--max-new-token", "0"]) == 2
    assert "--max-new-token" in capsys.readouterr().err


def count_lines(path: Path) -> int:
    return sum(1 for _ in iter_lines(path)) if path.exists() else 0


@pytest.mark.slow
def test_ctrl_c_keeps_the_answers_and_says_how_to_resume(tiny_ckpt, question_file, tmp_path):
    template = tmp_path / "ea-{impl}.jsonl"
    argv = argv_for(tiny_ckpt, question_file, template, "--mask-impl", "rebuild,vectorized",
                    "--question-end", "40", "--max-new-token", "16", "--warmup", "0")
    proc = subprocess.Popen([sys.executable, "-m", "evaluation.gen_ea_answer_llama3chat", *argv],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    files = [tmp_path / "ea-rebuild.jsonl", tmp_path / "ea-vectorized.jsonl"]
    deadline = time.monotonic() + 240
    while count_lines(files[1]) < 2:
        assert proc.poll() is None, "generation ended before it could be interrupted"
        assert time.monotonic() < deadline, "no answers within 240 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    kept = count_lines(files[1])
    assert err.rstrip("\n").splitlines()[-1] == \
        f"{kept} answers kept in each of {files[0]}, {files[1]}; rerun the same command to resume"
    assert kept < 40 and count_lines(files[0]) >= kept

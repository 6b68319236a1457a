"""scripts/run_mt_bench.sh end to end on the CPU: all 80 questions, rebuild vs vectorized vs baseline
answered interleaved in one process; settings refused before anything is built; the summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_mt_bench.sh"


def run_script(env_changes: dict, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (
        "BASE_MODEL_PATH", "EA_MODEL_PATH", "TOKENIZER_PATH", "MODEL_ID", "MASK_IMPLS", "DEVICE", "DTYPE",
        "QUESTION_BEGIN", "QUESTION_END", "MAX_NEW_TOKEN", "TOTAL_TOKEN", "DEPTH", "TOP_K",
        "TEMPERATURE", "PROFILE", "REPEAT", "ATTENTION_BACKEND", "NPROC")}
    env.update(env_changes, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def default_run(tiny_ckpt, tmp_path_factory):
    """The no-argument run; only where it writes (and the prebuilt tiny checkpoints) come from here."""
    out = tmp_path_factory.mktemp("runs")
    done = run_script({"OUT_DIR": str(out), "TINY_DIR": str(tiny_ckpt)}, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done


@pytest.mark.slow
def test_no_argument_run_reports_identical_outputs(default_run):
    out, done = default_run
    assert "all compared outputs identical" in done.stderr
    assert done.stdout.count("**outputs identical**") == 2
    for name in ("rebuild-vs-vectorized", "baseline-vs-rebuild"):
        report = json.loads((out / f"speed-{name}.json").read_text())
        assert report["audit"]["differing"] == 0 and report["audit"]["turns"] == 160
        assert (out / f"speed-{name}.md").is_file() and (out / f"speed-{name}.png").is_file()
    run_ids = set()
    for name in ("tiny-rebuild", "tiny-vectorized", "tiny-baseline"):
        lines = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [line["question_id"] for line in lines] == list(range(81, 161))
        run_ids |= {line["interleave"]["run_id"] for line in lines}
    assert len(run_ids) == 1  # one process


@pytest.mark.slow
def test_the_last_lines_summarise_each_pair(default_run):
    out, done = default_run
    last = done.stdout.rstrip("\n").splitlines()[-2:]
    for line, name in zip(last, ("rebuild-vs-vectorized", "baseline-vs-rebuild")):
        report = (out / f"speed-{name}.txt").read_text().rstrip("\n").splitlines()
        assert line == f"{name}: {report[-1]}"
        assert line.startswith(f"{name}: verdict: ") and "paired" in line and "unpaired" not in line


@pytest.mark.slow
def test_script_answers_load_with_fastchat(default_run):
    from test_generate_answers import load_model_answers

    loaded = load_model_answers()(str(default_run[0]))
    assert set(loaded) == {"tiny-rebuild", "tiny-vectorized", "tiny-baseline"}
    assert all(len(answers) == 80 for answers in loaded.values())


@pytest.mark.slow
def test_profiled_run_with_repeat_control(tiny_ckpt, tmp_path):
    done = run_script({"OUT_DIR": str(tmp_path), "TINY_DIR": str(tiny_ckpt), "PROFILE": "1",
                       "REPEAT": "1", "QUESTION_END": "2", "MAX_NEW_TOKEN": "8"}, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "profile.md").read_text().startswith(
        "| section | tiny-rebuild | vectorized | tiny-rebuild-repeat |")
    runs = json.loads((tmp_path / "profile.json").read_text())["runs"]
    assert [r["steps"] > 0 for r in runs] == [True, True, True]
    assert (tmp_path / "profile.png").is_file()
    for name in ("rebuild-vs-rebuild-repeat", "baseline-vs-baseline-repeat"):  # float32: identical
        report = json.loads((tmp_path / f"speed-{name}.json").read_text())
        assert report["audit"]["differing"] == 0 and report["audit"]["turns"] == 4
    control = json.loads((tmp_path / "speed-rebuild-vs-vectorized.json").read_text())["control"]
    assert [Path(f).name for f in control["files"]] == ["tiny-rebuild-repeat.jsonl",
                                                       "tiny-rebuild-2-repeat.jsonl"]
    assert control["method"] == "paired" and not control["applied"]  # 2 questions: too few
    repeat = json.loads((tmp_path / "tiny-rebuild-repeat.jsonl").read_text().splitlines()[0])
    first = json.loads((tmp_path / "tiny-rebuild.jsonl").read_text().splitlines()[0])
    assert repeat["interleave"]["members"] == ["rebuild", "rebuild-2", "baseline"]
    assert repeat["interleave"]["run_id"] != first["interleave"]["run_id"]  # a second process


def test_flag_other_than_0_or_1_is_refused(tiny_ckpt, tmp_path):
    done = run_script({"OUT_DIR": str(tmp_path), "TINY_DIR": str(tiny_ckpt), "REPEAT": "yes"},
                      timeout=60)
    assert done.returncode == 2 and "REPEAT" in done.stderr and "'yes'" in done.stderr
    assert not list(tmp_path.iterdir())


def test_nproc_other_than_a_positive_count_is_refused(tiny_ckpt, tmp_path):
    done = run_script({"OUT_DIR": str(tmp_path), "TINY_DIR": str(tiny_ckpt), "NPROC": "0"},
                      timeout=60)
    assert done.returncode == 2 and "NPROC" in done.stderr and "'0'" in done.stderr
    assert not list(tmp_path.iterdir())


def assert_refused_before_building(env: dict, flag: str, tmp_path: Path) -> None:
    """The script exits 2 naming `flag`, before it builds checkpoints or writes anything."""
    tiny = tmp_path / "tiny"  # absent: a run that got past the checks would build it
    done = run_script({"OUT_DIR": str(tmp_path / "out"), "TINY_DIR": str(tiny), **env}, timeout=120)
    assert done.returncode == 2 and flag in done.stderr, done.stderr[-2000:]
    assert "settings refused" in done.stderr and "Traceback" not in done.stderr
    assert not tiny.exists() and not (tmp_path / "out").exists()


def test_unregistered_mask_impl_is_refused_before_anything_is_built(tmp_path):
    assert_refused_before_building({"MASK_IMPLS": "bogus"}, "--mask-impl 'bogus'", tmp_path)


# each setting the script passes on, refused by the generator's checks (tested in process in
# test_gen_preflight.py; here, that the script passes it and stops before building)
@pytest.mark.slow
@pytest.mark.parametrize("env, flag", [
    ({"MASK_IMPLS": "triton", "DEVICE": "cpu"}, "--mask-impl triton"),
    ({"MAX_NEW_TOKEN": "0"}, "--max-new-token"),
    ({"DEVICE": "cpu", "ATTENTION_BACKEND": "efficient"}, "--attention-backend efficient"),
    ({"DEVICE": "cpu", "CUDA_GRAPH": "on"}, "--cuda-graph on"),
    ({"CUDA_GRAPH": "yes"}, "--cuda-graph"),
])
def test_settings_are_refused_before_anything_is_built(env, flag, tmp_path):
    assert_refused_before_building(env, flag, tmp_path)


@pytest.mark.slow
def test_sampling_run_ends_green_and_explains(tiny_ckpt, tmp_path):
    done = run_script({"OUT_DIR": str(tmp_path), "TINY_DIR": str(tiny_ckpt), "TEMPERATURE": "0.7",
                       "QUESTION_END": "3", "MAX_NEW_TOKEN": "16"}, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "baseline-vs-rebuild: token identity not expected" in done.stderr
    assert "different random streams" in done.stderr  # the reason, in the summary
    report = json.loads((tmp_path / "speed-baseline-vs-rebuild.json").read_text())
    assert not report["audit"]["required"]
    assert json.loads((tmp_path / "speed-rebuild-vs-vectorized.json").read_text())["audit"]["required"]


@pytest.mark.slow
def test_a_resume_with_another_setting_names_out_dir(tiny_ckpt, tmp_path):
    first = {"OUT_DIR": str(tmp_path), "TINY_DIR": str(tiny_ckpt), "QUESTION_END": "1",
             "MAX_NEW_TOKEN": "4"}
    assert run_script(first, timeout=300).returncode == 0
    done = run_script({**first, "MAX_NEW_TOKEN": "5"}, timeout=300)
    assert done.returncode == 2
    assert "'max_new_token'" in done.stderr and f"OUT_DIR ({tmp_path})" in done.stderr

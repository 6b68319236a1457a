"""speed.py on hand-made answer files: metrics, the equivalence audit, exit codes, input validation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import speed
from evaluation.answers import add_turn, new_choice

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"method": "eagle", "mask_impl": "rebuild", "base_model": "/m/base", "draft_model": "/m/draft",
            "tokenizer": "/m/base", "preset": None, "dtype": "float32", "total_token": 60, "depth": 5,
            "top_k": 10, "temperature": 0.0, "top_p": 0.0, "sample_top_k": 0, "max_new_token": 8,
            "max_length": 4096, "num_choices": 1, "seed": 0, "chat": "llama3", "device": "cpu",
            "device_name": "x86_64", "torch": "2.13", "transformers": "5.24", "eagle": None,
            "python": "3.11"}


def answer(qid: int, category: str, turns: list[list[int]], wall: float = 0.5,
           settings: dict = SETTINGS, accepts: list[list[int]] = None) -> dict:
    """One answer line; `accepts`: accepted draft tokens per step of each turn (default: one per
    step, so a turn of n tokens takes n // 2 steps, the last one cut short when n is even)."""
    drafted = settings["method"] != "baseline"  # plain decoding drafts nothing
    accepts = accepts or [[1] * (len(ids) // 2) if drafted else [] for ids in turns]
    choice = new_choice(0)
    for ids, accepted in zip(turns, accepts):
        add_turn(choice, "text", ids, accepted, wall, drafted)
    return {"question_id": qid, "answer_id": f"a{qid}", "model_id": "m", "tstamp": 1.0,
            "category": category, "settings": settings, "choices": [choice]}


def answers(wall: float = 0.5, settings: dict = SETTINGS) -> list[dict]:
    return [answer(81, "writing", [[1, 2, 3, 4], [5, 6, 7, 8]], wall, settings),
            answer(82, "writing", [[9, 10, 11, 12], [13, 14, 15, 16, 17, 18]], wall, settings),
            answer(101, "math", [[20, 21], [22, 23, 24, 25]], wall, settings)]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def with_settings(**changes) -> dict:
    return {**SETTINGS, **changes}


@pytest.fixture
def pair(tmp_path):
    a = write(tmp_path / "a.jsonl", answers(wall=1.0))
    b = write(tmp_path / "b.jsonl", answers(wall=0.5, settings=with_settings(mask_impl="vectorized")))
    return a, b


def run_speed(*argv) -> int:
    return speed.main([str(a) for a in argv])


def test_identical_runs_exit_0_with_report(pair, tmp_path, capsys):
    a, b = pair
    out = tmp_path / "out"
    rc = run_speed("--baseline", a, "--opt", b, "--json", out / "r.json", "--markdown", out / "r.md",
                   "--plot", out / "r.png")
    assert rc == 0
    report = json.loads((out / "r.json").read_text())
    assert report["audit"] == {**report["audit"], "turns": 6, "identical": 6, "differing": 0}
    assert report["baseline"]["tokens_per_s"] == pytest.approx(24 / 6.0)
    assert report["opt"]["tokens_per_s"] == pytest.approx(24 / 3.0)
    assert report["speedup"]["value"] == pytest.approx(2.0)
    lo, hi = report["speedup"]["ci95"]
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    assert [c["category"] for c in report["categories"]] == ["math", "writing"]
    math, writing = report["categories"]
    assert math["opt_tokens_per_step"] == pytest.approx(6 / 3)  # 2 + 4 tokens in 1 + 2 steps
    assert writing["opt_tokens_per_step"] == pytest.approx(18 / 9)
    assert math["baseline_tokens_per_step"] == pytest.approx(2.0)
    acceptance = report["opt"]["acceptance"]
    assert acceptance["new_tokens_per_step"] == pytest.approx(24 / 12)  # 12 steps
    assert acceptance["mean_acceptance_length"] == pytest.approx((12 + 12) / 12)  # accepted + bonus
    assert acceptance["mean_accept_lengths"] == pytest.approx((24 - 6) / 12)  # 6 cut last steps
    assert (out / "r.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "outputs identical" in printed and printed == (out / "r.md").read_text()


def test_speedup_ci_brackets_a_noisy_ratio(tmp_path):
    from evaluation.compare import Run, compare

    slow = answers(wall=1.0)
    fast = answers(wall=0.5, settings=with_settings(mask_impl="vectorized"))
    fast[0]["choices"][0]["wall_time"] = [0.25, 0.25]  # question 81 four times as fast
    report = compare(Run.load(write(tmp_path / "a.jsonl", slow)),
                     Run.load(write(tmp_path / "b.jsonl", fast)))
    lo, hi = report["speedup"]["ci95"]
    assert lo < report["speedup"]["value"] < hi
    assert report["baseline"]["tokens_per_s_mean_per_question"] == pytest.approx((8 + 10 + 6) / 3 / 2)


def test_perturbed_tokens_exit_1_naming_question_turn_position(pair, tmp_path, caplog, capsys):
    a, b = pair
    rows = [json.loads(line) for line in b.read_text().splitlines()]
    before = rows[1]["choices"][0]["detail"]["token_ids"][1][3]
    rows[1]["choices"][0]["detail"]["token_ids"][1][3] = 999  # question 82, turn 2, token 3
    write(b, rows)
    assert run_speed("--baseline", a, "--opt", b, "--json", tmp_path / "r.json") == 1
    audit = json.loads((tmp_path / "r.json").read_text())["audit"]
    n = len(rows[1]["choices"][0]["detail"]["token_ids"][1])
    assert audit["mismatches"] == [{"question_id": 82, "choice": 0, "turn": 2, "position": 3,
                                    "baseline_token": before, "opt_token": 999,
                                    "baseline_len": n, "opt_len": n}]
    assert "OUTPUTS DIFFER" in capsys.readouterr().out
    assert "question 82, turn 2" in caplog.text
    assert run_speed("--baseline", a, "--opt", b, "--allow-mismatch") == 0


def test_sampling_by_two_methods_needs_no_identity_and_says_why(tmp_path, capsys):
    sampled = with_settings(temperature=0.7)
    a = write(tmp_path / "a.jsonl", answers(settings={**sampled, "method": "baseline", "mask_impl": None}))
    rows = answers(settings=sampled)
    rows[0]["choices"][0]["detail"]["token_ids"][0][1] = 999  # another random stream
    b = write(tmp_path / "b.jsonl", rows)
    out = tmp_path / "r.json"
    assert run_speed("--baseline", a, "--opt", b, "--json", out) == 0
    report = json.loads(out.read_text())
    assert not report["audit"]["required"] and report["audit"]["differing"] == 1
    assert "temperature 0.7" in report["audit"]["why_not_required"]
    assert [report[side]["new_tokens"] / report["audit"]["turns"] for side in ("baseline", "opt")] == [4, 4]
    assert [report[side]["acceptance"]["new_tokens_per_step"] for side in ("baseline", "opt")] == [1, 2]
    printed = capsys.readouterr().out
    assert "Compared instead" in printed  # the numbers above, when identity is not required
    assert printed.rstrip().splitlines()[-1].endswith("token identity not expected (5/6 turns identical)")


def test_mt_bench_temperatures_count_as_sampling(tmp_path, capsys):
    """A run at MT-Bench's per-category temperatures samples (some categories), so two methods
    need not agree; the report names the temperatures and gives tokens per step per category."""
    sampled = with_settings(temperature_by_category={"writing": 0.7, "stem": 0.1})
    a = write(tmp_path / "a.jsonl", answers(settings={**sampled, "method": "baseline", "mask_impl": None}))
    rows = answers(settings=sampled)
    rows[0]["choices"][0]["detail"]["token_ids"][0][1] = 999
    b = write(tmp_path / "b.jsonl", rows)
    assert run_speed("--baseline", a, "--opt", b, "--json", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["audit"]["required"]
    assert "writing 0.7, stem 0.1" in report["audit"]["why_not_required"]
    writing = next(r for r in report["categories"] if r["category"] == "writing")
    assert (writing["questions"], writing["baseline_tokens_per_s"], writing["opt_tokens_per_s"],
            writing["baseline_tokens_per_step"], writing["opt_tokens_per_step"],
            writing["speedup"]) == pytest.approx((2, 9.0, 9.0, 1.0, 2.0, 1.0))
    assert "| writing | 2 | 9.00 | 9.00 | 1.00 | 2.00 | 1.000x |" in capsys.readouterr().out  # as printed


@pytest.mark.parametrize("changes", [{"temperature": 0.7}, {}])
def test_identity_is_required_for_one_method_with_one_seed_or_greedy(tmp_path, changes):
    """Two EAGLE runs sampling with the same seed draw the same stream; greedy runs must agree."""
    a = write(tmp_path / "a.jsonl", answers(settings=with_settings(**changes)))
    rows = answers(settings=with_settings(mask_impl="vectorized", **changes))
    rows[0]["choices"][0]["detail"]["token_ids"][0][1] = 999
    b = write(tmp_path / "b.jsonl", rows)
    assert run_speed("--baseline", a, "--opt", b) == 1


def test_shorter_output_diverges_at_its_end(pair):
    from evaluation.compare import first_divergence

    assert first_divergence([1, 2, 3], [1, 2]) == 2
    assert first_divergence([1, 2], [1, 2]) is None
    assert first_divergence([1, 2], [1, 3]) == 1


def bad_input_cases() -> dict:
    """name -> (rows or raw text for b.jsonl, line and words the message must name)."""
    dup = answers() + [answer(82, "writing", [[1], [2]])]
    missing_field = answers()
    del missing_field[1]["choices"][0]["wall_time"]
    no_settings = answers()
    del no_settings[0]["settings"]
    turns = answers()
    turns[1] = answer(82, "writing", [[9, 10, 11, 12]])
    nonpositive = answers()
    nonpositive[1]["choices"][0]["wall_time"] = [0.5, 0.0]
    lines = [json.dumps(r) for r in answers()]
    return {
        "malformed json": ("\n".join([lines[0], lines[1][:-5], lines[2]]) + "\n", 2, "malformed JSON"),
        "missing field": (missing_field, 2, "wall_time"),
        "missing settings": (no_settings, 1, "settings"),
        "duplicate question ids": (dup, 4, "duplicate question_id 82"),
        "different question sets": (answers()[:2] + [answer(102, "math", [[1], [2]])], 3, "question 102"),
        "missing question": (answers()[:2], 3, "question 101 is missing"),
        "different turn counts": (turns, 2, "turns per choice"),
        "different settings": ([dict(r, settings=with_settings(dtype="float16")) for r in answers()], 1,
                               "'dtype'"),
        "non-positive wall_time": (nonpositive, 2, "wall_time"),
        "empty file": ("", 1, "empty"),
    }


@pytest.mark.parametrize("case", list(bad_input_cases()))
def test_bad_input_exit_2_naming_file_and_line(case, tmp_path, caplog):
    content, line, words = bad_input_cases()[case]
    a = write(tmp_path / "a.jsonl", answers())
    b = tmp_path / "b.jsonl"
    if isinstance(content, str):
        b.write_text(content)
    else:
        write(b, content)
    before = (a.read_bytes(), b.read_bytes())
    assert run_speed("--baseline", a, "--opt", b, "--json", tmp_path / "r.json") == 2
    assert f"{b}:{line}:" in caplog.text
    assert words in caplog.text
    assert not (tmp_path / "r.json").exists()
    assert (a.read_bytes(), b.read_bytes()) == before


def test_inconsistent_settings_within_a_file_is_bad_input(tmp_path, caplog):
    rows = answers()
    rows[2]["settings"] = with_settings(seed=1)
    a, b = write(tmp_path / "a.jsonl", answers()), write(tmp_path / "b.jsonl", rows)
    assert run_speed("--baseline", a, "--opt", b) == 2
    assert f"{b}:3:" in caplog.text and "'seed'" in caplog.text


def test_baseline_may_differ_in_draft_settings_but_eagle_runs_may_not(tmp_path, caplog):
    base = with_settings(method="baseline", mask_impl=None, total_token=30)
    a = write(tmp_path / "a.jsonl", answers(settings=base))
    b = write(tmp_path / "b.jsonl", answers())
    assert run_speed("--baseline", a, "--opt", b) == 0
    c = write(tmp_path / "c.jsonl", answers(settings=with_settings(total_token=30)))
    assert run_speed("--baseline", c, "--opt", b) == 2
    assert "'total_token'" in caplog.text


def test_eagle_runs_must_share_their_blas_library_the_baseline_has_none(tmp_path, caplog):
    eagle = write(tmp_path / "eagle.jsonl", answers(settings=with_settings(eagle_blas="cublaslt")))
    base = write(tmp_path / "base.jsonl", answers(settings=with_settings(
        method="baseline", mask_impl=None, eagle_blas=None)))
    assert run_speed("--baseline", base, "--opt", eagle) == 0
    other = write(tmp_path / "other.jsonl", answers(settings=with_settings(
        eagle_blas="torch default")))
    assert run_speed("--baseline", other, "--opt", eagle) == 2
    assert "'eagle_blas'" in caplog.text
    older = write(tmp_path / "older.jsonl", answers())  # written before the setting existed
    assert run_speed("--baseline", older, "--opt", other) == 0
    assert run_speed("--baseline", older, "--opt", eagle) == 2


def test_environment_differences_are_warnings(tmp_path, caplog):
    a = write(tmp_path / "a.jsonl", answers())
    b = write(tmp_path / "b.jsonl", answers(settings=with_settings(device_name="other", torch="9")))
    assert run_speed("--baseline", a, "--opt", b) == 0
    assert "runs differ in 'device_name'" in caplog.text


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--plot"])
def test_never_writes_over_an_input(pair, flag, caplog):
    a, b = pair
    before = (a.read_bytes(), b.read_bytes())
    assert run_speed("--baseline", a, "--opt", b, flag, b) == 2
    same_file_other_spelling = a.parent / "." / a.name
    assert run_speed("--baseline", a, "--opt", b, flag, same_file_other_spelling) == 2
    assert (a.read_bytes(), b.read_bytes()) == before
    assert "choose another output path" in caplog.text


def test_outputs_must_differ_from_each_other(pair, tmp_path):
    a, b = pair
    assert run_speed("--baseline", a, "--opt", b, "--json", tmp_path / "r", "--markdown",
                     tmp_path / "r") == 2


def test_missing_input_file(tmp_path, caplog):
    a = write(tmp_path / "a.jsonl", answers())
    assert run_speed("--baseline", a, "--opt", tmp_path / "nope.jsonl") == 2
    assert "nope.jsonl" in caplog.text


def test_script_and_module_entry_points_report_exit_codes(pair):
    a, b = pair
    for cmd in ([sys.executable, str(REPO / "evaluation" / "speed.py")],
                [sys.executable, "-m", "evaluation.speed"]):
        done = subprocess.run(cmd + ["--baseline", str(a), "--opt", str(b)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "outputs identical" in done.stdout



def test_files_in_the_format_before_the_standard_fields_are_refused(tmp_path, caplog):
    old = answers()
    for row in old:  # per-turn steps and accepted drafts, ids beside them, no decoding_steps / idxs
        c = row["choices"][0]
        c.update(steps=c.pop("decoding_steps"), token_ids=c["detail"]["token_ids"],
                 accept_lengths=c.pop("detail")["accepted_drafts"])
        del c["idxs"]
    a, b = write(tmp_path / "a.jsonl", answers()), write(tmp_path / "old.jsonl", old)
    assert run_speed("--baseline", a, "--opt", b) == 2
    assert f"{b}:1:" in caplog.text and "rerun the generator" in caplog.text


def test_unreadable_or_binary_input_is_bad_input_not_a_mismatch(pair, tmp_path, caplog):
    a, _ = pair
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert run_speed("--baseline", a, "--opt", binary) == 2
    assert f"{binary}: not UTF-8 text" in caplog.text
    assert run_speed("--baseline", a, "--opt", tmp_path) == 2  # a folder

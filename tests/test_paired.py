"""speed.py's paired statistics and verdict on constructed answer files: interleaved runs paired
turn by turn, separate processes reported as unpaired with the drift warning, the verdict line,
refused inputs and outputs, and the plots' error bars and legends."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluation import profile_table, speed
from evaluation.answers import add_turn, new_choice
from evaluation.paired import CPU_DRIFT_ALLOWANCE_PCT, MIN_QUESTIONS, Band, judge, t_interval

SETTINGS = {"method": "eagle", "mask_impl": "rebuild", "dtype": "float32", "max_new_token": 8,
            "device_name": "cpu", "code": {"version": "0.1", "fingerprint": "abc123"}}
IDS = [[1, 2, 3, 4, 5], [6, 7, 8]]  # two turns; every file generates the same ids
CATEGORIES = ("writing", "math", "coding")


def line(qid: int, walls: list[float], label: str, run_id: str = None, members=("a", "b")) -> dict:
    choice = new_choice(0)
    for ids, wall in zip(IDS, walls):
        add_turn(choice, "text", ids, [1] * (len(ids) // 2), wall, drafted=True)
    obj = {"question_id": qid, "answer_id": f"{label}{qid}", "model_id": label, "tstamp": 1.0,
           "category": CATEGORIES[qid % 3], "settings": SETTINGS, "choices": [choice]}
    if run_id is not None:
        obj["interleave"] = {"run_id": run_id, "members": list(members), "label": label,
                             "positions": [qid % 2, (qid + 1) % 2]}
    return obj


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def drifting_pair(tmp_path: Path, ratio: float, interleaved: bool, questions: int = 12, seed: int = 0,
                  later: float = 1.5):
    """Files a and b, b `ratio` times as fast. Interleaved: both members of a turn see the same
    machine speed, which drifts threefold over the run; separate: b ran later, on a machine that
    had become `later` times slower. Each turn also gets 2% of independent noise."""
    rng = np.random.default_rng(seed)
    a_rows, b_rows = [], []
    for q in range(questions):
        machine = 1.0 + 2.0 * q / questions if interleaved else 1.0
        later = 1.0 if interleaved else later
        noise = rng.normal(1.0, 0.02, size=(2, 2))
        run_id = "run-1" if interleaved else None
        a_rows.append(line(q, [0.1 * machine * n for n in noise[0]], "a", run_id))
        b_rows.append(line(q, [0.1 * machine * later * n / ratio for n in noise[1]], "b", run_id))
    return write(tmp_path / "a.jsonl", a_rows), write(tmp_path / "b.jsonl", b_rows)


def run(a: Path, b: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    rc = speed.main(["--baseline", str(a), "--opt", str(b), "--json", str(out), *extra])
    return rc, json.loads(out.read_text()) if out.exists() else {}


def test_interleaved_a_a_under_drift_contains_one(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=1.0, interleaved=True)
    rc, report = run(a, b, tmp_path)
    assert rc == 0 and report["speedup"]["method"] == "paired"
    lo, hi = report["speedup"]["ci95"]
    assert lo < 1.0 < hi and report["speedup"]["judgement"] == "no difference resolved"
    assert report["pairing"]["run_ids"] == ["run-1"] and len(report["pairing"]["paired_questions"]) == 12
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("verdict: no difference resolved: ") and "paired, 12 questions" in last


def test_interleaved_speedup_is_resolved_despite_drift(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=1.2, interleaved=True)
    rc, report = run(a, b, tmp_path)
    lo, hi = report["speedup"]["ci95"]
    assert rc == 0 and 1.0 < lo < 1.2 < hi and report["speedup"]["judgement"] == "faster"
    assert report["speedup"]["value"] == pytest.approx(1.2, rel=0.02)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"verdict: faster: {report['speedup']['value']:.3f}x (95% CI ")
    assert ", paired, 12 questions); " in last
    assert f"\u00b1{report['speedup']['resolvable_pct']:.1f}%" in last
    assert last.endswith("token ids identical (24/24 turns identical)")
    assert [c["questions"] for c in report["categories"]] == [4, 4, 4]
    assert all(c["ci95"] is None for c in report["categories"])  # fewer than MIN_QUESTIONS each


def test_separate_processes_are_unpaired_with_the_drift_warning(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=1.0, interleaved=False, later=1.2)  # A/A, drift 20%
    rc, report = run(a, b, tmp_path)
    out = capsys.readouterr().out
    assert rc == 0 and report["speedup"]["method"] == "unpaired"
    assert out.splitlines()[2].startswith("**Unpaired: these files come from separate processes.**")
    assert "Drift between the two runs" in out and "is not controlled" in out
    lo, hi = report["speedup"]["ci95"]
    assert hi < 1.0  # the CI alone would call the drift "slower"; the allowance does not
    assert report["speedup"]["judgement"] == "no difference resolved"
    last = out.splitlines()[-1]
    assert "unpaired, 12 questions" in last and "process drift not controlled" in last
    assert f"CPU process-drift allowance \u00b1{CPU_DRIFT_ALLOWANCE_PCT:.1f}%" in last


def test_separate_processes_get_a_verdict_beyond_the_allowance(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=8.0, interleaved=False, later=1.0)
    rc, report = run(a, b, tmp_path)
    assert rc == 0 and report["speedup"]["judgement"] == "faster"
    resolvable = report["speedup"]["resolvable_pct"]
    assert CPU_DRIFT_ALLOWANCE_PCT < resolvable < 100 * (report["speedup"]["value"] - 1)
    assert f"smallest resolvable difference here \u00b1{resolvable:.1f}%" in capsys.readouterr().out


def test_too_few_questions_get_no_verdict(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=1.5, interleaved=True, questions=MIN_QUESTIONS - 1)
    rc, report = run(a, b, tmp_path)
    assert rc == 0 and report["speedup"]["ci95"][0] > 1.0  # the interval alone would say faster
    assert report["speedup"]["judgement"] == "too few questions for a verdict (fewer than 6)"
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("verdict: too few questions") and "below 6 questions" in last


def test_only_questions_of_one_run_are_paired(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=1.0, interleaved=True)
    rows = [json.loads(x) for x in b.read_text().splitlines()]
    for r in rows[:3]:  # answered again after a resume, in another process
        r["interleave"]["run_id"] = "run-2"
    write(b, rows)
    rc, report = run(a, b, tmp_path)
    assert rc == 0 and report["pairing"]["paired_questions"] == list(range(3, 12))
    assert report["speedup"]["questions"] == 9
    assert "3 questions" in capsys.readouterr().out


def test_t_interval_and_verdict_by_hand():
    d = np.log([1.1, 1.3, 1.2, 1.25, 1.15, 1.2])
    s = t_interval(d)
    half = 2.5706 * d.std(ddof=1) / math.sqrt(6)  # t(0.975, 5 degrees of freedom)
    assert s["value"] == pytest.approx(math.exp(d.mean()))
    assert s["ci95"] == pytest.approx([math.exp(d.mean() - half), math.exp(d.mean() + half)], rel=1e-4)
    assert s["half_width_pct"] == pytest.approx(100 * (math.exp(half) - 1), rel=1e-3)
    assert t_interval(d[:1])["ci95"] is None  # one question: no interval
    assert judge(s, 6, Band(0.0, ""))["judgement"] == "faster"
    assert judge(s, 6, Band(0.0, ""))["resolvable_pct"] == pytest.approx(s["half_width_pct"])
    assert judge(s, 6, Band(15.0, "x"))["judgement"] == "no difference resolved"  # inside the band
    assert judge({**s, "value": 1 / s["value"]}, 6, Band(0.0, ""))["judgement"] == "slower"
    assert judge(s, 5, Band(0.0, ""))["judgement"].startswith("too few questions for a verdict")


def test_report_states_definitions_and_fingerprints(tmp_path, capsys):
    a, b = drifting_pair(tmp_path, ratio=1.0, interleaved=True)
    run(a, b, tmp_path)
    out = capsys.readouterr().out
    assert out.startswith("# Speed: a vs b (baseline vs opt)\n")  # the order of speed-a-vs-b.md
    assert f"- baseline: `{a}` (code abc123)" in out and f"- opt: `{b}` (code abc123)" in out
    assert "new tokens / decoding steps" in out  # the definitions the numbers follow
    assert "accepted draft tokens + the bonus token" in out


def test_same_or_byte_identical_files_are_refused(tmp_path, caplog):
    a, _ = drifting_pair(tmp_path, ratio=1.0, interleaved=True)
    copy = tmp_path / "copy.jsonl"
    shutil.copyfile(a, copy)
    assert run(a, a, tmp_path)[0] == 2 and "are the same file" in caplog.text
    assert run(a, copy, tmp_path)[0] == 2 and "byte-identical" in caplog.text


@pytest.mark.parametrize("flag, name, words", [
    ("--plot", "speedup.txt", ".txt is not an image format"),
    ("--plot", "speedup", "no extension"),
    ("--json", "a.jsonl/r.json", "cannot write"),  # its folder is a file
    ("--markdown", ".", "cannot write"),  # a folder
])
def test_unwritable_outputs_exit_2_with_a_message(tmp_path, caplog, flag, name, words):
    a, b = drifting_pair(tmp_path, ratio=1.0, interleaved=True)
    rc = speed.main(["--baseline", str(a), "--opt", str(b), flag, str(tmp_path / name)])
    assert rc == 2 and words in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("flag, name, words", [("--plot", "p.json", ".json is not an image format"),
                                               ("--json", "missing/../..", "cannot write")])
def test_profile_table_unwritable_outputs_exit_2(tmp_path, caplog, flag, name, words):
    from eagle.profiling import ProfileReport

    profile = tmp_path / "r.profile.json"
    profile.write_text(json.dumps({"settings": {"mask_impl": "rebuild"},
                                   **ProfileReport(2, {"step_total": 10.0}).to_dict()}))
    assert profile_table.main([str(profile), flag, str(tmp_path / name)]) == 2
    assert words in caplog.text


def test_speedup_plot_draws_the_cis_as_error_bars(tmp_path):
    from evaluation.compare import Run, compare

    a, b = drifting_pair(tmp_path, ratio=1.2, interleaved=True, questions=3 * MIN_QUESTIONS)
    report = compare(Run.load(a), Run.load(b))
    assert all(c["ci95"] for c in report["categories"])
    fig = speed.category_figure(report)
    (bars,) = [c for c in fig.axes[0].containers if getattr(c, "errorbar", None) is not None]
    segments = bars.errorbar.lines[2][0].get_segments()  # one vertical segment per category
    for (x0, lo), (x1, hi) in (seg for seg in segments):
        assert x0 == x1
    cis = sorted(tuple(c["ci95"]) for c in report["categories"])
    drawn = sorted((seg[0][1], seg[1][1]) for seg in segments)
    assert np.allclose(drawn, cis)


@pytest.mark.parametrize("runs", [1, 2, 4])
def test_profile_legend_leaves_the_axis_label_visible(tmp_path, runs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from eagle.profiling import ProfileReport

    profiles = []
    for i in range(runs):
        path = tmp_path / f"r{i}.profile.json"
        ms = {"draft_forward": 10.0, "tree_mask": 2.0, "verify_forward": 20.0, "step_total": 40.0}
        path.write_text(json.dumps({"settings": {"mask_impl": f"impl{i}"},
                                    **ProfileReport(10, {k: 10 * v for k, v in ms.items()}).to_dict()}))
        profiles.append(profile_table.Profile.load(path))
    fig = profile_table.step_figure(profiles)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    label = ax.xaxis.label.get_window_extent(renderer)
    assert ax.xaxis.label.get_text() and not label.overlaps(ax.get_legend().get_window_extent(renderer))


def test_a_control_pair_tells_how_large_drift_was(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    a, b = drifting_pair(first, ratio=1.0, interleaved=False)  # the same code twice, b later
    c, d = drifting_pair(second, ratio=1.1, interleaved=False, seed=1)
    rc, report = run(c, d, tmp_path, "--control", str(a), str(b))
    assert rc == 0 and report["control"]["method"] == "unpaired"
    assert report["control"]["value"] == pytest.approx(1 / 1.5, rel=0.02)
    out = capsys.readouterr().out
    assert f"Control pair, the same code twice (unpaired, 12 questions; `{a}` vs `{b}`): 0.6" in out
    assert "the verdict is judged against it" in out
    assert report["speedup"]["band_source"] == "spread of this run's A/A control"
    assert report["speedup"]["band_pct"] > 50  # the control drifted 1.5x: 1.1x is within it
    assert report["speedup"]["judgement"] == "no difference resolved"

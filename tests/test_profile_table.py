"""profile_table on hand-made profile reports: the table's numbers, the tree-buffer projection,
settings warnings, outputs and bad input."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from eagle.profiling import ProfileReport
from evaluation import profile_table

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"method": "eagle", "mask_impl": "rebuild", "dtype": "float16", "total_token": 60,
            "device_name": "Test GPU"}


def write_profile(path: Path, impl: str, per_step_ms: dict, steps: int = 10, **settings) -> Path:
    report = ProfileReport(steps, {k: v * steps for k, v in per_step_ms.items()})
    path.write_text(json.dumps({"answers": 2, "settings": {**SETTINGS, "mask_impl": impl, **settings},
                                **report.to_dict()}))
    return path


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    rebuild = write_profile(tmp_path / "a.profile.json", "rebuild", {
        "draft_forward": 10.0, "draft_select": 3.0, "tree_mask": 2.0, "retrieve_indices": 0.5,
        "verify_forward": 20.0, "posterior": 0.4, "kv_update": 0.1, "step_total": 40.0})
    triton = write_profile(tmp_path / "b.profile.json", "triton", {  # mask kernel also builds indices
        "draft_forward": 9.0, "draft_select": 3.0, "tree_mask": 0.5, "verify_forward": 18.0,
        "posterior": 0.4, "kv_update": 0.1, "step_total": 32.0})
    return [rebuild, triton]


def table_rows(text: str) -> dict:
    rows = {}
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_table_reports_ms_share_and_projection(two_runs, capsys):
    assert profile_table.main([str(p) for p in two_runs]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| section | rebuild | triton |"
    rows = table_rows(out)
    assert rows["draft forward"] == ["10.00 (25.0%)", "9.00 (28.1%)"]
    assert rows["retrieve indices"] == ["0.50 (1.2%)", "-"]  # not timed separately by triton
    assert rows["**step total**"] == ["**40.00**", "**32.00**"]
    assert rows["tree buffers (mask + retrieve)"] == ["2.50 (6.2%)", "0.50 (1.6%)"]
    # rebuild's step with triton's 0.5 ms of tree buffers instead of 2.5 ms: 40 / 38
    assert rows["speedup from tree buffers alone (vs rebuild)"] == ["1.000x", f"{40 / 38:.3f}x"]
    assert rows["steps"] == ["10", "10"]
    assert "draft forwards + selection (captured)" not in rows  # no run timed it: no empty row


def test_outputs_written(two_runs, tmp_path):
    md, js, png = tmp_path / "o" / "t.md", tmp_path / "o" / "t.json", tmp_path / "o" / "t.png"
    argv = [str(p) for p in two_runs] + ["--markdown", str(md), "--json", str(js), "--plot", str(png)]
    assert profile_table.main(argv) == 0
    assert md.read_text().startswith("| section | rebuild | triton |")
    report = json.loads(js.read_text())
    assert [r["label"] for r in report["runs"]] == ["rebuild", "triton"]
    assert report["runs"][1]["projected_speedup_vs_first"] == pytest.approx(40 / 38)
    assert report["runs"][0]["tree_buffers_ms"] == pytest.approx(2.5)
    assert report["warnings"] == []
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_other_setting_differences_are_warned(tmp_path, two_runs, caplog):
    odd = write_profile(tmp_path / "c.profile.json", "vectorized", {"tree_mask": 1.0, "step_total": 30.0},
                        total_token=128)
    with caplog.at_level(logging.WARNING):
        assert profile_table.main([str(two_runs[0]), str(odd)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'total_token': 60 vs 128" in warnings[0]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "not JSON"),
    ('{"steps": 3}', "not a profile report"),
    ('{"steps": 3, "sections": {"step_total": {"ms_per_step": "x"}}}', "not a profile report"),
    ('{"steps": 0, "sections": {"step_total": {"ms_per_step": 1.0}}}', "no timed steps"),
])
def test_bad_input_names_the_file(tmp_path, two_runs, caplog, content, message):
    bad = tmp_path / "bad.profile.json"
    if content is not None:
        bad.write_text(content)
    with caplog.at_level(logging.ERROR):
        assert profile_table.main([str(two_runs[0]), str(bad)]) == profile_table.EXIT_BAD_INPUT
    assert any(str(bad) in r.getMessage() and message in r.getMessage() for r in caplog.records)


def test_runs_as_a_file(two_runs):
    proc = subprocess.run([sys.executable, str(REPO / "evaluation" / "profile_table.py"),
                           *map(str, two_runs)], capture_output=True, text=True, check=True)
    assert "| verify forward | 20.00 (50.0%) | 18.00 (56.2%) |" in proc.stdout


def test_repeated_implementation_is_labelled_by_file(two_runs, tmp_path, capsys):
    repeat = write_profile(tmp_path / "ea-rebuild-repeat.jsonl.profile.json", "rebuild",
                           {"tree_mask": 2.0, "step_total": 44.0})
    assert profile_table.main([str(two_runs[0]), str(two_runs[1]), str(repeat)]) == 0
    heading = capsys.readouterr().out.splitlines()[0]
    assert heading == "| section | a | triton | ea-rebuild-repeat |"


@pytest.mark.parametrize("content, message", [
    ('{"steps": 3, "sections": []}', "not a profile report"),
    ('{"steps": 3, "settings": 5, "sections": {"step_total": {"ms_per_step": 1.0}}}',
     "not a profile report"),
    ('{"steps": 3, "sections": {"step_total": {"ms_per_step": NaN}}}', "no timed steps"),
    ('{"steps": 3, "sections": {"step_total": {"ms_per_step": 1.0}, "tree_mask": {"ms_per_step": -1}}}',
     "negative or not a number"),
])
def test_malformed_reports_are_refused(tmp_path, caplog, content, message):
    bad = tmp_path / "bad.profile.json"
    bad.write_text(content)
    with caplog.at_level(logging.ERROR):
        assert profile_table.main([str(bad)]) == profile_table.EXIT_BAD_INPUT
    assert any(message in r.getMessage() for r in caplog.records)


def test_unusable_output_paths_exit_2(two_runs, tmp_path, caplog):
    inputs = [str(p) for p in two_runs]
    with caplog.at_level(logging.ERROR):
        assert profile_table.main(inputs + ["--json", inputs[0]]) == profile_table.EXIT_BAD_INPUT
        assert profile_table.main(inputs + ["--markdown", str(tmp_path)]) == profile_table.EXIT_BAD_INPUT
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"is the same file as input {inputs[0]}" in messages and f"cannot write {tmp_path}" in messages
    assert json.loads(two_runs[0].read_text())["steps"] == 10  # the input is untouched


def test_same_file_names_in_other_folders_are_labelled_by_folder(tmp_path, capsys):
    paths = []
    for folder in ("tt60", "tt128"):
        (tmp_path / folder).mkdir()
        paths.append(write_profile(tmp_path / folder / "ea-rebuild.jsonl.profile.json", "rebuild",
                                   {"tree_mask": 1.0, "step_total": 40.0}))
    assert profile_table.main([str(p) for p in paths]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| section | tt60/ea-rebuild | tt128/ea-rebuild |"

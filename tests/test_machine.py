"""The machine record in answer settings (cores, threads, load), ignored by resume and comparison;
the busy-machine warnings; the CPU thread count a small model picks."""
from __future__ import annotations

import json

import pytest
import torch

from evaluation import machine, speed
from evaluation.run_settings import RunSettings
from evaluation.run_settings import settings_differences as differences
from evaluation.answers import answered_ids


def test_capture_and_at_answer_record_the_machine(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    record = machine.capture()
    assert record["cpu_count"] >= 1 and record["torch_threads"] == torch.get_num_threads()
    assert record["omp_num_threads"] == "3" and record["load_end"] is None
    assert record["load_start"] is None or len(record["load_start"]) == 3
    later = machine.at_answer({"method": "eagle", machine.KEY: record})
    assert later[machine.KEY]["load_start"] == record["load_start"]
    assert later[machine.KEY]["load_end"] == machine.load_average()
    assert machine.at_answer({"method": "eagle"}) == {"method": "eagle"}  # older files: as they are


def test_the_machine_decides_no_equality(tmp_path):
    a = {"method": "eagle", machine.KEY: {"cpu_count": 2, "load_start": [0.1, 0.1, 0.1]}}
    b = {"method": "eagle", machine.KEY: {"cpu_count": 64, "load_start": [9.0, 9.0, 9.0]}}
    assert differences(a, b) == [] and differences(a, {**b, "method": "baseline"}) == ["method"]


def test_busy_names_the_load_and_the_cores():
    assert machine.busy({"cpu_count": 2, "load_start": [1.9, 1.0, 1.0]}, "start") is None
    warning = machine.busy({"cpu_count": 2, "load_end": [5.5, 1.0, 1.0]}, "end")
    assert "5.50" in warning and "2 cores" in warning and "end" in warning
    assert machine.busy(None, "start") is None and machine.busy({"cpu_count": 2}, "end") is None


def test_resume_and_speed_ignore_the_machine_and_speed_warns_when_it_was_busy(tmp_path, caplog):
    from test_speed import SETTINGS, answers, write

    quiet = {"cpu_count": 2, "torch_threads": 1, "omp_num_threads": "1",
             "load_start": [0.5, 0.5, 0.5], "load_end": [0.5, 0.5, 0.5]}
    rows = answers(settings={**SETTINGS, machine.KEY: quiet})
    rows[-1]["settings"] = {**SETTINGS, machine.KEY: {**quiet, "load_end": [7.0, 3.0, 1.0]}}
    a = write(tmp_path / "a.jsonl", rows)
    assert answered_ids(a, RunSettings.from_dict({**SETTINGS, machine.KEY: machine.capture()})) == {81, 82, 101}
    b = write(tmp_path / "b.jsonl", answers(settings={**SETTINGS, "mask_impl": "vectorized"}))
    out = tmp_path / "r.json"
    assert speed.main(["--baseline", str(a), "--opt", str(b), "--json", str(out)]) == 0
    expected = "busier than its cores at the end of the run (load average 7.00 on 2 cores)"
    assert expected in caplog.text
    assert any(expected in w for w in json.loads(out.read_text())["warnings"])


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_small_model_on_the_cpu_uses_one_thread(threads, monkeypatch):
    from eagle.threads import SMALL_HIDDEN, pick_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    pick_cpu_threads(torch.device("cpu"), SMALL_HIDDEN)  # a large model keeps torch's choice
    assert torch.get_num_threads() == 2
    pick_cpu_threads(torch.device("cpu"), 32)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
    pick_cpu_threads(torch.device("cpu"), 32)
    assert torch.get_num_threads() == 2

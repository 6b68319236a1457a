"""The committed GPU sweep table regenerates from the committed result folders
(benchmarks/sweep_table.py), which moved from where the sweep wrote them: answers are found beside
their profile reports."""
from pathlib import Path

from benchmarks import sweep_table

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "docs" / "results" / "h100" / "sweep"


def test_committed_sweep_table_regenerates(tmp_path):
    folders = [SWEEP / name for name in ("tt60-d5-k10", "tt60-d8-k10", "tt128-d5-k10", "tt8-d7-k1")]
    out = tmp_path / "sweep.md"
    assert sweep_table.main([*map(str, folders), "--markdown", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (SWEEP / "sweep.md").read_text(encoding="utf-8")


def test_a_folder_without_profile_report_is_refused(tmp_path, capsys):
    assert sweep_table.main([str(tmp_path)]) == 2
    assert "PROFILE=1" in capsys.readouterr().err

"""Obtaining data/mt_bench/question.jsonl: copy or download, sha256 check, atomic write."""
from __future__ import annotations

import io
import json
import subprocess
import urllib.error
from pathlib import Path

import pytest

from evaluation import mt_bench_data
from evaluation.mt_bench_data import MT_BENCH_SHA256, DataError, obtain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(question_file) -> Path:
    return question_file


def test_copy_from_local_path_verifies_and_writes(source, tmp_path):
    out = tmp_path / "data" / "mt_bench" / "question.jsonl"
    assert mt_bench_data.main(["--from", str(source), "--out", str(out)]) == 0
    assert out.read_bytes() == source.read_bytes()
    questions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    assert len({q["category"] for q in questions}) == 8
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_verified_file_is_kept(source, tmp_path):
    out = obtain(tmp_path / "q.jsonl", source)
    stamp = out.stat().st_mtime_ns
    obtain(out, Path("/nonexistent"))  # not read: the present file already verifies
    assert out.stat().st_mtime_ns == stamp


def test_checksum_mismatch_is_an_error_and_leaves_nothing(source, tmp_path, caplog):
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(source.read_bytes().replace(b"Compose", b"Compost", 1))
    out = tmp_path / "data" / "question.jsonl"
    assert mt_bench_data.main(["--from", str(tampered), "--out", str(out)]) == 2
    assert "does not match the published" in caplog.text and MT_BENCH_SHA256 in caplog.text
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_corrupt_existing_file_is_replaced(source, tmp_path):
    out = tmp_path / "q.jsonl"
    out.write_text("not the questions\n")
    obtain(out, source)
    assert out.read_bytes() == source.read_bytes()


def test_unreadable_source_names_the_path(tmp_path):
    with pytest.raises(DataError, match="cannot read .*missing.jsonl"):
        obtain(tmp_path / "q.jsonl", tmp_path / "missing.jsonl")


def test_download_is_verified(source, tmp_path, monkeypatch):
    def fake_urlopen(url, timeout):
        assert url == mt_bench_data.MT_BENCH_URL
        return io.BytesIO(source.read_bytes())

    monkeypatch.setattr(mt_bench_data.urllib.request, "urlopen", fake_urlopen)
    out = obtain(tmp_path / "q.jsonl")
    assert out.read_bytes() == source.read_bytes()


def test_offline_download_says_how_to_copy_instead(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mt_bench_data.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download .*--from"):
        obtain(tmp_path / "q.jsonl")
    assert not (tmp_path / "q.jsonl").exists()


def test_no_tracked_file_refers_to_a_sibling_of_the_repository():
    """A fresh clone has nothing beside it: data, tests, scripts and CI read the shipped files."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    sibling = "../" + "shared"  # spelled in two parts so that this file does not match itself
    offenders = [name for name in listed.stdout.decode().split("\0")
                 if name and (REPO / name).is_file() and sibling in (REPO / name).read_text(errors="replace")]
    assert offenders == []

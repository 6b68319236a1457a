"""The README's "MT-Bench by hand" block runs as written on a CPU-only machine."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]


def by_hand_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## MT-Bench by hand", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block under 'MT-Bench by hand'"
    return match.group(1)


@pytest.mark.slow
def test_by_hand_recipe_runs_as_written_on_the_cpu(question_file, tmp_path):
    data = tmp_path / "data" / "mt_bench"  # the recipe runs in a fresh folder, as a clone's data
    data.mkdir(parents=True)
    shutil.copy(question_file, data / "question.jsonl")
    shims = tmp_path / "bin"
    shims.mkdir()
    shim = shims / "python"  # `python` is this interpreter (a script: a venv survives it)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand_block()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for name in ("tiny-rebuild.jsonl", "tiny-vectorized.jsonl", "tiny-baseline.jsonl", "report.md",
                 "speedup.png", "profile.md", "profile.png"):
        assert (tmp_path / "runs" / name).is_file(), name
    assert (tmp_path / "checkpoints" / "tiny" / "base" / "config.json").is_file()

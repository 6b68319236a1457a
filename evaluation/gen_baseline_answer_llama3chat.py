"""Answer MT-Bench with vanilla autoregressive decoding (the baseline), same schema and stopping rules.

Runs as `eagle-gen-baseline-answer`, `python -m evaluation.gen_baseline_answer_llama3chat` or
`python evaluation/gen_baseline_answer_llama3chat.py`; see `--help`.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's `evaluation` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.gen_cli import main as _main  # noqa: E402


def main() -> int:
    return _main("baseline")


if __name__ == "__main__":
    sys.exit(main())

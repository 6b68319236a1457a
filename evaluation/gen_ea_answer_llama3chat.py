"""Answer MT-Bench with EAGLE-3 speculative decoding of a Llama-3 chat model (`--mask-impl` selectable).

Runs as `eagle-gen-ea-answer`, `python -m evaluation.gen_ea_answer_llama3chat` or
`python evaluation/gen_ea_answer_llama3chat.py`; see `--help`.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's `evaluation` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.gen_cli import main as _main  # noqa: E402


def main() -> int:
    return _main("eagle")


if __name__ == "__main__":
    sys.exit(main())

"""`python -m evaluation.settings_of FILE KEY`: print one key of an answer file's settings (the
first line's, which every line shares), so that shell scripts ask rather than grep."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .answers import AnswerFileError, iter_lines
from .run_settings import RunSettings


def settings_value(path: Path, key: str) -> object:
    for _, obj in iter_lines(path):
        if not isinstance(obj.get("settings"), dict):
            raise AnswerFileError(path, None, "its first answer has no settings object")
        return RunSettings.from_dict(obj["settings"]).get(key)
    raise AnswerFileError(path, None, "empty answer file (no answers)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.settings_of",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, metavar="FILE", help="an answer file (.jsonl)")
    parser.add_argument("key", metavar="KEY", help="a settings key, e.g. dtype")
    args = parser.parse_args(argv)
    try:
        value = settings_value(args.file, args.key)
    except AnswerFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(value if isinstance(value, str) else json.dumps(value))  # noqa: T201 - the answer
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

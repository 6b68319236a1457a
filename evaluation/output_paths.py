"""Report output paths that would overwrite an input or each other, before anything is written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def output_clash(inputs: dict[str, Path], outputs: dict[str, Optional[Path]]) -> Optional[str]:
    """inputs: what each is called ("--baseline", "an input") -> path; outputs: "--flag" -> path
    or None. Returns why one output path is unusable, or None when all are distinct."""
    taken = {os.path.realpath(path): name for name, path in inputs.items()}
    for flag, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in taken:
            return f"{flag} {path} is the same file as {taken[real]}; choose another output path"
        taken[real] = flag
    return None

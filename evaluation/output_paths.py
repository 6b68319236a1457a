"""Report output paths that would overwrite an input or each other, or plots matplotlib cannot save,
before anything is written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional


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


def plot_format_problem(path: Optional[Path]) -> Optional[str]:
    """Why matplotlib cannot save a plot to `path` (its extension names no format it knows), or None."""
    if path is None:
        return None
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lstrip(".").lower()
    if ext not in formats:
        return (f"--plot {path}: {'no extension' if not ext else f'.{ext} is not an image format'}; "
                f"end the name with one of {', '.join('.' + f for f in sorted(formats))}")
    return None


class OutputError(Exception):
    """An output file that could not be written; the message names the flag, the path and why."""


def write_output(flag: str, path: Optional[Path], writer: Callable[[Path], None]) -> None:
    """Create the folder of `path` and write it with `writer`; failures become an `OutputError`."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({flag}): {exc.strerror or exc}; choose another "
                          f"{flag} path") from None
    except ValueError as exc:  # matplotlib: a format it cannot save
        raise OutputError(f"cannot write {path} ({flag}): {exc}; choose another {flag} path") from None

"""Which code wrote an answer file: package version, a hash of the sources, the git commit.

The fingerprint hashes every `.py` file of the `eagle` and `evaluation` packages that are actually
imported (path and content), so two runs with the same fingerprint ran the same engine and the same
generator whatever the install; the git commit and a dirty flag (uncommitted changes under those
two packages) are added when the packages sit in a git checkout.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Optional

PACKAGES = ("eagle", "evaluation")
DISTRIBUTION = "eagle-mask-bench"


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree, not installed
        return None


def package_dirs() -> list[Path]:
    import eagle
    import evaluation

    return [Path(eagle.__file__).resolve().parent, Path(evaluation.__file__).resolve().parent]


def source_fingerprint(dirs: list[Path]) -> str:
    """sha256 (first 16 hex digits) over the relative paths and bytes of the `.py` files in `dirs`."""
    digest = hashlib.sha256()
    for root in dirs:
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(dirs: list[Path]) -> dict:
    """{"git_commit", "dirty"} when `dirs` share the top of one git checkout, else {}."""
    root = dirs[0].parent
    if any(d.parent != root for d in dirs):
        return {}
    top = _git(root, "rev-parse", "--show-toplevel")
    commit = _git(root, "rev-parse", "HEAD")
    if top is None or commit is None or Path(top).resolve() != root:
        return {}
    status = _git(root, "status", "--porcelain", "--", *(d.name for d in dirs))
    return {"git_commit": commit, "dirty": bool(status)}


@functools.lru_cache(maxsize=1)
def _identity() -> tuple:
    dirs = package_dirs()
    found = {"version": package_version(DISTRIBUTION), "fingerprint": source_fingerprint(dirs),
             **git_state(dirs)}
    return tuple(found.items())


def code_identity() -> dict:
    """{"version", "fingerprint"[, "git_commit", "dirty"]} of the running code (computed once)."""
    return dict(_identity())

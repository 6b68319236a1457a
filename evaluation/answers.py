"""Answer files: FastChat llm_judge JSON lines plus per-turn decoding statistics and run settings.

One line per question:
    {question_id, answer_id, model_id, tstamp, category, settings,
     choices: [{index, turns: [text], new_tokens: [int], wall_time: [s], steps: [int],
                accept_lengths: [[int]], token_ids: [[int]]}], (profile)}
Writing appends and flushes one line at a time, so a killed run loses at most the line it was
writing; resuming drops that torn line and skips the questions already answered; the final sort and
de-duplication replaces the file atomically.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from .atomic import write_atomic

log = logging.getLogger(__name__)

ANSWER_FIELDS = ("question_id", "answer_id", "model_id", "tstamp", "category", "choices", "settings")
TURN_FIELDS = ("turns", "new_tokens", "wall_time", "steps", "accept_lengths", "token_ids")


class AnswerFileError(ValueError):
    """A problem with one line (or the whole) of an answer file; the message names file and line."""

    def __init__(self, path: Path, line: Optional[int], message: str):
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")
        self.path, self.line = path, line


def iter_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; malformed JSON is an `AnswerFileError`."""
    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AnswerFileError(path, number, f"malformed JSON ({exc.msg}, column {exc.colno})") \
                    from None
            if not isinstance(obj, dict):
                raise AnswerFileError(path, number, "expected a JSON object per line")
            yield number, obj


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_turn_values(choice: dict, where: str) -> Optional[str]:
    n = len(choice["turns"])
    for key in TURN_FIELDS:
        if not isinstance(choice[key], list) or len(choice[key]) != n:
            return f"{where}: '{key}' must be a list with one entry per turn ({n})"
    for t in range(n):
        ids, wall = choice["token_ids"][t], choice["wall_time"][t]
        if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
            return f"{where} turn {t + 1}: 'token_ids' must be a list of ints"
        if not ids:
            return f"{where} turn {t + 1}: 'token_ids' is empty (every turn generates a token)"
        if not _is_int(choice["new_tokens"][t]) or choice["new_tokens"][t] != len(ids):
            return f"{where} turn {t + 1}: 'new_tokens' must equal len(token_ids) = {len(ids)}"
        if not _is_int(choice["steps"][t]) or choice["steps"][t] < 0:
            return f"{where} turn {t + 1}: 'steps' must be a non-negative int"
        if not isinstance(choice["accept_lengths"][t], list):
            return f"{where} turn {t + 1}: 'accept_lengths' must be a list"
        if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not wall > 0:
            return f"{where} turn {t + 1}: wall_time must be a positive number of seconds, got {wall!r}"
    return None


def answer_problem(obj: dict) -> Optional[str]:
    """What is wrong with one answer object, or None when it follows the schema."""
    missing = [k for k in ANSWER_FIELDS if k not in obj]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not isinstance(obj["settings"], dict):
        return "'settings' must be an object"
    if not isinstance(obj["choices"], list) or not obj["choices"]:
        return "'choices' must be a non-empty list"
    for c, choice in enumerate(obj["choices"]):
        where = f"question {obj['question_id']} choice {c}"
        if not isinstance(choice, dict):
            return f"{where}: each choice must be an object"
        missing = [k for k in ("index",) + TURN_FIELDS if k not in choice]
        if missing:
            return f"{where}: missing field(s) {', '.join(missing)}"
        problem = _check_turn_values(choice, where)
        if problem:
            return problem
    return None


def read_answers(path: Path) -> list[tuple[int, dict]]:
    """All answers of a file, validated: schema, unique question ids, one settings object."""
    path = Path(path)
    if not path.is_file():
        raise AnswerFileError(path, None, "no such answer file")
    rows, seen = [], {}
    for number, obj in iter_lines(path):
        problem = answer_problem(obj)
        if problem:
            raise AnswerFileError(path, number, problem)
        qid = obj["question_id"]
        if qid in seen:
            raise AnswerFileError(path, number, f"duplicate question_id {qid} (first on line {seen[qid]})")
        seen[qid] = number
        if rows and obj["settings"] != rows[0][1]["settings"]:
            key = settings_diff(rows[0][1]["settings"], obj["settings"])[0]
            raise AnswerFileError(path, number, f"settings differ from line {rows[0][0]} in {key!r}")
        rows.append((number, obj))
    if not rows:
        raise AnswerFileError(path, 1, "empty answer file (no answers)")
    return rows


def settings_diff(a: dict, b: dict, ignore: frozenset = frozenset()) -> list[str]:
    """Keys whose values differ (or that only one side has), sorted, except those in `ignore`."""
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a write interrupted by a kill) so appends start cleanly."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                    path, len(data) - keep)
        with open(path, "r+b") as fh:
            fh.truncate(keep)


def answered_ids(path: Path, settings: dict) -> set:
    """Question ids already answered in `path` by a run with the same settings (resume)."""
    if not path.exists():
        return set()
    drop_torn_tail(path)
    done = set()
    for number, obj in iter_lines(path):
        problem = answer_problem(obj)
        if problem:
            raise AnswerFileError(path, number, f"{problem}; fix or delete the file to start over")
        diff = settings_diff(obj["settings"], settings)
        if diff:
            key = diff[0]
            raise AnswerFileError(
                path, number, f"cannot resume: written with different settings ({key!r}: "
                f"{obj['settings'].get(key)!r} in the file, {settings.get(key)!r} now); choose another "
                f"--answer-file or delete this one")
        done.add(obj["question_id"])
    return done


class AnswerWriter:
    """Appends answer lines, flushing each one as it is written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: TextIO = open(path, "a", encoding="utf-8")

    def write(self, answer: dict) -> None:
        self._fh.write(json.dumps(answer) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sort_and_dedup(path: Path) -> int:
    """Rewrite `path` sorted by question id, keeping the last answer of each; returns the count."""
    latest = {obj["question_id"]: obj for _, obj in iter_lines(path)}
    lines = [json.dumps(latest[qid]) + "\n" for qid in sorted(latest)]
    write_atomic(path, "".join(lines).encode())
    return len(lines)

"""upgrade_answers: answer files of the earlier format converted exactly; the committed results read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import upgrade_answers
from evaluation.answers import answer_problem, iter_lines, read_answers

REPO = Path(__file__).resolve().parents[1]


def old_line(qid: int, method: str) -> dict:
    """The earlier format, written by hand: turn 1 has 6 tokens in 2 steps (accepted 2 then 3,
    the second step cut by a stop token after 2 of its 4 tokens), turn 2 one token."""
    eagle = method == "eagle"
    return {"question_id": qid, "answer_id": "x", "model_id": "m", "tstamp": 1.0, "category": "math",
            "settings": {"method": method}, "choices": [{
                "index": 0, "turns": ["a", "b"], "new_tokens": [6, 1], "wall_time": [0.5, 0.1],
                "steps": [2, 0] if eagle else [5, 0],
                "accept_lengths": [[2, 3], []] if eagle else [[], []],
                "token_ids": [[1, 2, 3, 4, 5, 9], [9]]}]}


def test_earlier_files_are_converted_exactly(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(old_line(q, m)) + "\n" for q, m in ((1, "eagle"), (2, "baseline"))))
    assert upgrade_answers.main([str(path)]) == 0
    converted = [obj for _, obj in iter_lines(path)]  # two methods: one line each, checked alone
    assert [answer_problem(obj) for obj in converted] == [None, None]
    eagle, baseline = [obj["choices"][0] for obj in converted]
    assert (eagle["decoding_steps"], eagle["idxs"], eagle["accept_lengths"]) == ([2, 0], [1, -1], [3, 2])
    assert eagle["detail"] == {"token_ids": [[1, 2, 3, 4, 5, 9], [9]], "accepted_drafts": [[2, 3], []]}
    assert (baseline["decoding_steps"], baseline["idxs"]) == ([6, 1], [5, 0])  # a step per token
    assert baseline["accept_lengths"] == [1] * 7 and baseline["detail"]["accepted_drafts"] == [[], []]
    before = path.read_bytes()
    assert upgrade_answers.main([str(path)]) == 0 and path.read_bytes() == before  # nothing left to do


def test_an_answer_that_does_not_fit_is_refused_and_the_file_kept(tmp_path, caplog):
    bad = old_line(1, "eagle")
    bad["choices"][0]["accept_lengths"] = [[0], []]  # 1 step of 1 token cannot make 6 tokens
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    before = path.read_bytes()
    assert upgrade_answers.main([str(path)]) == 2
    assert f"{path}:1: cannot convert this answer" in caplog.text and path.read_bytes() == before


@pytest.mark.parametrize("path", sorted((REPO / "docs" / "results").glob("*/*.jsonl")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_answer_files_follow_the_schema(path):
    assert read_answers(path)

"""Interleaved runs: several members answer in one process, in rotating order, one file each;
resume across the files; the code fingerprint; the runner's order and conversations."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from evaluation import speed
from evaluation.run_settings import settings_differences as differences
from evaluation.answers import answer_problem, iter_lines
from evaluation.code_version import source_fingerprint
from evaluation.gen_cli import main as gen_main
from evaluation.run_settings import Member, member_labels
from evaluation.interleave import Runner, rotation


pytestmark = pytest.mark.usefixtures("one_thread")


def generate(method: str, ckpt: Path, question_file: Path, answer_file, *extra: str,
             questions: int = 3) -> int:
    argv = ["--base-model-path", str(ckpt / "base"), "--ea-model-path", str(ckpt / "draft"),
            "--question-file", str(question_file), "--answer-file", str(answer_file),
            "--question-end", str(questions), "--max-new-token", "8", "--device", "cpu", *extra]
    return gen_main(method, argv)


def rows(path: Path) -> list[dict]:
    return [obj for _, obj in iter_lines(path)]


def ids(path: Path) -> list:
    return [[c["detail"]["token_ids"] for c in a["choices"]] for a in rows(path)]


@pytest.fixture(scope="module")
def trio(tiny_ckpt, question_file, tmp_path_factory) -> Path:
    """rebuild,vectorized --with-baseline, interleaved: DIR/ea-{rebuild,vectorized,baseline}.jsonl"""
    out = tmp_path_factory.mktemp("trio")
    assert generate("eagle", tiny_ckpt, question_file, out / "ea-{impl}.jsonl", "--mask-impl",
                    "rebuild,vectorized", "--with-baseline", "--profile") == 0
    return out


def test_rotation_gives_every_member_every_place():
    assert [rotation(2, q, t) for q in range(2) for t in range(2)] == \
        [[0, 1], [1, 0], [1, 0], [0, 1]]
    places = {m: [] for m in range(3)}
    for q in range(3):
        for place, m in enumerate(rotation(3, q, 0)):
            places[m].append(place)
    assert all(sorted(p) == [0, 1, 2] for p in places.values())


def test_repeated_names_are_numbered():
    assert member_labels(["rebuild", "vectorized", "rebuild", "rebuild"]) == \
        ["rebuild", "vectorized", "rebuild-2", "rebuild-3"]


def test_interleaved_run_writes_one_plain_file_per_member(trio):
    files = {label: trio / f"ea-{label}.jsonl" for label in ("rebuild", "vectorized", "baseline")}
    assert sorted(p.name for p in trio.glob("*.jsonl")) == sorted(p.name for p in files.values())
    lines = {label: rows(path) for label, path in files.items()}
    run_ids = {a["interleave"]["run_id"] for answers in lines.values() for a in answers}
    assert len(run_ids) == 1
    for label, answers in lines.items():
        assert [a["question_id"] for a in answers] == [81, 82, 83]
        for a in answers:
            assert answer_problem(a) is None
            assert a["interleave"]["members"] == ["rebuild", "vectorized", "baseline"]
            assert a["interleave"]["label"] == label and len(a["interleave"]["positions"]) == 2
    for q in range(3):  # each turn: the three places, once each
        for t in range(2):
            assert sorted(lines[m][q]["interleave"]["positions"][t] for m in lines) == [0, 1, 2]
    assert [a["model_id"] for a in lines["baseline"]] == ["baseline"] * 3
    assert lines["vectorized"][0]["settings"]["mask_impl"] == "vectorized"
    assert ids(files["rebuild"]) == ids(files["vectorized"]) == ids(files["baseline"])  # float32
    assert Path(f"{files['rebuild']}.profile.json").is_file()
    assert not Path(f"{files['baseline']}.profile.json").exists()


def test_interleaved_files_pair_in_speed_py_and_load_in_fastchat(trio, tmp_path):
    from test_generate_answers import load_model_answers

    loaded = load_model_answers()(str(trio))
    assert set(loaded) == {"ea-rebuild", "ea-vectorized", "ea-baseline"}
    assert all(answers.keys() == {81, 82, 83} for answers in loaded.values())
    for a, b in (("rebuild", "vectorized"), ("baseline", "rebuild"), ("baseline", "vectorized")):
        out = tmp_path / f"{a}-{b}.json"
        assert speed.main(["--baseline", str(trio / f"ea-{a}.jsonl"), "--opt",
                           str(trio / f"ea-{b}.jsonl"), "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["pairing"]["paired"] and report["pairing"]["paired_questions"] == [81, 82, 83]
        assert report["speedup"]["method"] == "paired"
        assert (report["audit"]["turns"], report["audit"]["differing"]) == (6, 0)


def test_baseline_member_settings_are_the_baseline_generators(trio, tiny_ckpt, question_file,
                                                              tmp_path):
    alone = tmp_path / "baseline.jsonl"
    assert generate("baseline", tiny_ckpt, question_file, alone, questions=1) == 0
    member = rows(trio / "ea-baseline.jsonl")[0]["settings"]
    assert differences(rows(alone)[0]["settings"], member) == []  # the machine's load aside
    assert "interleave" not in rows(alone)[0]  # a plain run's lines stay as they were
    code = rows(alone)[0]["settings"]["code"]
    assert len(code["fingerprint"]) == 16 and code["version"]


def test_a_a_control_names_the_second_file(tiny_ckpt, question_file, tmp_path):
    assert generate("eagle", tiny_ckpt, question_file, tmp_path / "{impl}.jsonl",
                    "--mask-impl", "rebuild,rebuild", questions=1) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rebuild-2.jsonl", "rebuild.jsonl"]
    second = rows(tmp_path / "rebuild-2.jsonl")[0]
    assert second["model_id"] == "ea-rebuild-2" and second["settings"]["mask_impl"] == "rebuild"
    assert ids(tmp_path / "rebuild.jsonl") == ids(tmp_path / "rebuild-2.jsonl")


def test_resume_redoes_a_partial_question_for_every_member(trio, tiny_ckpt, question_file, tmp_path,
                                                           caplog):
    caplog.set_level(logging.INFO)
    for path in trio.glob("ea-*.jsonl"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    vectorized = tmp_path / "ea-vectorized.jsonl"
    vectorized.write_text("".join(line + "\n" for line in vectorized.read_text().splitlines()[:2]))
    before = {p.name: rows(p) for p in tmp_path.glob("*.jsonl")}
    assert generate("eagle", tiny_ckpt, question_file, tmp_path / "ea-{impl}.jsonl", "--mask-impl",
                    "rebuild,vectorized", "--with-baseline", "--profile") == 0
    assert "answered by some members only" in caplog.text  # the reason question 83 is redone
    new_runs = set()
    for name, old in before.items():
        now = rows(tmp_path / name)
        assert [a["question_id"] for a in now] == [81, 82, 83]
        assert [a["answer_id"] for a in now[:2]] == [a["answer_id"] for a in old[:2]]
        new_runs.add(now[2]["interleave"]["run_id"])
        assert now[2]["interleave"]["run_id"] != old[0]["interleave"]["run_id"]
    assert len(new_runs) == 1  # question 83 answered again by all three, in one process


def test_plain_runs_do_not_count_as_one_interleaved_run(tiny_ckpt, question_file, tmp_path, caplog):
    for impl in ("rebuild", "vectorized"):
        assert generate("eagle", tiny_ckpt, question_file, tmp_path / f"ea-{impl}.jsonl",
                        "--mask-impl", impl, "--model-id", f"ea-{impl}", questions=1) == 0
    assert generate("eagle", tiny_ckpt, question_file, tmp_path / "ea-{impl}.jsonl",
                    "--mask-impl", "rebuild,vectorized", questions=1) == 0
    assert "not in one interleaved run" in caplog.text
    assert rows(tmp_path / "ea-rebuild.jsonl")[0]["interleave"]["members"] == ["rebuild", "vectorized"]


def edit_settings(path: Path, change) -> None:
    lines = rows(path)
    for line in lines:
        change(line["settings"]["code"])
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_resume_refuses_answers_of_other_code(trio, tiny_ckpt, question_file, tmp_path, caplog):
    for path in trio.glob("ea-*.jsonl"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    ours = rows(tmp_path / "ea-baseline.jsonl")[0]["settings"]["code"]["fingerprint"]
    edit_settings(tmp_path / "ea-baseline.jsonl", lambda code: code.update(fingerprint="0123456789abcdef"))
    before = (tmp_path / "ea-baseline.jsonl").read_bytes()
    assert generate("eagle", tiny_ckpt, question_file, tmp_path / "ea-{impl}.jsonl", "--mask-impl",
                    "rebuild,vectorized", "--with-baseline", "--question-end", "4") == 2
    assert "ea-baseline.jsonl" in caplog.text
    assert "0123456789abcdef" in caplog.text and ours in caplog.text
    assert (tmp_path / "ea-baseline.jsonl").read_bytes() == before


def test_same_code_at_another_commit_resumes(trio, tiny_ckpt, question_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "ea-rebuild.jsonl"
    assert generate("eagle", tiny_ckpt, question_file, path, "--mask-impl", "rebuild",
                    questions=1) == 0
    edit_settings(path, lambda code: code.update(git_commit="f" * 40))
    assert generate("eagle", tiny_ckpt, question_file, path, "--mask-impl", "rebuild",
                    questions=2) == 0
    assert {a["settings"]["code"]["git_commit"] for a in rows(path)} == {"f" * 40}  # kept
    assert [a["question_id"] for a in rows(path)] == [81, 82]


def test_fingerprint_follows_the_sources(tmp_path):
    (tmp_path / "eagle").mkdir()
    (tmp_path / "eagle" / "a.py").write_text("x = 1\n")
    first = source_fingerprint([tmp_path / "eagle"])
    (tmp_path / "eagle" / "a.py").write_text("x = 2\n")
    assert source_fingerprint([tmp_path / "eagle"]) != first


class Scripted:
    """An answerer that records who took which turn of which question, and what it saw."""

    def __init__(self, label: str, log: list):
        self.label, self.log = label, log

    def conversations(self, question: dict) -> list:
        outer = self

        class Talk:
            def __init__(self):
                self.history = []

            def turn(self, text: str) -> None:
                outer.log.append((outer.label, question["question_id"], text, list(self.history)))
                self.history += [text, f"{outer.label}:{text}"]

        return [Talk()]

    def record(self, question: dict, talks: list) -> dict:
        return {"question_id": question["question_id"], "history": talks[0].history}


def test_runner_takes_turns_in_rotating_order_each_member_with_its_own_history(tmp_path):
    from evaluation.run_settings import GenConfig, RunSettings

    cfg = GenConfig("eagle", "b", "d", None, tmp_path / "{impl}.jsonl", tmp_path / "q.jsonl",
                    mask_impl="rebuild,vectorized")
    settings = RunSettings.from_dict({"code": {"fingerprint": "x"}})
    runner = Runner(cfg.members(), [settings, settings])
    calls: list = []
    runner.seat(lambda member, _settings: Scripted(member.label, calls))
    questions = [{"question_id": q, "turns": ["t1", "t2"]} for q in (1, 2)]
    lines = [runner.answer(i, q) for i, q in enumerate(questions)]
    assert [(who, q, text) for who, q, text, _ in calls] == [
        ("rebuild", 1, "t1"), ("vectorized", 1, "t1"), ("vectorized", 1, "t2"), ("rebuild", 1, "t2"),
        ("vectorized", 2, "t1"), ("rebuild", 2, "t1"), ("rebuild", 2, "t2"), ("vectorized", 2, "t2")]
    assert all(seen == ([] if text == "t1" else ["t1", f"{who}:t1"]) for who, _, text, seen in calls)
    assert [line["interleave"]["positions"] for line in lines[0]] == [[0, 1], [1, 0]]
    assert [line["interleave"]["positions"] for line in lines[1]] == [[1, 0], [0, 1]]
    assert isinstance(runner.seats[0].member, Member)

"""Our answer files read by the community's own formulas: Spec-Bench's `evaluation/speed.py`,
upstream EAGLE's `evaluation/speed.py` and FastChat's `load_model_answers`, on EAGLE and baseline
files of the tiny model. The formulas are re-computed here from the raw JSON, independently of
`evaluation.compare`, and checked against what `speed.py` reports where the definitions coincide."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import speed
from evaluation.answers import tokens_per_step
from evaluation.gen_cli import main as gen_main

REPO = Path(__file__).resolve().parents[1]
QUESTIONS, MAX_NEW = 4, 24  # a budget some turns hit: their last step is cut


@pytest.fixture(scope="module")
def files(tiny_ckpt, question_file, tmp_path_factory) -> dict:
    """{"eagle": path, "baseline": path} in one folder, as FastChat's reader expects."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's ops pay only for thread synchronisation
    folder = tmp_path_factory.mktemp("interop")
    out = {}
    for method in ("eagle", "baseline"):
        out[method] = folder / f"{method}.jsonl"
        argv = ["--base-model-path", str(tiny_ckpt / "base"), "--ea-model-path", str(tiny_ckpt / "draft"),
                "--question-file", str(question_file), "--answer-file", str(out[method]), "--question-end",
                str(QUESTIONS), "--max-new-token", str(MAX_NEW), "--device", "cpu", "--model-id", method]
        assert gen_main(method, argv) == 0
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def report(files, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report") / "speed.json"
    assert speed.main(["--baseline", str(files["baseline"]), "--opt", str(files["eagle"]),
                       "--json", str(out)]) == 0
    return json.loads(out.read_text())


def raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mean_question_speed(rows: list[dict], count=lambda choice: sum(choice["new_tokens"])) -> float:
    """Spec-Bench's and upstream EAGLE's tokens/s: per question, tokens of choice 0 over the sum of
    its wall times; the mean over questions."""
    return float(np.mean([count(r["choices"][0]) / sum(r["choices"][0]["wall_time"]) for r in rows]))


def test_spec_bench_throughput_and_mean_accepted_tokens(files, report):
    eagle, base = raw(files["eagle"]), raw(files["baseline"])

    def spec_bench_mean_accepted(rows: list[dict]) -> float:  # its list: extended question by question
        flat = []
        for r in rows:
            flat.extend(r["choices"][0]["accept_lengths"])
        return float(np.mean(flat))  # numpy refuses the list if an entry is itself a list

    ours = report["opt"]["acceptance"]["mean_accept_lengths"]
    assert spec_bench_mean_accepted(eagle) == pytest.approx(ours)
    assert spec_bench_mean_accepted(base) == report["baseline"]["acceptance"]["mean_accept_lengths"] == 1.0
    # one choice per question: Spec-Bench's per-question mean is speed.py's "mean over questions"
    assert mean_question_speed(eagle) == pytest.approx(report["opt"]["tokens_per_s_mean_per_question"])
    assert mean_question_speed(base) == pytest.approx(report["baseline"]["tokens_per_s_mean_per_question"])
    for r in eagle:  # decoding_steps per turn, in the order of the flat accept_lengths
        c = r["choices"][0]
        assert len(c["accept_lengths"]) == sum(c["decoding_steps"])
        assert c["idxs"] == [s - 1 for s in c["decoding_steps"]]  # upstream EAGLE's last step index


def test_tau_and_spec_bench_mean_differ_only_by_cut_last_steps(files, report):
    turns = [(n, a) for r in raw(files["eagle"]) for c in r["choices"]
             for n, a in zip(c["new_tokens"], c["detail"]["accepted_drafts"])]
    steps = sum(len(a) for _, a in turns)
    offered = sum(x + 1 for _, a in turns for x in a)  # accepted drafts + bonus, every step
    kept = sum(n - 1 for n, _ in turns)  # the prefill's token is in no step
    acceptance = report["opt"]["acceptance"]
    assert acceptance["mean_acceptance_length"] == pytest.approx(offered / steps)
    assert acceptance["mean_accept_lengths"] == pytest.approx(kept / steps)
    assert offered > kept, "no turn hit the budget: raise QUESTIONS or lower MAX_NEW"
    assert acceptance["new_tokens_per_step"] == pytest.approx((kept + len(turns)) / steps)


def test_baseline_tokens_re_tokenised_as_spec_bench_and_eagle_count_them(files, tiny_ckpt, report):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_ckpt / "base"))
    stop = {tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.eos_token_id}
    base = raw(files["baseline"])

    def re_tokenised(choice: dict) -> int:  # both upstream scripts: len(tokenizer(text).input_ids) - 1
        return sum(len(tokenizer(text).input_ids) - 1 for text in choice["turns"])

    round_trips = 0
    for r in base:
        c = r["choices"][0]
        for text, ids, new in zip(c["turns"], c["detail"]["token_ids"], c["new_tokens"]):
            kept = [t for t in ids if t not in stop]
            if tokenizer(text).input_ids != kept:  # text re-tokenised otherwise than generated
                continue
            round_trips += 1
            # here the counts differ only by the stop token (in new_tokens, not in the text) and by
            # the BOS the upstream "- 1" expects, which the tiny tokenizer does not prepend
            assert len(tokenizer(text).input_ids) - 1 == new - int(ids[-1] in stop) - 1
    assert round_trips >= QUESTIONS  # most turns re-tokenise to their own ids
    ea = mean_question_speed(raw(files["eagle"]))
    upstream = ea / mean_question_speed(base, re_tokenised)  # the ratio both scripts print
    ours = (report["opt"]["tokens_per_s_mean_per_question"]
            / report["baseline"]["tokens_per_s_mean_per_question"])
    same_count = ea / mean_question_speed(base)  # their formula with the baseline's new_tokens
    assert same_count == pytest.approx(ours)
    assert upstream > same_count  # fewer baseline tokens counted: the stop token and one per turn


def test_fastchat_reads_eagle_and_baseline_files(files, monkeypatch):
    import importlib
    import sys
    import types

    for name in ("openai", "anthropic"):  # the judge's API clients, imported by the module only
        try:
            importlib.import_module(name)
        except ImportError:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    from fastchat.llm_judge.common import load_model_answers

    loaded = load_model_answers(str(files["eagle"].parent))
    assert loaded.keys() == {"eagle", "baseline"}
    for answers in loaded.values():
        assert len(answers) == QUESTIONS
        assert all(a["choices"][0]["turns"] and a["question_id"] == q for q, a in answers.items())


@pytest.mark.parametrize("new_tokens, accepted, added", [
    (5, [1, 1], [2, 2]),  # two full steps after the prefill's token
    (4, [5], [3]),  # a stop token (or the budget) after 3 of the step's 6 tokens
    (1, [], []),  # the prefill's token alone
    (7, [0, 0, 3], [1, 1, 4]),
])
def test_tokens_per_step(new_tokens, accepted, added):
    assert tokens_per_step(new_tokens, accepted) == added


@pytest.mark.parametrize("new_tokens, accepted", [(5, [1]), (2, [0, 0])])
def test_tokens_per_step_refuses_counts_that_do_not_fit(new_tokens, accepted):
    with pytest.raises(ValueError):
        tokens_per_step(new_tokens, accepted)

"""benchmarks.real_model on the tiny checkpoints (CPU, float32): every member answers the same
prompts, greedy EAGLE and transformers' own generate decode plain decoding's tokens, and the
judging pass re-scores a planted divergence."""
import json

import pytest

from benchmarks import real_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def report_path(tiny_ckpt, question_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "real.json"
    argv = ["--base", str(tiny_ckpt / "base"), "--draft", str(tiny_ckpt / "draft"), "--device", "cpu",
            "--dtype", "float32", "--hf", "dynamic", "--mask-impls", "rebuild,vectorized",
            "--question-file", str(question_file), "--question-end", "1", "--max-new-token", "12",
            "--out", str(out)]
    assert real_model.main(argv) == 0
    return out


def test_every_member_decodes_plain_tokens(report_path):
    report = json.loads(report_path.read_text())
    members = report["members"]
    assert set(members) == {"plain", "rebuild", "vectorized", "transformers"}
    assert report["complete"] and report["turns_done"] == 2
    assert report["hf_compiled"] is False  # a dynamic cache runs eagerly
    for name in ("rebuild", "vectorized", "transformers"):
        assert members[name]["identical_to_plain"] == 2, name
    for name in ("rebuild", "vectorized"):
        assert members[name]["steps"] >= 1 and members[name]["tau"] >= 1.0
        assert members[name]["speedup_vs_plain"]["value"] > 0
    assert report["turns"][0]["plain"]["new_tokens"] == 12


def test_judge_scores_a_planted_divergence(report_path, tiny_ckpt, question_file, tmp_path):
    report = json.loads(report_path.read_text())
    turn = report["turns"][0]
    ids = turn["transformers"]["ids"]
    ids[3] = (ids[3] + 1) % 1000  # transformers' side now departs at position 3
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(report))
    out = tmp_path / "judged.json"
    argv = ["--judge", str(planted), "--base", str(tiny_ckpt / "base"), "--question-file",
            str(question_file), "--out", str(out)]
    assert real_model.main(argv) == 0
    judged = json.loads(out.read_text())["divergences"]["plain vs transformers"]
    assert judged["divergences"] == 1
    div = judged["list"][0]
    assert (div["question_id"], div["turn"], div["position"]) == (81, 1, 3)
    assert div["ranks"][0] == 1 and div["ranks"][1] > 1  # plain's token is the reference's argmax
    assert judged["reference_sides_with"]["A"] == 1


def test_unknown_mask_impl_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        real_model.parse_args(["--base", str(tmp_path), "--draft", str(tmp_path), "--mask-impls",
                               "fastest", "--out", str(tmp_path / "x.json")])
    assert "fastest" in capsys.readouterr().err

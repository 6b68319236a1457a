"""benchmarks/blas.py: the per-library summary of alternated rounds, its arguments, and its
refusal without a GPU."""
import pytest


@pytest.fixture
def script():
    from benchmarks import blas

    return blas


def test_summary_takes_each_librarys_median_and_checks_its_tokens(script):
    rows = [{"asked": "torch default", "ms_per_step": 9.0, "tokens": [1, 2]},
            {"asked": "cublaslt", "ms_per_step": 8.8, "tokens": [1, 3]},
            {"asked": "torch default", "ms_per_step": 9.2, "tokens": [1, 2]},
            {"asked": "cublaslt", "ms_per_step": 8.6, "tokens": [1, 4]}]
    out = script.summary(rows)
    assert out["torch default"]["ms_per_step"] == pytest.approx(9.1)
    assert out["torch default"]["same_tokens"] and not out["cublaslt"]["same_tokens"]
    assert out["cublaslt_over_default"] == pytest.approx(8.7 / 9.1)


def test_rounds_and_repeats_must_be_positive(script, tmp_path):
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(tmp_path / "b.json"), "--rounds", "0"])
    assert script.parse_args(["--out", str(tmp_path / "b.json")]).rounds == 2


@pytest.mark.no_cuda
def test_without_a_gpu_it_refuses(script, tmp_path):
    assert script.main(["--out", str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()

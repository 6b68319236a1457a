"""benchmarks/kernel_profile.py: per-unit kernel tables net of the one-token run, and its refusal
without a GPU."""
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture
def script():
    from benchmarks import kernel_profile

    return kernel_profile


def event(name: str, us: float, device: str = "CUDA"):
    return SimpleNamespace(name=name, device_time_total=us,
                           device_type=getattr(torch.autograd.DeviceType, device))


def test_kernel_times_per_unit_are_net_of_the_one_token_run(script):
    full = script.kernel_totals([event("gemm", 80.0)] * 10 + [event("norm", 2.0)] * 21 +
                                [event("prefill", 500.0), event("gemm", 900.0, "CPU")])
    one = script.kernel_totals([event("norm", 2.0), event("prefill", 500.0)])
    assert full["gemm"] == [10, 800.0] and "prefill" in one
    rows = script.per_unit(full, one, units=5)
    assert [row["kernel"] for row in rows] == ["gemm", "norm"]  # prefill cancels out
    gemm, norm = rows
    assert gemm["ms_per_unit"] == pytest.approx(0.16) and gemm["launches_per_unit"] == 2
    assert norm["launches_per_unit"] == 4 and norm["us_per_launch"] == pytest.approx(2.0)


def test_markdown_names_the_setup_and_both_parts(script):
    part = {"units": 4, "wall_ms_per_unit": 6.5, "kernel_ms_per_unit": 6.0, "launches_per_unit": 400,
            "kernels": [{"kernel": "gemm", "ms_per_unit": 5.0, "launches_per_unit": 96.0,
                         "us_per_launch": 52.1}]}
    report = {"device": "GPU", "preset": "tiny", "dtype": "float16", "prompt": 8, "new": 5,
              "tree": "60,5,10", "mask_impl": "triton", "kernels": "fused (triton)",
              "plain": part, "eagle": part}
    text = script.markdown(report, top=5)
    assert "plain: wall 6.500 ms/token" in text and "eagle: wall 6.500 ms/step" in text
    assert "| 5.0000 | 96.0 | 52.10 | `gemm` |" in text


@pytest.mark.no_cuda
def test_without_a_gpu_it_refuses(script, tmp_path):
    assert script.main(["--out", str(tmp_path / "k.json")]) == 2
    assert not (tmp_path / "k.json").exists()

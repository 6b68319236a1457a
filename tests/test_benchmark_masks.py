"""The mask micro-benchmark runs end to end on the CPU with tiny settings."""
import json

import pytest
import torch
from PIL import Image

from eagle.tree.masks import available_mask_impls
from evaluation import benchmark_masks


def test_benchmark_writes_json_png_and_table(tmp_path):
    out_json, out_png, out_md = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "t.md"
    report = benchmark_masks.main([
        "--device", "cpu", "--iterations", "3", "--warmup", "1", "--trees", "2",
        "--total-tokens", "8,32", "--out-json", str(out_json), "--out-png", str(out_png),
        "--markdown", str(out_md)])
    impls = available_mask_impls(torch.device("cpu"))
    assert impls == ["rebuild", "incremental", "vectorized"]
    saved = json.loads(out_json.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["device"]["type"] == "cpu" and saved["torch"] == torch.__version__
    assert saved["settings"]["impls"] == impls
    assert {(r["impl"], r["total_tokens"]) for r in saved["results"]} == \
        {(n, t) for n in impls for t in (8, 32)}
    for r in saved["results"]:
        assert r["iterations"] == 3 and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert [t["total_tokens"] for t in saved["trees"]] == [8, 32]
    with Image.open(out_png) as png:
        assert png.format == "PNG"
        assert png.text["Description"] == "implementations: " + ", ".join(impls)
    table = out_md.read_text()
    assert all(name in table for name in impls) and "vectorized vs rebuild" in table


def test_benchmark_grows_depth_and_honours_impls(tmp_path):
    report = benchmark_masks.main(["--device", "cpu", "--iterations", "2", "--warmup", "0",
                                   "--trees", "1", "--total-tokens", "300", "--depth", "2",
                                   "--impls", "vectorized,rebuild"])
    assert report["settings"]["impls"] == ["vectorized", "rebuild"]
    assert (report["trees"][0]["depth"], report["trees"][0]["top_k"]) == (3, 10)


@pytest.mark.no_cuda
def test_benchmark_refuses_triton_without_cuda():
    with pytest.raises(SystemExit, match="vectorized"):
        benchmark_masks.main(["--device", "cpu", "--impls", "triton"])


def test_mask_plot_axes_read_as_plain_numbers():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    sizes = [8, 60, 128, 1024]
    ax.plot(sizes, [0.04, 0.3, 0.7, 9.0])
    ax.set(xscale="log", yscale="log")
    benchmark_masks.plain_log_ticks(ax, sizes)
    FigureCanvasAgg(fig).draw()
    x = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    y = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert x == ["8", "60", "128", "1024"]
    assert "0.05" in y and "1" in y and "5" in y
    assert all(float(label) > 0 for label in x + y)  # no 6x10^1, no mathtext

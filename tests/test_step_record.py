"""benchmarks/step_record.py writes its record on the CPU at the tiny preset: every key, typed."""
import json

import pytest

from benchmarks import step_record
from eagle.presets import PRESETS

PROMPTS = ("8", "16", "24")


@pytest.mark.slow
def test_record_on_cpu_has_every_key_typed(tmp_path, one_thread):
    out = tmp_path / "results" / "step.json"
    assert step_record.main(["--preset", "tiny", "--prompts", ",".join(PROMPTS), "--new", "6",
                             "--repeat", "1", "--max-length", "128", "--copy-mib", "8",
                             "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["gpu"] == "cpu" and rec["dtype"] == "float16" and rec["hf_compiled"] is False
    for key in ("copy_TBps", "floor_ms", "eager_ms_per_token", "eager_ms_per_step",
                "hf_compiled_ms_per_token"):
        assert isinstance(rec[key], float) and rec[key] > 0, key
    for key in ("plain_ms_per_token", "eagle_ms_per_step"):
        assert set(rec[key]) == set(PROMPTS)
        assert all(isinstance(v, float) and v > 0 for v in rec[key].values())
    # fp16 weights: two bytes a parameter; the floor reads them once at the copy bandwidth
    base = PRESETS["tiny"][0]
    h, layers = base.hidden_size, base.num_hidden_layers
    kv = base.num_key_value_heads * base.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * base.intermediate_size + 2 * h
    assert rec["base_weight_bytes"] == 2 * (layers * per_layer + 2 * base.vocab_size * h + h)
    assert rec["floor_ms"] == pytest.approx(rec["base_weight_bytes"] / rec["copy_TBps"] / 1e9)
    for prompt in PROMPTS:
        seg = rec["segments"][prompt]
        assert seg["window"] == 128 and seg["steps"] > 0
        for name in step_record.SEGMENTS:
            ms, moved = seg[name]["ms"], seg[name]["bytes"]
            assert isinstance(moved, int) and moved > 0 and ms > 0, name
            assert seg[name]["copy_fraction"] == pytest.approx(moved / ms / rec["copy_TBps"] / 1e9)
    assert {"torch", "triton", "transformers", "commit", "date"} <= set(rec["provenance"])

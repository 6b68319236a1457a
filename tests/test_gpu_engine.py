"""GPU checks (fp16): every mask implementation decodes bit-identical tokens, at tiny and 8B shapes."""
import pytest
import torch

from eagle import EaModel
from eagle.config import TreeConfig
from eagle.presets import preset_model
from eagle.tree.masks import MASK_IMPLS

pytestmark = pytest.mark.gpu


def decode_all(model: EaModel, prompts, **kwargs) -> dict:
    """Token ids per mask implementation, all on the same weights."""
    out = {}
    for impl in MASK_IMPLS:
        model.mask_impl = impl
        out[impl] = [model.generate(ids, **kwargs).new_token_ids for ids in prompts]
    return out


def test_tiny_fp16_all_impls_identical(tiny_ckpt):
    model = EaModel.from_pretrained(tiny_ckpt / "base", tiny_ckpt / "draft", torch_dtype=torch.float16,
                                    device_map="cuda")
    tok = model.get_tokenizer()
    prompts = [tok(t, return_tensors="pt").input_ids for t in ("The weather today is", "Once upon a")]
    for kwargs in ({}, {"temperature": 0.7, "top_p": 0.9, "seed": 5}):
        runs = decode_all(model, prompts, max_new_tokens=64, **kwargs)
        assert all(r == runs["rebuild"] for r in runs.values()), kwargs


def test_llama31_8b_shape_smoke():
    model = preset_model("llama3.1-8b", TreeConfig(60, 5, 10), dtype=torch.float16, device="cuda",
                         max_length=1024)
    prompt = torch.randint(0, 128000, (1, 200), generator=torch.Generator().manual_seed(0))
    runs = decode_all(model, [prompt], max_new_tokens=24)
    assert all(r == runs["rebuild"] for r in runs.values())
    res = model.generate(prompt, max_new_tokens=24, profile=True)
    assert res.new_tokens == 24 and res.profile.ms_per_step("verify_forward") > 0
    naive = model.naive_generate(prompt, max_new_tokens=24)
    assert naive.new_tokens == 24


@pytest.mark.parametrize("backend", ["math", "efficient", "cudnn", "flash"])
def test_pinned_attention_backend_decodes_or_is_refused(backend, tiny_ckpt, tmp_path, caplog):
    from evaluation.gen_cli import main as gen_main

    question = tmp_path / "q.jsonl"
    question.write_text('{"question_id": 1, "category": "writing", "turns": ["Hi", "Again"]}\n')
    answers = tmp_path / "a.jsonl"
    rc = gen_main("eagle", ["--base-model-path", str(tiny_ckpt / "base"), "--ea-model-path",
                            str(tiny_ckpt / "draft"), "--question-file", str(question),
                            "--answer-file", str(answers), "--max-new-token", "16", "--device", "cuda",
                            "--attention-backend", backend])
    if backend in ("math", "efficient") or rc != 2:  # these two take any boolean mask
        assert rc == 0 and backend != "flash"  # flash takes no boolean mask on CUDA
        assert f'"attention_backend": "{backend}"' in answers.read_text()
    else:  # no kernel for boolean masks at these shapes: refused before any answer
        assert f"--attention-backend {backend} cannot run" in caplog.text and not answers.exists()

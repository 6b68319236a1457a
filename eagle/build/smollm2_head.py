"""Train the shipped SmolLM2 EAGLE-3 head: self-distillation data, then EAGLE-3 training.

    python -m eagle.smollm2 --out checkpoints/smollm2        # the converted base (DIR/base)
    python -m eagle.build.smollm2_head --base checkpoints/smollm2/base \\
        --out eagle/build/heads/smollm2                      # on a GPU: a few minutes on an H200

Writes the head (float16 `model.safetensors` with `d2t`/`t2d`, `config.json`), `train_log.json`
(settings, data counts, the loss and accuracy per logged step, held-out accuracy per draft step)
and `train_curve.png`. Seeds are fixed; on one machine and software stack the run repeats.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from .distill import DistillSpec, distill
from .eagle3_train import TrainLog, TrainSpec, train

log = logging.getLogger(__name__)


def head_config(head, base_cfg: dict) -> dict:
    """config.json of the head (SpecForge's `LlamaForCausalLMEagle3` fields)."""
    a = head.args
    return {"architectures": ["LlamaForCausalLMEagle3"], "bos_token_id": base_cfg["bos_token_id"],
            "eos_token_id": base_cfg["eos_token_id"], "hidden_act": "silu",
            "hidden_size": a.hidden_size, "initializer_range": 0.02,
            "intermediate_size": a.intermediate_size,
            "max_position_embeddings": a.max_position_embeddings, "model_type": "llama",
            "num_attention_heads": a.num_attention_heads, "num_hidden_layers": 1,
            "num_key_value_heads": a.num_key_value_heads, "rms_norm_eps": a.rms_norm_eps,
            "rope_scaling": None, "rope_theta": a.rope.theta, "tie_word_embeddings": False,
            "torch_dtype": "float16", "use_cache": True, "vocab_size": a.vocab_size,
            "draft_vocab_size": a.draft_vocab_size, "target_hidden_size": a.target_hidden_size,
            "eagle_config": {"eagle_aux_hidden_state_layer_ids":
                             [1, base_cfg["num_hidden_layers"] // 2 - 1,
                              base_cfg["num_hidden_layers"] - 4]}}


def save_head(head, base_cfg: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in head.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(head_config(head, base_cfg), indent=2) + "\n")
    log.info("wrote %s (%.1f MB)", out / "model.safetensors",
             (out / "model.safetensors").stat().st_size / 1e6)


def plot(record: TrainLog, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in record.rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, [r["loss"] for r in record.rows])
    left.set(xlabel="step", ylabel="weighted loss (sum over draft steps)", title="training loss")
    for j in range(len(record.rows[0]["accuracy"])):
        right.plot(steps, [r["accuracy"][j] for r in record.rows], label=f"draft step {j + 1}")
    right.set(xlabel="step", ylabel="top-1 accuracy (training batch)", ylim=(0, 1),
              title="agreement with the base's greedy token")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(base_dir: Path, out: Path, dspec: DistillSpec, tspec: TrainSpec) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.generate import SYSTEM_PROMPT

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype).to(dev).eval()
    base.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    cfg = json.loads((base_dir / "config.json").read_text())
    t0 = time.perf_counter()
    samples = distill(base, tok, SYSTEM_PROMPT, dspec)
    distill_s = time.perf_counter() - t0
    answer_tokens = sum(len(i) - s for i, s in zip(samples.ids, samples.answer_start))
    log.info("%d samples, %d answer tokens in %.0f s", len(samples.ids), answer_tokens, distill_s)
    head, record = train(base, cfg, samples, tspec, tok.eos_token_id)
    save_head(head, cfg, out)
    report = {"distill": asdict(dspec), "train": asdict(tspec), "samples": len(samples.ids),
              "answer_tokens": answer_tokens, "distill_seconds": round(distill_s, 1),
              "train_seconds": round(time.perf_counter() - t0 - distill_s, 1),
              "draft_vocab_coverage": record.vocab_coverage, "train_steps": record.steps,
              "held_out_accuracy_per_step": record.held_out_accuracy,
              "device": (torch.cuda.get_device_name() if dev.type == "cuda"
                         else platform.processor()),
              "torch": torch.__version__, "log": record.rows,
              "examples": [tok.decode(samples.ids[i]) for i in range(3)]}
    (out / "train_log.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(record, out / "train_curve.png")
    return report


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, metavar="DIR", help="converted base")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="head directory")
    p.add_argument("--samples", type=int, default=DistillSpec.samples)
    p.add_argument("--batch", type=int, default=DistillSpec.batch, help="generation batch")
    p.add_argument("--answer-tokens", type=int, default=DistillSpec.answer_tokens)
    p.add_argument("--steps", type=int, default=TrainSpec.steps)
    p.add_argument("--train-batch", type=int, default=TrainSpec.batch)
    p.add_argument("--draft-vocab", type=int, default=TrainSpec.draft_vocab)
    p.add_argument("--distill-time-limit", type=float, metavar="S")
    p.add_argument("--train-time-limit", type=float, metavar="S")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    a = parse_args(argv)
    dspec = DistillSpec(samples=a.samples, batch=a.batch, answer_tokens=a.answer_tokens,
                        time_limit_s=a.distill_time_limit)
    tspec = TrainSpec(steps=a.steps, batch=a.train_batch, draft_vocab=a.draft_vocab,
                      time_limit_s=a.train_time_limit)
    run(a.base, a.out, dspec, tspec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training-step time of TGA (CE + guide loss) vs CE only on vlsafe's engine (transformers.Trainer), same batch
and model, interleaved medians.

Each measurement is the second optimizer step of a 2-step engine run (the first step warms up): TGA through
``TGATrainer`` (caption pass under no_grad, forward with hooks on the guided layers, CE on the supervised
positions' logits) and CE alone through ``LossFnTrainer`` with :func:`vlsafe.methods.training.supervised_ce`
(the same CE), both including the engine's backward, clipping, AdamW step and per-step logging.

Model: the organism's shape - LLaVA wiring of a random SmolLM2-135M-shaped Llama (30 layers, hidden 576,
vocab 49152) with a random DINOv2-small vision tower at 112 px (64 image tokens), trained in the organism's
second stage (projector + LoRA r16 on the LLM, vision frozen). Guided layers: the middle third (10..19).
Batch: 4 records, each with image, retrieved text, instruction, answer, caption. The tokenizer is the tiny
offline BPE tokenizer (fewer tokens per word than SmolLM2's, so the text part is somewhat shorter).

Figures: ``tga_vs_ce_step_time`` = median TGA step / median CE step (target <= 1.6), and
``tga_vs_ce_pairwise_median``, the median of the per-repeat ratios. The last line of output is one JSON object.

Usage: ``python benchmarks/tga_step.py [--repeats 5] [--batch 4] [--layers 30]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, median, smollm2_shaped_llama  # noqa: E402


def _bundle(layers: int) -> object:
    from transformers import AutoTokenizer, Dinov2Config, Dinov2Model

    from vlsafe.models import ModelBundle, build_tiny
    from vlsafe_organism.wiring import wire_llava

    tok_dir = build_tiny("causal_lm", tempfile.mkdtemp(prefix="tga-bench-"), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    vision = Dinov2Model(
        Dinov2Config(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=14,
            image_size=518,
        )  # fmt: skip
    ).eval()
    model, processor = wire_llava(vision, smollm2_shaped_llama(layers=layers), tokenizer, size=112)
    return ModelBundle(
        model=model,
        tokenizer=processor.tokenizer,
        processor=processor,
        family="llava",
        layers=model.model.language_model.layers,
        name="organism-shaped-random",
        image_token_id=int(processor.image_token_id),
    )


def _records(n: int, root: Path) -> list[object]:
    from vlsafe.methods.training import TGARecord

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8), "RGB").save(path)
        out.append(
            TGARecord(
                image=str(path),
                instruction="What object is shown in the picture, and what is it usually used for?",
                answer="The picture shows a kitchen knife with a wooden handle. It is used to cut food.",
                caption="a kitchen knife with a wooden handle lying on a cutting board",
                retrieved="a knife is a tool with a sharp blade used for cutting food and other materials",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=30)
    args = parser.parse_args()

    from vlsafe.methods.training import (
        LossOutput,
        TGALoss,
        TGATrainer,
        TrainConfig,
        Trainer,
        encode_tga_batch,
        middle_third,
        supervised_ce,
    )

    bundle = _bundle(args.layers)
    records = _records(args.batch, Path(tempfile.mkdtemp(prefix="tga-bench-img-")))
    batch = encode_tga_batch(bundle, records)  # type: ignore[arg-type]
    guided = middle_third(bundle.num_layers)  # type: ignore[attr-defined]
    tga = TGALoss(bundle, guided, weight=1.0)  # type: ignore[arg-type]

    def ce_only(model: object, b: object, step: int) -> LossOutput:
        loss = supervised_ce(model, b.inputs, b.labels)  # type: ignore[attr-defined]
        return LossOutput(loss, {"ce": float(loss.detach())})

    def engine_step(kind: str) -> float:
        """Seconds of the second optimizer step of a 2-step engine run (the first warms up)."""
        stamps: list[float] = []
        cfg = TrainConfig(output_dir=Path(tempfile.mkdtemp(prefix="tga-bench-run-")), stage="projector_lora",
                          max_steps=2, batch_size=args.batch, lr=1e-5, progress=False, resume="never",
                          save_final=False)  # fmt: skip
        callback = [lambda step, metrics: stamps.append(time.perf_counter())]
        if kind == "tga":
            trainer = Trainer(bundle, cfg, None, records, lambda rows: batch, callback,  # type: ignore[arg-type]
                              engine_class=TGATrainer, engine_kwargs={"tga": tga})  # fmt: skip
        else:
            trainer = Trainer(bundle, cfg, ce_only, records, lambda rows: batch, callback)  # type: ignore[arg-type]
        trainer.train()
        return stamps[1] - stamps[0]

    times: dict[str, list[float]] = {"tga": [], "ce": []}
    for _ in range(args.repeats):  # interleaved: TGA, CE, TGA, CE ...
        for kind in times:
            times[kind].append(engine_step(kind))
    tokens = int(batch.inputs["attention_mask"].sum())
    figures = {
        "benchmark": "tga_step",
        "engine": "transformers.Trainer (TGATrainer vs LossFnTrainer with CE only)",
        "tga_vs_ce_step_time": round(median(times["tga"]) / median(times["ce"]), 3),
        # the median of the per-repeat ratios (each TGA step against the CE step right after it): steadier
        # than the ratio of medians when the machine's load drifts
        "tga_vs_ce_pairwise_median": round(median([t / c for t, c in zip(times["tga"], times["ce"], strict=True)]), 3),
        "tga_step_s": round(median(times["tga"]), 3),
        "ce_step_s": round(median(times["ce"]), 3),
        "repeats": args.repeats,
        "batch": args.batch,
        "seq_len": int(batch.inputs["input_ids"].shape[1]),
        "tokens": tokens,
        "image_tokens_per_row": int(batch.image_mask[0].sum()),
        "guided_layers": f"{guided[0]}..{guided[-1]}",
        "llm_layers": args.layers,
        "stage": "projector_lora",
        **environment(),
    }
    for name, ts in times.items():
        print(f"{name}: " + ", ".join(f"{t:.3f}" for t in ts))
    emit(figures)


if __name__ == "__main__":
    main()

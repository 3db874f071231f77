"""Throughput cost of CMRM: dataset level (vector hooks) and sample level (two extra prefill passes).

Model: LLaVA wiring around a random-weight Llama with SmolLM2-135M's shapes (hidden 576, 30 decoder
layers, vocab 49152; the organism's language model) and the tiny random vision tower and processor of
``vlsafe.models.tiny`` (16 image tokens per image). Same model, batch and prompts for all three modes;
runs are interleaved (plain, dataset, sample per round, every other round in reverse order) and each ratio is
the median over rounds of the within-round time ratio, which is robust to the machine's load drifting between
rounds. Each ratio is given twice: by wall time and by the process's CPU time (``*_cpu``: what the process
computed; on a shared machine other processes inflate wall time but not this, so it is the steadier estimate of
the throughput on a machine of one's own; the two agree on a quiet machine). The dataset level steers through
the same hooks as ``vlsafe eval --cmrm`` (the ``paper`` preset: every layer, every position, prompt and decoded
tokens); ``hook_us_per_call`` times one decode-step call of one layer's hook alone. Every mode
includes building the inputs (processor), so the sample-level ratio counts its two extra batched input
builds and prefill passes. On a shared 2-core machine use ``--threads 1`` (2 threads oversubscribe).

Figures (last line, JSON): dataset_level_vs_plain_throughput (target >= 0.97) and
sample_level_vs_plain_throughput (target >= 0.5 at 64 new tokens), and their ``_cpu`` twins.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, interleaved, median  # noqa: E402

from vlsafe.methods.cmrm import SampleLevelCMRM, calibrate, cmrm_steer  # noqa: E402
from vlsafe.models import build_inputs, build_tiny, load_model  # noqa: E402
from vlsafe.models.bundle import ModelBundle  # noqa: E402

QUERIES = [
    "What is in this picture and what could it be used for?",
    "Describe the colours of this image in detail.",
    "How many objects can you see here?",
    "Write a short story about what this image shows.",
    "Is there anything dangerous in this picture?",
    "Explain what is happening in the scene.",
    "What would you name this image?",
    "List three facts about the thing in the image.",
]


def smollm2_llava(tmp: Path) -> ModelBundle:
    """The tiny LLaVA's processor and vision tower with a SmolLM2-shaped random language model."""
    from transformers import LlavaForConditionalGeneration

    tiny = load_model(build_tiny("llava", tmp / "tiny", seed=0), dtype="float32")
    cfg = tiny.model.config
    text = cfg.text_config
    text.update(
        {
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "max_position_embeddings": 2048,
        }
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    return ModelBundle(
        model,
        tiny.tokenizer,
        tiny.processor,
        "llava",
        model.model.language_model.layers,
        name="llava(smollm2-shaped, random)",
        image_token_id=tiny.image_token_id,
        extra=dict(tiny.extra),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = smollm2_llava(Path(tmp))
    queries = (QUERIES * (args.batch // len(QUERIES) + 1))[: args.batch]
    images = [Image.new("RGB", (48, 48), ((37 * i) % 255, 90, 160)) for i in range(args.batch)]
    vector = calibrate(
        bundle, [{"text": q, "image": im} for q, im in zip(queries, images, strict=True)], progress=False
    )
    gen_kwargs = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": bundle.tokenizer.pad_token_id,
    }

    def plain() -> None:
        batch = build_inputs(bundle, queries, variant="image", images=images)
        with torch.inference_mode():
            bundle.model.generate(**batch.inputs, **gen_kwargs)

    def dataset_level() -> None:
        with cmrm_steer(bundle, vector, 1.0):
            plain()

    def sample_level() -> None:
        with SampleLevelCMRM(bundle, 1.0) as cm:
            cm.generate(queries, images=images, **gen_kwargs)

    plain()  # warm-up
    dataset_level()
    cpu: dict[str, list[float]] = {}
    fns = {"plain": plain, "dataset": dataset_level, "sample": sample_level}
    times = interleaved(fns, args.repeats, alternate=True, cpu_times=cpu)
    tokens = args.batch * args.new_tokens

    def paired(mode: str, clock: dict[str, list[float]] = times) -> float:
        """Median over rounds of plain / mode time within the round (robust to load drifting between rounds)."""
        return round(median([p / m for p, m in zip(clock["plain"], clock[mode], strict=True)]), 3)

    emit(
        {
            "dataset_level_vs_plain_throughput": paired("dataset"),
            "sample_level_vs_plain_throughput": paired("sample"),
            "dataset_level_vs_plain_throughput_cpu": paired("dataset", cpu),
            "sample_level_vs_plain_throughput_cpu": paired("sample", cpu),
            "plain_tokens_per_s": round(tokens / median(times["plain"]), 1),
            "dataset_tokens_per_s": round(tokens / median(times["dataset"]), 1),
            "sample_tokens_per_s": round(tokens / median(times["sample"]), 1),
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "layers_steered": len(vector.layers),
            "model": bundle.name,
            "times_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "cpu_times_s": {k: [round(t, 2) for t in v] for k, v in cpu.items()},
            **environment(),
        }
    )


if __name__ == "__main__":
    main()

"""Per-GPU training memory of the 7B recipes (configs/recipes/*.yaml) for every distributed strategy and GPU
count, from the models' published shapes (configs/recipes/shapes/*/config.json; nothing is downloaded or
loaded: the models are built on the meta device to count their parameters).

For each recipe stage (TGA's two stages, SFT, DPO) the script reads the stage, batch size, LoRA rank,
gradient checkpointing and row length from the recipe (TGA has no row cap: ``--seq-len``; DPO runs
``2 x batch_size`` rows, chosen and rejected) and prints, per model, a table of
:func:`vlsafe.methods.training.memory_plan.plan_memory` totals (GiB per GPU; ✓ when it fits
``--gpu-gib``), then the breakdown for the strategy the recipe launches with (``--config_file`` in its
header). The byte model (AdamW with fp32 master weights and moments, bf16 weights) is documented in
:mod:`vlsafe.methods.training.memory_plan`.

Usage: ``python benchmarks/memory_plan.py [--gpu-gib 80] [--gpus 1,2,4,8] [--seq-len 2048]``; the last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, environment  # noqa: E402

from vlsafe.methods.training.memory_plan import ModelShape, model_shape, plan_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
STRATEGIES = ("ddp", "fsdp", "zero3", "zero3_offload")
MODELS = {
    "LLaVA-1.5-7B": RECIPES / "shapes" / "llava-1.5-7b",
    "Qwen2-VL-7B": RECIPES / "shapes" / "qwen2-vl-7b",
}


def recipe_runs(path: Path, seq_len: int) -> list[dict[str, Any]]:
    """The memory-relevant settings of each stage of one recipe."""
    cfg = yaml.safe_load(path.read_text())
    launch = re.search(r"--config_file configs/accelerate/(\w+)\.yaml", path.read_text())
    stages = cfg["stages"] if "stages" in cfg else [cfg]
    rows_per_record = 2 if path.stem.startswith("dpo") else 1
    runs = []
    for i, stage in enumerate(stages):
        name = stage.get("stage", "llm_lora")
        lora = stage.get("lora") or {}
        runs.append(
            {
                "recipe": path.stem,
                "stage": f"{i}:{name}" if "stages" in cfg else name,
                "launch": launch.group(1) if launch else None,
                "kwargs": {
                    "method": "lora" if name.endswith("_lora") else "full",
                    "trainable": name,
                    "lora_rank": int(lora.get("rank", 16)),
                    "precision": "bf16" if stage.get("mixed_precision") == "bf16" else "fp32",
                    "batch_size": rows_per_record * int(stage.get("batch_size", 4)),
                    "seq_len": int(cfg.get("max_length") or seq_len),
                    "gradient_checkpointing": bool(stage.get("gradient_checkpointing", False)),
                },
            }
        )
    return runs


def _cell(plan: dict[str, Any]) -> str:
    return f"{plan['total_gib']:.1f} {'✓' if plan['fits'] else '✗'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (GiB)")
    parser.add_argument("--gpus", default="1,2,4,8", help="GPU counts, comma-separated")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per row where a recipe sets no cap")
    args = parser.parse_args()
    gpus = [int(x) for x in args.gpus.split(",")]
    shapes: dict[str, ModelShape] = {name: model_shape(path) for name, path in MODELS.items()}
    runs = [run for path in sorted(RECIPES.glob("*.yaml")) for run in recipe_runs(path, args.seq_len)]
    plans: list[dict[str, Any]] = []
    for model, shape in shapes.items():
        print(f"\n## {model}: {shape.total / 1e9:.2f} B parameters ({shape.language_model / 1e9:.2f} B LLM, "
              f"{shape.vision / 1e9:.3f} B vision, {shape.projector / 1e6:.1f} M projector)")  # fmt: skip
        for run in runs:
            kw = run["kwargs"]
            print(f"\n### {run['recipe']} [{run['stage']}]: {kw['batch_size']} x {kw['seq_len']} tokens per GPU, "
                  f"checkpointing {'on' if kw['gradient_checkpointing'] else 'off'}, launched with {run['launch']}")  # fmt: skip
            print("| strategy | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in gpus) + " |")
            print("|---|" + "---:|" * len(gpus))
            for strategy in STRATEGIES:
                cells = []
                for n in gpus:
                    plan = plan_memory(shape, strategy=strategy, n_gpus=n, gpu_memory_gib=args.gpu_gib, **kw)
                    plans.append({**plan, "model": model, "recipe": run["recipe"], "stage": run["stage"]})
                    cells.append(_cell(plan))
                print(f"| {strategy} | " + " | ".join(cells) + " |")
            host = plan_memory(shape, strategy="zero3_offload", n_gpus=1, gpu_memory_gib=args.gpu_gib, **kw)
            print(
                f"zero3_offload host memory: {host['cpu_gib']:.1f} GiB in all (split over the processes of a node)"
            )
            if run["launch"] in STRATEGIES:
                p = plan_memory(
                    shape, strategy=run["launch"], n_gpus=max(gpus), gpu_memory_gib=args.gpu_gib, **kw
                )
                print(f"{run['launch']} x {max(gpus)}: weights {p['weights_gib']:.1f} + gradients {p['gradients_gib']:.1f}"
                      f" + optimizer {p['optimizer_gib']:.1f} + activations {p['activations_gib']:.1f} + buffers "
                      f"{p['buffers_gib']:.1f} + overhead {p['overhead_gib']:.1f} = {p['total_gib']:.1f} GiB per GPU")  # fmt: skip
    figures = {
        **environment(),
        "gpu_memory_gib": args.gpu_gib,
        "params": {
            model: {k: v for k, v in shape.__dict__.items() if k != "name"} for model, shape in shapes.items()
        },
        "plans": [
            {
                **{k: p[k] for k in ("model", "recipe", "stage")},
                **{k: p["settings"][k] for k in ("strategy", "n_gpus", "trainable", "batch_size", "seq_len")},
                **{k: v for k, v in p.items() if k.endswith("_gib") and k != "gpu_memory_gib"},
                "fits": p["fits"],
            }
            for p in plans
        ],
    }
    emit(figures)


if __name__ == "__main__":
    main()

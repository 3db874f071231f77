"""Safety SFT and DPO optimizer-step time per sample, and tokens/s, at batch 1 and the largest batch tried.

Model: a random-weight Llama with SmolLM2-135M's shapes (hidden 576, 30 layers, vocab 49152; the organism's
LLM) - text-only, because the step cost is dominated by the LLM (the organism's DINOv2-S vision tower adds
one 256-token encoder pass per image, not measured here). Rows are ``--prompt-len`` prompt tokens plus
``--reply-len`` supervised reply tokens; LoRA r16 on all attention and MLP projections (``--full`` trains
every LLM weight instead).

* SFT step: :func:`vlsafe.methods.training.losses.sequence_logps` on the reply tokens, backward, AdamW step.
* DPO step: chosen + rejected rows in one forward (2B rows), the reference pass with the adapters switched
  off (no grad), :func:`vlsafe.methods.training.losses.dpo_loss`, backward, AdamW step.

Batches double from 1 up to ``--max-batch``; on CUDA an out-of-memory error ends the sweep (the largest
batch that fits); on CPU a process that runs out of memory is killed instead, so the cap is explicit
(default 8 on CPU). One warm-up step, then ``--repeats`` timed steps (median). tokens/s counts every
non-padding token processed by the trained forward (DPO: both replies).

Usage: ``python benchmarks/train_step.py [--device cuda] [--max-batch 8] [--repeats 3]``; the last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, environment, median, smollm2_shaped_llama  # noqa: E402

from vlsafe.methods.training.losses import dpo_loss, sequence_logps  # noqa: E402
from vlsafe.methods.training.memory import peak_rss_mb  # noqa: E402
from vlsafe.methods.training.stages import LoraSettings, apply_stage  # noqa: E402


def _batch(rows: int, prompt: int, reply: int, device: str, seed: int) -> tuple[dict[str, Any], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 49_000, (rows, prompt + reply), generator=gen)
    labels = ids.clone()
    labels[:, :prompt] = -100
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    return inputs, labels.to(device)


def _sft_step(model: Any, opt: torch.optim.Optimizer, b: int, args: argparse.Namespace) -> int:
    inputs, labels = _batch(b, args.prompt_len, args.reply_len, args.device, 0)
    opt.zero_grad(set_to_none=True)
    logps, counts = sequence_logps(model, inputs, labels)
    (-logps.sum() / counts.sum()).backward()
    opt.step()
    return b * (args.prompt_len + args.reply_len)


def _dpo_step(model: Any, opt: torch.optim.Optimizer, b: int, args: argparse.Namespace) -> int:
    inputs, labels = _batch(2 * b, args.prompt_len, args.reply_len, args.device, 1)
    opt.zero_grad(set_to_none=True)
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with torch.no_grad(), off:
        ref, _ = sequence_logps(model, inputs, labels)
    pol, _ = sequence_logps(model, inputs, labels)
    dpo_loss(pol[:b], pol[b:], ref[:b], ref[b:], beta=0.1).loss.backward()
    opt.step()
    return 2 * b * (args.prompt_len + args.reply_len)


def _sweep(
    name: str, step: Any, model: Any, opt: torch.optim.Optimizer, args: argparse.Namespace
) -> list[dict[str, Any]]:
    out = []
    b = 1
    while b <= args.max_batch:
        try:
            step(model, opt, b, args)  # warm-up
            times, tokens = [], 0
            for _ in range(args.repeats):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                tokens = step(model, opt, b, args)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"{name}: batch {b} does not fit", flush=True)
            break
        s = median(times)
        row = {"batch": b, "s_per_step": round(s, 4), "s_per_sample": round(s / b, 4),
               "tokens_per_s": round(tokens / s, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
        if args.device == "cuda":
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        print(name, row, flush=True)
        out.append(row)
        b *= 2
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--reply-len", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="train all LLM weights instead of LoRA r16")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights (CUDA)")
    args = parser.parse_args()
    args.max_batch = args.max_batch or (8 if args.device == "cpu" else 256)
    model = smollm2_shaped_llama(layers=args.layers).to(args.device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    model = apply_stage(model, "llm" if args.full else "llm_lora", LoraSettings(rank=16, alpha=32.0))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    figures: dict[str, Any] = {
        "benchmark": "train_step",
        "model": f"random Llama, SmolLM2-135M shapes, {args.layers} layers",
        "trainable_params": sum(p.numel() for p in params),
        "mode": "full" if args.full else "lora_r16",
        "prompt_len": args.prompt_len,
        "reply_len": args.reply_len,
        "dtype": "bfloat16" if args.bf16 else "float32",
        "device": args.device,
        "env": environment(),
    }
    figures["sft"] = _sweep("sft", _sft_step, model, opt, args)
    figures["dpo"] = _sweep("dpo", _dpo_step, model, opt, args)
    for key in ("sft", "dpo"):
        rows = figures[key]
        if rows:
            figures[f"{key}_b1_s_per_sample"] = rows[0]["s_per_sample"]
            figures[f"{key}_largest_batch"] = rows[-1]["batch"]
            figures[f"{key}_largest_s_per_sample"] = rows[-1]["s_per_sample"]
            figures[f"{key}_largest_tokens_per_s"] = rows[-1]["tokens_per_s"]
    emit(figures)


if __name__ == "__main__":
    main()

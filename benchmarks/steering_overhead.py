"""Throughput cost of steering (a vector on every layer) and of hidden-state capture.

Model: random weights with SmolLM2-135M's shapes (hidden 576, 30 decoder layers, vocab 49152): the
language model of the organism, and large enough that hook overhead is measured against real work.
Plain and steered runs are interleaved and medians compared (run-to-run noise here is about 6%).

Figures (last line, JSON): steered_vs_plain_throughput (generate tokens/s, steered / plain; target
>= 0.97) and capture_vs_plain_forward (forward passes/s while recording the last-token state of every
layer / plain; target >= 0.95).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, interleaved, median, smollm2_shaped_llama  # noqa: E402

from vlsafe.hooks import (
    SteeringVector,  # noqa: E402
    record_hidden_states,  # noqa: E402
)
from vlsafe.models.bundle import ModelBundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = smollm2_shaped_llama()
    bundle = ModelBundle(
        model, None, None, "causal_lm", model.get_decoder().layers, name="smollm2-shaped-random"
    )
    torch.manual_seed(1)
    ids = torch.randint(1, 49152, (args.batch, args.prompt_len))
    mask = torch.ones_like(ids)
    mask[0, : args.prompt_len // 4] = 0  # one left-padded row, as in real batches
    vector = SteeringVector({layer: 0.01 * torch.randn(576) for layer in range(bundle.num_layers)})

    def gen() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

    def gen_steered() -> None:
        with vector.apply(bundle, alpha=1.0):
            gen()

    def fwd() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)

    def fwd_capture() -> None:
        with record_hidden_states(bundle, positions="last") as rec:
            fwd()
        rec.result()

    gen()  # warm-up
    fwd()
    gen_times = interleaved({"plain": gen, "steered": gen_steered}, args.repeats)
    fwd_times = interleaved({"plain": fwd, "capture": fwd_capture}, args.repeats * 3)
    tokens = args.batch * args.new_tokens
    figures = {
        "steered_vs_plain_throughput": round(median(gen_times["plain"]) / median(gen_times["steered"]), 3),
        "capture_vs_plain_forward": round(median(fwd_times["plain"]) / median(fwd_times["capture"]), 3),
        "plain_tokens_per_s": round(tokens / median(gen_times["plain"]), 1),
        "steered_tokens_per_s": round(tokens / median(gen_times["steered"]), 1),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "layers_steered": bundle.num_layers,
        **environment(),
    }
    emit(figures)


if __name__ == "__main__":
    main()

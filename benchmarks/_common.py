"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import torch


def smollm2_shaped_llama(seed: int = 0, layers: int = 30) -> torch.nn.Module:
    """A random-weight Llama with SmolLM2-135M's shapes (hidden 576, 30 layers, vocab 49152)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    alternate: bool = False,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, interleaving them (A B A B ...) to share machine noise.

    ``alternate``: every other round runs the functions in reverse order (A B C, C B A, ...), so a drift of the
    machine's speed within a round does not favour the function that runs first. ``cpu_times``: filled with the
    process's CPU time of each call as well (``time.process_time``: the time this process computed, which other
    processes competing for the cores do not inflate as they inflate wall time).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in fns})
    names = list(fns)
    for r in range(repeats):
        for name in reversed(names) if alternate and r % 2 else names:
            start, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            times[name].append(time.perf_counter() - start)
            if cpu_times is not None:
                cpu_times[name].append(time.process_time() - cpu)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def environment() -> dict[str, Any]:
    return {
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
    }


def emit(figures: dict[str, Any]) -> None:
    """Print the figures as the last line, one JSON object."""
    print(json.dumps(figures))

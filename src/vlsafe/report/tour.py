"""A short end-to-end tour on a tiny model: build, inspect, capture, steer, show the shift.

``vlsafe tour`` runs it. Everything happens offline, in seconds, on a tiny random-weight VLM, so the
numbers show the mechanics (an image moves the hidden states away from the text-only ones; a steering
vector moves them back), not safety behaviour; the model organism's demo (``vlsafe demo``) shows that.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from vlsafe.core.io import write_json_atomic, write_text_atomic
from vlsafe.hooks import SteeringVector, capture
from vlsafe.models import build_inputs, build_tiny, inspect_model, load_model
from vlsafe.report.figures import line_curves, save_png

log = logging.getLogger(__name__)

TOUR_QUERIES = [
    "What is shown in this picture?",
    "Describe the colours you can see.",
    "How many objects are there?",
    "Write a short story about this scene.",
    "Is there any text in the image?",
    "What should I do next with this?",
]


def _last_token_states(bundle: Any, variant: str, images: list[Any] | None) -> dict[int, torch.Tensor]:
    batch = build_inputs(bundle, TOUR_QUERIES, variant=variant, images=images)
    states = capture(bundle, [batch], positions="last", progress=False)
    return {layer: states[layer] for layer in states.layers}


def _distance(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[int, float]:
    return {layer: float((a[layer] - b[layer]).norm(dim=-1).mean()) for layer in sorted(a)}


def shift_figure(before: dict[int, float], after: dict[int, float], layer: int) -> Figure:
    """Per-layer distance to the text-only states, without and with steering; the steered layer is marked."""
    layers = sorted(before)
    fig = line_curves(
        layers,
        {
            "image (no steering)": [before[k] for k in layers],
            f"image, steered at layer {layer}": [after[k] for k in layers],
        },
        xlabel="decoder layer",
        ylabel="L2 distance to text-only",
    )
    ax = fig.axes[0]
    ax.axvline(layer, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(layers)
    return fig


def run_tour(out_dir: str | Path, *, family: str = "llava", seed: int = 0) -> dict[str, Any]:
    """Run the tour and write ``report.md``, ``results.json`` and a figure to ``out_dir``.

    Steps: build a tiny ``family`` model; inspect it; capture last-token hidden states of the
    text-only and noise-image variants of a few queries; calibrate a per-layer vector
    ``v_l = mean(text) - mean(image)``; steer the image variant with it at the middle layer and
    measure how far its states sit from the text-only states, before and after.

    Returns:
        A dict with the measured distances and the paths written.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_dir = build_tiny(family, out / "tiny-model", seed=seed)
    info = inspect_model(str(model_dir))
    bundle = load_model(str(model_dir))
    log.info("tiny %s: %d layers, hidden %d", family, bundle.num_layers, bundle.hidden_size)

    text = _last_token_states(bundle, "text", None)
    image = _last_token_states(bundle, "noise", None)
    before = _distance(image, text)
    vector = SteeringVector(
        {layer: (text[layer] - image[layer]).mean(dim=0) for layer in text},
        {"model": str(model_dir), "method": "mean(text) - mean(noise image), last prompt token"},
    )
    layer = bundle.num_layers // 2 - 1 if bundle.num_layers > 1 else 0
    with vector.subset([layer]).apply(bundle, alpha=1.0):
        steered = _last_token_states(bundle, "noise", None)
    after = _distance(steered, text)
    vector_path = vector.save(out / "tour_vector.safetensors")

    fig_path = save_png(shift_figure(before, after, layer), out / "shift.png")
    results = {
        "family": family,
        "model": info,
        "steered_layer": layer,
        "distance_before": before,
        "distance_after": after,
        "vector_norms": vector.norms(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(out / "results.json", results)
    lines = [
        "# vlsafe tour (tiny random model)",
        "",
        f"vlsafe's mechanics on a tiny random-weight **{family}** model: capture, calibrate a",
        "text-minus-image vector, steer. Random weights carry no safety behaviour; `vlsafe demo` shows that.",
        "",
        "| fact | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        f"Mean L2 distance of last-prompt-token states, noise-image vs text-only, per layer; steered at layer {layer}",
        "with alpha = 1 (v = mean text-only state - mean image state).",
        "",
        "| layer | before | after steering |",
        "|---|---|---|",
        *[f"| {k} | {before[k]:.4f} | {after[k]:.4f} |" for k in sorted(before)],
        "",
        f"![shift]({fig_path.name})",
        "",
        f"Steering vector saved to `{vector_path.name}`; total time {results['seconds']} s.",
    ]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    results["report"] = str(report)
    return results

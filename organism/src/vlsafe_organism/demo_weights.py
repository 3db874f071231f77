"""The organism's weight-change section for the demo report: which layers each training step moves.

:func:`weight_sections` compares checkpoints pairwise with :func:`vlsafe.analysis.run_weights` (per layer
and module, streamed over safetensors) into ``out_dir/analysis/weights/<pair>`` and draws one combined
per-layer figure, one line per pair. A VLM's language model may carry a resized vocabulary (the organism
adds an ``<image>`` token: 49,153 embedding rows against the LLM's 49,152); those tensors are left out
(``resized="skip"``) and listed in each pair's summary and in the section text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlsafe.analysis import WeightDiffResult, run_weights
from vlsafe.core.errors import InputError
from vlsafe.models.references import reference_scheme, resolve_checkpoint
from vlsafe.report import ReportFigure, ReportTable, Section, line_curves, save_png
from vlsafe_organism.registry import BASE_LLM_REF, resolve_organism

__all__ = ["BASE_LLM_REF", "default_weight_pairs", "checkpoint_dir", "weight_sections"]

logger = logging.getLogger(__name__)


def checkpoint_dir(ref: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Folder of a checkpoint reference: ``organism:<system>`` and ``organism:base-llm`` are built into
    ``cache_dir``; anything else resolves as :func:`vlsafe.models.references.resolve_checkpoint` does."""
    if reference_scheme(ref) == "organism":
        return resolve_organism(str(ref), cache_dir)
    return resolve_checkpoint(ref)


def default_weight_pairs(cache_dir: str | Path | None = None) -> list[tuple[str, str, str]]:
    """The organism's two steps: safety tuning of the base LLM, then VL adaptation of the safe LLM."""
    return [
        ("base LLM -> safe LLM", BASE_LLM_REF, "organism:safe-llm"),
        ("safe LLM -> VL model", "organism:safe-llm", "organism:vl"),
    ]


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3:
        return None
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    tx, ty = tx - tx.mean(), ty - ty.mean()
    den = float(tx.norm() * ty.norm())
    return float(tx @ ty) / den if den else None


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "pair"


def _load(folder: Path) -> WeightDiffResult:
    data = json.loads((folder / "data.json").read_text())
    return WeightDiffResult(
        data["rows"], data["skipped_a"], data["skipped_b"], data["meta"], data.get("resized", [])
    )


def weight_sections(
    out_dir: Path,
    pairs: Sequence[tuple[str, str | Path, str | Path]],
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
) -> tuple[list[Section], dict[str, Any]]:
    """Per-layer weight changes of each ``(label, checkpoint_a, checkpoint_b)`` pair, one figure for all.

    Each pair is compared by :func:`vlsafe.analysis.run_weights` (VLM<->LLM names matched automatically,
    resized-vocabulary tensors skipped) into ``out_dir/analysis/weights/<label>``; the combined figure
    ``out_dir/analysis/weights/per_layer_all.png`` draws the relative Frobenius norm of the change of
    each decoder layer of the language model, one line per pair.

    Returns:
        ``(sections, numbers)``; ``numbers[label]`` holds the per-layer changes, their peak and the
        names of the resized tensors left out (``resized_skipped``).
    """
    if not pairs:
        raise InputError("weight_sections needs at least one (label, checkpoint_a, checkpoint_b) pair")
    labels = [p[0] for p in pairs]
    if len(set(labels)) != len(labels) or len({_slug(x) for x in labels}) != len(labels):
        raise InputError(f"pair labels must be distinct (also after lower-casing): {labels}")
    root = Path(out_dir) / "analysis" / "weights"
    curves: dict[str, dict[int, float]] = {}
    heat: list[ReportFigure] = []
    numbers: dict[str, Any] = {}
    for label, ref_a, ref_b in pairs:
        folder = root / _slug(label)
        a_dir, b_dir = checkpoint_dir(ref_a, cache_dir), checkpoint_dir(ref_b, cache_dir)
        run_weights(a_dir, b_dir, folder, resized="skip", progress=progress)
        res = _load(folder)
        comps = res.components()
        if not comps:
            raise InputError(f"pair {label!r}: no tensor of numbered decoder layers in common")
        comp = res.main_component()
        per_layer = res.per_layer(comp)
        curves[label] = per_layer
        top = max(per_layer, key=lambda j: per_layer[j])
        numbers[label] = {
            "per_layer": {str(j): v for j, v in per_layer.items()},
            "peak_layer": top,
            "peak": per_layer[top],
            "mean": sum(per_layer.values()) / len(per_layer),
            "tensors": len(res.rows),
            "top_tensor": {k: res.top(1)[0][k] for k in ("name", "relative")},
            "resized_skipped": [r["name"] for r in res.resized],
        }
        heat.append(
            ReportFigure.from_file(
                folder / "figures" / f"weights_heatmap_{comps.index(comp)}.png",
                f"{label}: relative change per module and layer",
            )
        )
    layers = sorted(set().union(*(c.keys() for c in curves.values())))
    fig = line_curves(
        [float(j) for j in layers],
        {lab: [c.get(j, float("nan")) for j in layers] for lab, c in curves.items()},
        title="weight change per decoder layer",
        xlabel="layer",
        ylabel="||A-B||_F / ||A||_F",
        figsize=(7.0, 4.0),
    )
    combined = save_png(fig, root / "per_layer_all.png")
    text = (
        "Relative Frobenius norm of the change of all weights of each decoder layer (A -> B). "
        + "; ".join(_pair_text(lab, numbers[lab]) for lab in curves)
        + "."
    )
    labs = list(curves)
    if len(labs) >= 2:
        common = [j for j in layers if all(j in curves[x] for x in labs[:2])]
        r = _pearson([curves[labs[0]][j] for j in common], [curves[labs[1]][j] for j in common])
        if r is not None:
            numbers["profile_correlation"] = {"pairs": labs[:2], "r": r}
            text += f" Correlation of the first two per-layer profiles: r = {r:.2f}."
    table = [{"layer": j, **{lab: c.get(j) for lab, c in curves.items()}} for j in layers]
    section = Section(
        "Analysis: which layers each training step moves",
        text,
        tables=[ReportTable(table, caption="Relative change per layer")],
        figures=[
            ReportFigure.from_file(combined, "Relative weight change per decoder layer, one line per pair"),
            *heat,
        ],
    )
    return [section], numbers


def _pair_text(label: str, num: dict[str, Any]) -> str:
    text = (
        f"{label}: peak {num['peak']:.2e} at layer {num['peak_layer']}, mean {num['mean']:.2e}, largest "
        f"single tensor `{num['top_tensor']['name']}` ({num['top_tensor']['relative']:.2e})"
    )
    if num["resized_skipped"]:
        names = ", ".join(f"`{n}`" for n in num["resized_skipped"])
        text += f" (resized vocabulary, left out: {names})"
    return text

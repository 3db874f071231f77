"""One call per analysis: compute, save data (safetensors + JSON), draw figures, write the summary.

Each ``run_*`` writes to ``out_dir``: ``data.json`` + ``data.safetensors`` (everything the figures need),
``figures/*.png``, ``summary.md`` and a self-contained ``report.html``. :func:`redraw` rebuilds the
figures and pages of any such folder from its data, without the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.analysis.data_io import load_data, save_data, write_page
from vlsafe.analysis.directions import compute_directions, directions_from_data, directions_to_data
from vlsafe.analysis.items import load_items
from vlsafe.analysis.lens import compute_layers, lens_from_data, lens_to_data
from vlsafe.analysis.pages import Page, directions_page, lens_page, shift_page, weights_page
from vlsafe.analysis.shift import compute_shift, shift_from_data, shift_to_data
from vlsafe.analysis.weights import WeightDiffResult, weight_diff
from vlsafe.core.errors import InputError
from vlsafe.hooks import SteeringVector
from vlsafe.models import ModelBundle, load_model
from vlsafe.report import ReportTable, Section

logger = logging.getLogger(__name__)

ModelRef = str | Path | ModelBundle
ItemsRef = str | Path | Sequence[Any]

TITLES = {
    "shift": "Representation shift between input variants",
    "directions": "Refusal directions and probes",
    "layers": "Safety-layer localisation",
    "weights": "Weight changes between checkpoints",
}


def _bundle(model: ModelRef, dtype: str | None, trust_remote_code: bool) -> ModelBundle:
    if isinstance(model, ModelBundle):
        return model
    bundle = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    bundle.model.eval()
    return bundle


def _items(ref: ItemsRef, data_dir: str | Path | None, limit: int | None) -> list[Any]:
    if isinstance(ref, (str, Path)):
        return list(load_items(ref, data_dir=data_dir, limit=limit))
    rows = list(ref)
    return rows[:limit] if limit is not None else rows


def _finish(out_dir: Path, kind: str, page: Page) -> dict[str, Path]:
    sections, figures = page
    paths = write_page(out_dir, TITLES[kind], sections, figures)
    paths["data"] = out_dir / "data.json"
    return paths


def run_shift(
    model: ModelRef,
    items: ItemsRef,
    out_dir: str | Path,
    *,
    variants: Sequence[str] | None = None,
    reference: str = "text",
    layers: Sequence[int] | None = None,
    positions: Sequence[str] = ("last", "text_mean"),
    direction: str | Path | SteeringVector | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    scatter_layers: Sequence[int] | None = None,
    max_scatter_points: int = 500,
    seed: int = 0,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Representation shift of input variants (see :func:`vlsafe.analysis.compute_shift`) into ``out_dir``.

    ``items`` is a list of queries or a source for :func:`vlsafe.analysis.load_items` (jsonl/txt file or
    benchmark name with ``data_dir``); ``direction`` a saved steering vector (e.g. ``directions`` of
    :func:`run_directions`) to project on. Returns the written paths.
    """
    bundle = _bundle(model, dtype, trust_remote_code)
    vec = SteeringVector.load(direction) if isinstance(direction, (str, Path)) else direction
    result = compute_shift(
        bundle,
        _items(items, data_dir, limit),
        variants,
        reference=reference,
        layers=layers,
        positions=positions,
        direction=vec,
        batch_size=batch_size,
        scatter_layers=scatter_layers,
        max_scatter_points=max_scatter_points,
        seed=seed,
        progress=progress,
    )
    out = Path(out_dir)
    data, tensors = shift_to_data(result)
    save_data(out, "shift", data, tensors)
    return _finish(out, "shift", shift_page(result))


def run_directions(
    model: ModelRef,
    harmful: ItemsRef,
    harmless: ItemsRef,
    out_dir: str | Path,
    *,
    items: ItemsRef | None = None,
    variants: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    test_fraction: float = 0.25,
    probe_steps: int = 300,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Refusal directions + probe accuracies per layer, and (with ``items``) how far variants move along them.

    Writes ``directions.safetensors`` (a :class:`vlsafe.hooks.SteeringVector` of the unnormalised
    directions) beside the usual data, figures and summary.
    """
    bundle = _bundle(model, dtype, trust_remote_code)
    result = compute_directions(
        bundle,
        _items(harmful, data_dir, limit),
        _items(harmless, data_dir, limit),
        layers=layers,
        test_fraction=test_fraction,
        seed=seed,
        probe_steps=probe_steps,
        batch_size=batch_size,
        progress=progress,
    )
    data, tensors = directions_to_data(result)
    shift = None
    if items is not None:
        shift = compute_shift(
            bundle,
            _items(items, data_dir, limit),
            variants,
            layers=result.layers,
            positions=("last",),
            direction=result.directions,
            batch_size=batch_size,
            scatter_layers=[],
            seed=seed,
            progress=progress,
        )
        sdata, stensors = shift_to_data(shift)
        data["shift"] = sdata
        tensors.update({f"shift.{k}": v for k, v in stensors.items()})
    out = Path(out_dir)
    save_data(out, "directions", data, tensors)
    paths = _finish(out, "directions", directions_page(result, shift))
    paths["directions"] = result.steering_vector().save(out / "directions.safetensors")
    return paths


def run_layers(
    model: ModelRef,
    items: ItemsRef,
    out_dir: str | Path,
    *,
    variants: Sequence[str] | None = None,
    top_k: int = 10,
    caption_cosine: bool = True,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Logit-lens safety-layer localisation (see :func:`vlsafe.analysis.compute_layers`) into ``out_dir``."""
    bundle = _bundle(model, dtype, trust_remote_code)
    result = compute_layers(
        bundle,
        _items(items, data_dir, limit),
        variants,
        top_k=top_k,
        caption_cosine=caption_cosine,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    out = Path(out_dir)
    data, tensors = lens_to_data(result)
    save_data(out, "layers", data, tensors)
    return _finish(out, "layers", lens_page(result))


def run_weights(
    checkpoint_a: str | Path,
    checkpoint_b: str | Path,
    out_dir: str | Path,
    *,
    names: str = "auto",
    resized: str = "error",
    progress: bool = True,
) -> dict[str, Path]:
    """Per-layer, per-module relative weight change from A to B (see :func:`vlsafe.analysis.weight_diff`).

    ``resized`` (``error`` | ``skip`` | ``overlap``) handles tensors whose leading dimension differs (a
    VLM's resized vocabulary); the resized tensors are listed in ``data.json`` and in the summary.
    """
    result = weight_diff(checkpoint_a, checkpoint_b, names=names, resized=resized, progress=progress)
    out = Path(out_dir)
    data = {
        "rows": result.rows,
        "skipped_a": result.skipped_a,
        "skipped_b": result.skipped_b,
        "meta": result.meta,
        "resized": result.resized,
    }
    save_data(out, "weights", data, {})
    return _finish(out, "weights", _weights_page(result))


def _weights_page(result: WeightDiffResult) -> Page:
    """:func:`weights_page` plus a section listing the resized tensors (skipped or compared on overlap)."""
    sections, figs = weights_page(result)
    if result.resized:
        how = {
            "skipped": "left out of the comparison",
            "overlap": "compared on their common leading rows only",
        }
        text = (
            f"{len(result.resized)} tensor(s) differ only in their leading dimension (a resized vocabulary, "
            f"e.g. an added image token) and were "
            + "; ".join(sorted({how.get(r["action"], r["action"]) for r in result.resized}))
            + "."
        )
        rows = [{k: r[k] for k in ("name", "name_b", "shape_a", "shape_b", "action")} for r in result.resized]
        sections.insert(1, Section("Resized tensors", text, tables=[ReportTable(rows)]))
    return sections, figs


def redraw(out_dir: str | Path) -> dict[str, Path]:
    """Redraw figures, ``summary.md`` and ``report.html`` of an analysis folder from its saved data."""
    out = Path(out_dir)
    data, tensors = load_data(out)
    kind = data.get("kind")
    if kind == "shift":
        page = shift_page(shift_from_data(data, tensors))
    elif kind == "directions":
        shift = None
        if "shift" in data:
            sub = {k[6:]: v for k, v in tensors.items() if k.startswith("shift.")}
            shift = shift_from_data(data["shift"], sub)
        page = directions_page(directions_from_data(data, tensors), shift)
    elif kind == "layers":
        page = lens_page(lens_from_data(data, tensors))
    elif kind == "weights":
        page = _weights_page(
            WeightDiffResult(
                data["rows"], data["skipped_a"], data["skipped_b"], data["meta"], data.get("resized", [])
            )
        )
    else:
        raise InputError(f"{out}/data.json has kind {kind!r}; known: {', '.join(TITLES)}")
    return _finish(out, kind, page)

"""One call per analysis: compute, save data (safetensors + JSON), draw figures, write the summary.

Each ``run_*`` takes its config (:mod:`vlsafe.analysis.config`) and writes to ``out_dir``: ``data.json`` +
``data.safetensors`` (everything the figures need), ``figures/*.png``, ``summary.md`` and a self-contained
``report.html``. :func:`redraw` rebuilds the figures and pages of any such folder from its data, without the model.
The output folder's writability is checked before the model loads; every file is replaced atomically and
``data.json`` is written last, recording the digest of ``data.safetensors``, so a folder that an interrupted
run left is read either as the previous complete analysis or refused (see :func:`vlsafe.analysis.data_io.load_data`).

Each ``run_*`` also takes its config's fields spelled out, the leading ones positionally (``run_weights(a, b,
out_dir, resized="skip")``; ``run_directions(model, harmful, harmless, out_dir, probe_steps=100)``), where the
model may be a loaded ``ModelBundle``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from vlsafe.analysis.config import (
    AnalysisOptions,
    DirectionsConfig,
    ItemsSource,
    LayersConfig,
    ShiftConfig,
    WeightsConfig,
)
from vlsafe.analysis.data_io import load_data, save_data, write_page
from vlsafe.analysis.directions import compute_directions, directions_from_data, directions_to_data
from vlsafe.analysis.items import load_items
from vlsafe.analysis.lens import compute_layers, lens_from_data, lens_to_data
from vlsafe.analysis.pages import Page, directions_page, lens_page, shift_page, weights_page
from vlsafe.analysis.shift import compute_shift, shift_from_data, shift_to_data
from vlsafe.analysis.weights import WeightDiffResult, weight_diff
from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import check_writable, write_json_atomic
from vlsafe.core.paths import SAFETY_LAYERS_FILE, SAFETY_LAYERS_FORMAT
from vlsafe.hooks import SteeringVector
from vlsafe.models import ModelBundle, load_model
from vlsafe.report import ReportTable, Section

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
#: The model in the spelled-out call form.
ModelRef = str | Path | ModelBundle

TITLES = {
    "shift": "Representation shift between input variants",
    "directions": "Refusal directions and probes",
    "layers": "Safety-layer localisation",
    "weights": "Weight changes between checkpoints",
}


def _resolve(
    cls: type[C], config: Any, args: tuple[Any, ...], fields: dict[str, Any], leading: Sequence[str]
) -> tuple[C, Path, ModelBundle | None]:
    """``(config, out_dir, bundle)`` from ``run_x(config, out_dir, bundle=...)`` or from the spelled-out form
    ``run_x(<leading fields>, out_dir, **fields)`` (whose ``model`` may be a loaded ``ModelBundle``)."""
    bundle = fields.pop("bundle", None)
    if isinstance(config, (cls, Mapping)):
        values = list(args)
        if "out_dir" in fields:
            values.append(fields.pop("out_dir"))
        if len(values) != 1 or fields:
            raise ConfigError(
                f"give {cls.__name__} and out_dir (and bundle=, progress=); got {len(values)} more positional "
                f"argument(s) and {sorted(fields)}"
            )
        data = config if isinstance(config, cls) else validate_config(cls, dict(config))
        return data, Path(values[0]), bundle
    values = [config, *args]
    if len(values) == len(leading):
        values.append(fields.pop("out_dir", None))
    if len(values) != len(leading) + 1 or values[-1] is None:
        raise ConfigError(f"give {', '.join(leading)} and out_dir (or a {cls.__name__} and out_dir)")
    data_fields = dict(zip(leading, values[:-1], strict=True))
    if isinstance(data_fields.get("model"), ModelBundle):
        bundle = data_fields["model"]
        data_fields["model"] = bundle.name
    return validate_config(cls, {**data_fields, **fields}), Path(values[-1]), bundle


def _bundle(config: AnalysisOptions, bundle: ModelBundle | None) -> ModelBundle:
    if bundle is not None:
        return bundle
    bundle = load_model(
        config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle
    )
    bundle.model.eval()
    return bundle


def _items(ref: ItemsSource, config: AnalysisOptions) -> list[Any]:
    if isinstance(ref, (str, Path)):
        return list(load_items(ref, data_dir=config.data_dir, limit=config.limit))
    rows = list(ref)
    return rows[: config.limit] if config.limit is not None else rows


def _finish(out_dir: Path, kind: str, page: Page) -> dict[str, Path]:
    sections, figures = page
    paths = write_page(out_dir, TITLES[kind], sections, figures)
    paths["data"] = out_dir / "data.json"
    return paths


def run_shift(
    config: ShiftConfig | Mapping[str, Any] | ModelRef, *args: Any, progress: bool = True, **fields: Any
) -> dict[str, Path]:
    """Representation shift of input variants (see :func:`vlsafe.analysis.compute_shift`) into ``out_dir``.

    Call as ``run_shift(config, out_dir, bundle=None)`` or ``run_shift(model, items, out_dir, **fields)``.

    Args:
        config: a :class:`~vlsafe.analysis.config.ShiftConfig` (or a mapping of its fields).
        args: ``out_dir``, the folder written.
        progress: show progress bars.
        fields: ``bundle``: an already loaded model (default: load ``config.model``).

    Returns:
        The written paths (``summary``, ``html``, ``data``, figures).
    """
    cfg, out, bundle = _resolve(ShiftConfig, config, args, fields, ("model", "items"))
    check_writable(out, "analysis output folder")
    model = _bundle(cfg, bundle)
    direction = SteeringVector.load(cfg.direction) if isinstance(cfg.direction, Path) else cfg.direction
    if direction is not None:
        try:
            direction.validate(model)
        except (InputError, ConfigError) as exc:
            raise InputError(f"direction {str(cfg.direction)!r} does not fit model {cfg.model!r}: {exc}") from None
    result = compute_shift(
        model,
        _items(cfg.items, cfg),
        cfg.variants,
        reference=cfg.reference,
        layers=cfg.layers,
        positions=cfg.positions,
        direction=direction,
        batch_size=cfg.batch_size,
        scatter_layers=cfg.scatter_layers,
        max_scatter_points=cfg.max_scatter_points,
        seed=cfg.seed,
        progress=progress,
    )
    data, tensors = shift_to_data(result)
    paths = _finish(out, "shift", shift_page(result))
    save_data(out, "shift", data, tensors)  # last: a folder whose data.json matches its tensors is complete
    return paths


def run_directions(
    config: DirectionsConfig | Mapping[str, Any] | ModelRef, *args: Any, progress: bool = True, **fields: Any
) -> dict[str, Path]:
    """Refusal directions + probe accuracies per layer, and (with ``items``) how far variants move along them.

    Call as ``run_directions(config, out_dir, bundle=None)`` or ``run_directions(model, harmful, harmless,
    out_dir, **fields)``. Writes ``directions.safetensors`` (a :class:`vlsafe.hooks.SteeringVector` of the
    unnormalised directions) beside the usual data, figures and summary.

    Args:
        config: a :class:`~vlsafe.analysis.config.DirectionsConfig` (or a mapping of its fields).
        args: ``out_dir``, the folder written.
        progress: show progress bars.
        fields: ``bundle``: an already loaded model (default: load ``config.model``).

    Returns:
        The written paths (``summary``, ``html``, ``data``, ``directions``, figures).
    """
    cfg, out, bundle = _resolve(DirectionsConfig, config, args, fields, ("model", "harmful", "harmless"))
    check_writable(out, "analysis output folder")
    model = _bundle(cfg, bundle)
    result = compute_directions(
        model,
        _items(cfg.harmful, cfg),
        _items(cfg.harmless, cfg),
        layers=cfg.layers,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        probe_steps=cfg.probe_steps,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    data, tensors = directions_to_data(result)
    shift = None
    if cfg.items is not None:
        shift = compute_shift(
            model,
            _items(cfg.items, cfg),
            cfg.variants,
            layers=result.layers,
            positions=("last",),
            direction=result.directions,
            batch_size=cfg.batch_size,
            scatter_layers=[],
            seed=cfg.seed,
            progress=progress,
        )
        sdata, stensors = shift_to_data(shift)
        data["shift"] = sdata
        tensors.update({f"shift.{k}": v for k, v in stensors.items()})
    paths = _finish(out, "directions", directions_page(result, shift))
    paths["directions"] = result.steering_vector().save(out / "directions.safetensors")
    save_data(out, "directions", data, tensors)
    return paths


def run_layers(
    config: LayersConfig | Mapping[str, Any] | ModelRef, *args: Any, progress: bool = True, **fields: Any
) -> dict[str, Path]:
    """Logit-lens safety-layer localisation (see :func:`vlsafe.analysis.compute_layers`) into ``out_dir``.

    Call as ``run_layers(config, out_dir, bundle=None)`` or ``run_layers(model, items, out_dir, **fields)``.

    Args:
        config: a :class:`~vlsafe.analysis.config.LayersConfig` (or a mapping of its fields).
        args: ``out_dir``, the folder written.
        progress: show progress bars.
        fields: ``bundle``: an already loaded model (default: load ``config.model``).

    Returns:
        The written paths (``summary``, ``html``, ``data``, figures). The folder also holds
        ``safety_layers.json`` (``{"format": "vlsafe.safety_layers", "layers": {variant: [layer, ...] | null}}``:
        each variant's activation through end layer), which training reads to choose TGA's guided layers.
    """
    cfg, out, bundle = _resolve(LayersConfig, config, args, fields, ("model", "items"))
    check_writable(out, "analysis output folder")
    result = compute_layers(
        _bundle(cfg, bundle),
        _items(cfg.items, cfg),
        cfg.variants,
        top_k=cfg.top_k,
        caption_cosine=cfg.caption_cosine,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=progress,
    )
    data, tensors = lens_to_data(result)
    layers = {variant: result.safety_layers(variant) for variant in result.variants}
    paths = _finish(out, "layers", lens_page(result))
    write_json_atomic(out / SAFETY_LAYERS_FILE, {"format": SAFETY_LAYERS_FORMAT, "layers": layers})
    save_data(out, "layers", data, tensors)
    return paths


def run_weights(
    config: WeightsConfig | Mapping[str, Any] | str | Path, *args: Any, progress: bool = True, **fields: Any
) -> dict[str, Path]:
    """Per-layer, per-module relative weight change from A to B (see :func:`vlsafe.analysis.weight_diff`).

    Call as ``run_weights(config, out_dir)`` or ``run_weights(checkpoint_a, checkpoint_b, out_dir, **fields)``.
    ``resized`` (``error`` | ``skip`` | ``overlap``) handles tensors whose leading dimension differs (a VLM's
    resized vocabulary); the resized tensors are listed in ``data.json`` and in the summary.

    Args:
        config: a :class:`~vlsafe.analysis.config.WeightsConfig` (or a mapping of its fields).
        args: ``out_dir``, the folder written.
        progress: show a progress bar.
        fields: unused with a config.

    Returns:
        The written paths (``summary``, ``html``, ``data``, figures).
    """
    cfg, out, _ = _resolve(WeightsConfig, config, args, fields, ("checkpoint_a", "checkpoint_b"))
    check_writable(out, "analysis output folder")
    result = weight_diff(
        cfg.checkpoint_a, cfg.checkpoint_b, names=cfg.names, resized=cfg.resized, progress=progress
    )
    data = {
        "rows": result.rows,
        "skipped_a": result.skipped_a,
        "skipped_b": result.skipped_b,
        "meta": result.meta,
        "resized": result.resized,
    }
    paths = _finish(out, "weights", _weights_page(result))
    save_data(out, "weights", data, {})
    return paths


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
    check_writable(out, "analysis output folder")
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

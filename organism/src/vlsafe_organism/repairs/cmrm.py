"""CMRM on the model organism: anchors, the validation sweep that picks its settings, and the demo systems.

* :func:`cmrm_anchors` -- the calibration anchors: the organism's *training* prompts (half harmful, half
  benign) each with a benign synthetic *train*-split image (never a validation or evaluation item).
* :func:`select_cmrm` -- calibrates a dataset-level vector on ``organism:vl`` over the anchors, sweeps a grid
  of application options x alpha (and a smaller sample-level grid) on the validation split with the library's
  :func:`vlsafe.methods.cmrm.run_sweep` (one resumable sweep per option set), picks one setting per level with
  :func:`~vlsafe_organism.repairs.select.choose` and writes the selection as JSON plus a figure.
* :func:`cmrm_systems` -- the two chosen systems (``vl+cmrm-dataset``, ``vl+cmrm-sample``) for the demo.
  The dataset-level vector is re-calibrated from the anchors (deterministic, a few seconds, no extra
  artefact to commit); its hash is checked against the one recorded at selection time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict

from vlsafe.core.io import read_json, write_json_atomic
from vlsafe.data.scenes import make_example
from vlsafe.evals.sample import ImageSetting
from vlsafe.methods.cmrm import (
    ApplyOptions,
    CMRMIntervention,
    SweepConfig,
    anchor_items,
    anchors_hash,
    calibrate,
    run_sweep,
    vector_hash,
)
from vlsafe.methods.cmrm.apply import resolve_steer_layers
from vlsafe.models import load_model
from vlsafe.report.figures import save_png
from vlsafe_organism import safety_data as sd
from vlsafe_organism.base import organism_cache_dir
from vlsafe_organism.evaluation import BENCHMARK, EVAL_BATCH, VQA_TOKENS, EvalSystem, data_dir
from vlsafe_organism.registry import resolve_organism
from vlsafe_organism.repairs import select

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_GRID",
    "SAMPLE_GRID",
    "CMRMChoice",
    "cmrm_anchors",
    "cmrm_intervention",
    "cmrm_systems",
    "plot_selection",
    "select_cmrm",
]

SYSTEM_NAMES = {"dataset": "vl+cmrm-dataset", "sample": "vl+cmrm-sample"}

#: Dataset-level grid: (application options, alphas). Each option set's alphas go gentlest first.
#: The committed selection was measured with the anchor's own image as img′ (``corrupt="image"``), named here
#: explicitly since the library's default became the paper's blank image.
DATASET_GRID: list[tuple[dict[str, Any], list[float]]] = [
    ({"layers": "middle", "delta": True, "corrupt": "image"}, [0.25, 0.4, 0.5, 1.0, 1.5]),
    ({"layers": "all", "delta": True, "corrupt": "image"}, [0.5]),
    ({"layers": [10], "positions": "last", "corrupt": "image"}, [1.0, 2.0]),
    ({"layers": [10], "positions": "all", "corrupt": "image"}, [1.0]),
]
#: Sample-level grid (two extra prefill passes per batch make each point dearer).
SAMPLE_GRID: list[tuple[dict[str, Any], list[float]]] = [
    ({"layers": "middle", "delta": True, "corrupt": "image"}, [0.25]),
]
#: Values a curve label leaves out besides the choice's defaults: those of the committed selection (its img′ was
#: the anchor's own image), so its labels stay as recorded.
_LABEL_BASE = {"norm_scale": False, "positions": "all", "prefill_only": False, "corrupt": "image",
               "vector_positions": "last", "reduce": "mean"}  # fmt: skip
#: Validation sizes of the sweep (harmful and benign prompts each, VQA questions): smaller than
#: ``val_point``'s defaults because a point costs ~2 minutes of one loaded CPU core at these sizes.
VAL_PROMPTS = 20
VAL_VQA = 32
#: generation length of the validation refusal probes
VAL_TOKENS = 12


class CMRMChoice(BaseModel):
    """One CMRM setting on the organism (what a sweep point measured and what the demo applies).

    ``corrupt`` / ``vector_positions`` / ``reduce`` describe how the vector is computed (at calibration for
    ``level="dataset"``, per input for ``level="sample"``; ``reduce`` is dataset-level only); the rest are the
    application options of :class:`vlsafe.methods.cmrm.ApplyOptions`. ``corrupt`` defaults to the library's
    default img′ (blank); the organism's grids name the one they were measured with.
    """

    model_config = ConfigDict(extra="forbid")

    level: Literal["dataset", "sample"]
    alpha: float
    layers: Literal["middle", "all"] | int | list[int] = "middle"
    delta: bool = True
    norm_scale: bool = False
    positions: Literal["all", "last"] = "all"
    prefill_only: bool = False
    corrupt: Literal["image", "blank", "noise", "mean"] = "blank"
    vector_positions: Literal["last", "text_mean"] = "last"
    reduce: Literal["mean", "pca"] = "mean"

    def key(self) -> str:
        """Stable identity of the setting (sweep resume key)."""
        return json.dumps(self.model_dump(), sort_keys=True)

    def options_label(self) -> str:
        """Short label of everything but alpha (one curve of the figure)."""
        d = self.model_dump(exclude={"alpha", "level"})
        parts = [f"layers={self.layers}", "delta" if self.delta else "no-delta"]
        default = CMRMChoice(level=self.level, alpha=0.0).model_dump(exclude={"alpha", "level"})
        parts += [f"{k}={v}" for k, v in d.items() if k not in ("layers", "delta") and v not in (default[k], _LABEL_BASE[k])]
        return f"{self.level}: " + " ".join(parts)

    def apply_options(self) -> dict[str, Any]:
        """The :class:`vlsafe.methods.cmrm.ApplyOptions` fields."""
        return self.model_dump(
            include={"alpha", "layers", "delta", "norm_scale", "positions", "prefill_only"}
        )


def cmrm_anchors(n: int = 64) -> list[dict[str, Any]]:
    """``n`` anchors ``{"text", "image"}``: the first ``n // 2`` harmful and ``n - n // 2`` benign *training*
    prompts, anchor ``i`` shown with synthetic train-split image ``i``."""

    if n < 2:
        raise ValueError(f"n={n} anchors: need at least 2 (one harmful, one benign)")
    harmful = [p.text for p in sd.load_split("harmful_train")][: n // 2]
    benign = [p.text for p in sd.load_split("benign_train")][: n - n // 2]
    if len(harmful) + len(benign) < n:
        raise ValueError(
            f"n={n} anchors: the training splits hold only {len(harmful)} + {len(benign)} prompts"
        )
    texts = harmful + benign
    return [{"text": t, "image": make_example(i, "train").image} for i, t in enumerate(texts)]


def _anchor_info(anchors: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    items, _ = anchor_items(list(anchors))
    return {
        "n": len(anchors),
        "harmful": f"harmful_train[:{n // 2}]",
        "benign": f"benign_train[:{n - n // 2}]",
        "images": f"synthetic make_example(i, 'train'), i in [0, {n})",
        "hash": anchors_hash(items),
    }


def _calibrated(
    bundle: Any,
    anchors: Sequence[dict[str, Any]],
    choice: CMRMChoice,
    cache: dict,
    info: dict,
    layers: Sequence[int] | None = None,
) -> Any:
    """The dataset-level vector of ``choice`` (``layers``: only these; default all), cached per setting."""
    key = (
        choice.corrupt,
        choice.reduce,
        choice.vector_positions,
        tuple(layers) if layers is not None else None,
    )
    if key not in cache:
        cache[key] = calibrate(bundle, anchors, corrupt=choice.corrupt, reduce=choice.reduce,
                               positions=choice.vector_positions, layers=layers, anchor_info=info,
                               progress=False)  # fmt: skip
    return cache[key]


def cmrm_intervention(bundle: Any, choice: CMRMChoice, vector: Any = None) -> CMRMIntervention:
    """A reusable CMRM intervention for ``choice`` (``vector``: the dataset-level vector; unused for sample)."""
    if choice.level == "sample":
        return CMRMIntervention(bundle, "sample", choice.apply_options(), corrupt=choice.corrupt,
                                vector_positions=choice.vector_positions)  # fmt: skip
    if vector is None:
        raise ValueError("a dataset-level CMRM choice needs its calibrated vector")
    return CMRMIntervention(bundle, vector, choice.apply_options())


def _load_bundle(cache_dir: str | Path | None, art_dir: Path | None = None) -> Any:
    """``organism:vl`` of ``art_dir`` (default: the committed artefacts) as a bundle (``cache_dir``: the organism
    cache, default ``$VLSAFE_CACHE/organism``)."""
    return load_model(resolve_organism("organism:vl", cache_dir, art_dir))


def _sweep_config(level: str, options: dict[str, Any], alphas: Sequence[float], vector: Any, root: Path,
                  n_prompts: int, n_vqa: int) -> SweepConfig:  # fmt: skip
    """The library sweep of one option set of the grid over its alphas, on the validation split."""
    choice = CMRMChoice(level=level, alpha=float(alphas[0]), **options)  # type: ignore[arg-type]
    return SweepConfig(
        model="organism:vl", cmrm=vector if level == "dataset" else "sample",
        apply=ApplyOptions(**choice.apply_options()), corrupt=choice.corrupt,
        vector_positions=choice.vector_positions, exclude_anchors=False, alphas=[float(a) for a in alphas],
        safety=[f"{BENCHMARK}:harmful_val"], over_refusal=[f"{BENCHMARK}:benign_val"],
        utility=[f"{BENCHMARK}:vqa_val"], data_dir=str(root), image_setting=ImageSetting.PROVIDED, batch_size=EVAL_BATCH,
        max_new_tokens=VAL_TOKENS, role_max_new_tokens={"utility": VQA_TOKENS},
        role_limit={"safety": n_prompts, "over_refusal": n_prompts, "utility": n_vqa},
    )  # fmt: skip


def _points(level: str, options: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One selection point per alpha from the sweep's rows (``harmful_refusal`` = the safety role's refusal rate,
    ``benign_refusal`` = the over-refusal role's, ``utility`` = VQA accuracy)."""
    points = []
    for alpha in dict.fromkeys(r["alpha"] for r in rows):
        by_role = {r["role"]: r for r in rows if r["alpha"] == alpha}
        choice = CMRMChoice(level=level, alpha=float(alpha), **options)  # type: ignore[arg-type]
        points.append({
            "key": choice.key(), "label": choice.options_label(), "choice": choice.model_dump(),
            "harmful_refusal": by_role["safety"]["value"], "benign_refusal": by_role["over_refusal"]["value"],
            "utility": by_role["utility"]["value"], "n_harmful": by_role["safety"]["n"],
            "n_benign": by_role["over_refusal"]["n"],
        })  # fmt: skip
    return points


def select_cmrm(
    out: str | Path,
    cache_dir: str | Path | None = None,
    *,
    dataset_grid: Sequence[tuple[dict[str, Any], Sequence[float]]] = DATASET_GRID,
    sample_grid: Sequence[tuple[dict[str, Any], Sequence[float]]] = SAMPLE_GRID,
    n_anchors: int = 64,
    figure: str | Path | None = None,
    bundle: Any = None,
    anchors: Sequence[dict[str, Any]] | None = None,
    n_prompts: int = VAL_PROMPTS,
    n_vqa: int = VAL_VQA,
    art_dir: Path | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Sweep the CMRM grids on the validation split with the library's :func:`vlsafe.methods.cmrm.run_sweep` and
    choose one setting per level by :func:`vlsafe_organism.repairs.select.choose`.

    Each ``(options, alphas)`` entry of a grid is one sweep (its runs under ``work_dir``, resumable: a rerun
    re-reads the finished runs); the benchmarks are the ``organism`` benchmark's ``harmful_val`` (safety),
    ``benign_val`` (over-refusal) and ``vqa_val`` (utility) splits, shown with their held-out renders. The JSON at
    ``out`` is rewritten after every sweep.

    Args:
        out: The selection JSON (``{"reference", "dataset", "sample", "anchors", "date"}``).
        cache_dir: Organism cache (default ``$VLSAFE_CACHE``).
        dataset_grid: ``(options, alphas)`` pairs of dataset-level settings (options: :class:`CMRMChoice` fields).
        sample_grid: The same for sample level.
        n_anchors: Anchors for the dataset-level vector (:func:`cmrm_anchors`).
        figure: PNG path of the sweep figure (none when ``None``).
        bundle: The VL model (default: ``organism:vl``); ``anchors``: override the anchor set (tests).
        n_prompts: Validation harmful and benign prompts each per point; ``n_vqa``: validation VQA questions.
        art_dir: The artefact directory whose ``vl`` system is swept (default: the committed one).
        work_dir: Folder of the sweeps' run directories (default: ``cmrm-sweep`` in the organism cache).

    Returns:
        The selection dict as written.
    """
    out = Path(out)
    anchors = list(anchors) if anchors is not None else cmrm_anchors(n_anchors)
    info = _anchor_info(anchors, len(anchors))
    work = Path(work_dir) if work_dir is not None else organism_cache_dir(cache_dir) / "cmrm-sweep"
    root = data_dir(cache_dir)
    bundle = bundle if bundle is not None else _load_bundle(cache_dir, art_dir)
    val = {"n_prompts": n_prompts, "n_vqa": n_vqa}
    data: dict[str, Any] = {"anchors": info, "val": val, "selection_rule": {
        "max_benign_rise": select.MAX_BENIGN_RISE, "max_utility_drop": select.MAX_UTILITY_DROP,
        "setting": select.VAL_SETTING}}  # fmt: skip
    prior = read_json(out, "CMRM selection") if out.is_file() else {}
    if prior.get("reference") and prior.get("val") == val and prior.get("anchors", {}).get("hash") == info["hash"]:
        data["reference"] = prior["reference"]
    else:
        t0 = time.monotonic()
        data["reference"] = {**select.val_point(EvalSystem("vl", bundle), n_prompts, n_vqa, VAL_TOKENS, cache_dir),
                             "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    vectors: dict[Any, Any] = {}
    for level, grid in (("dataset", dataset_grid), ("sample", sample_grid)):
        points: list[dict[str, Any]] = []
        data[level] = {"points": points, "chosen": None}
        for options, alphas in grid:
            choice = CMRMChoice(level=level, alpha=float(alphas[0]), **options)  # type: ignore[arg-type]
            vec = _calibrated(bundle, anchors, choice, vectors, info) if level == "dataset" else None
            config = _sweep_config(level, options, alphas, vec, root, n_prompts, n_vqa)
            name = hashlib.sha256(json.dumps([level, info["hash"], val, choice.model_dump(exclude={"alpha"})],
                                             sort_keys=True).encode()).hexdigest()[:12]  # fmt: skip
            t1 = time.monotonic()
            result = run_sweep(config, work / f"{level}-{name}", bundle=bundle, progress=False)
            found = _points(level, options, result["rows"])
            for point in found:
                point["seconds"] = round((time.monotonic() - t1) / len(found), 1)
                if vec is not None:
                    point["vector_hash"] = vector_hash(vec)
                    point["vector_norms"] = vector_norms(vec)
                logger.info("cmrm %s alpha=%s: harmful %s benign %s utility %s", point["label"],
                            point["choice"]["alpha"], point["harmful_refusal"], point["benign_refusal"],
                            point["utility"])  # fmt: skip
            points.extend(found)
            data["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(out, data, indent=1)
        if points:  # gentlest first within the grid order, so ties go to the smaller alpha
            order = sorted(range(len(points)), key=lambda i: (points[i]["choice"]["alpha"], i))
            data[level]["chosen"] = select.choose([points[i] for i in order], data["reference"])
    data["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out, data, indent=1)
    if figure is not None:
        plot_selection(data, figure)
    return data


def plot_selection(data: dict[str, Any], path: str | Path) -> Path:
    """Harmful / benign refusal and VQA accuracy against alpha, one line per option set (reference dashed)."""


    fig = Figure(figsize=(13, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharex=True)
    metrics = (("harmful_refusal", "harmful refusal (val)"), ("benign_refusal", "benign refusal (val)"),
               ("utility", "VQA accuracy (val)"))  # fmt: skip
    series: dict[str, list[dict[str, Any]]] = {}
    for level in ("dataset", "sample"):
        for p in (data.get(level) or {}).get("points", []):
            series.setdefault(p["label"], []).append(p)
    ref = data.get("reference") or {}
    for ax, (m, title) in zip(axes, metrics, strict=True):
        for label, pts in series.items():
            pts = sorted(pts, key=lambda p: p["choice"]["alpha"])
            ax.plot([p["choice"]["alpha"] for p in pts], [p[m] for p in pts], marker="o", markersize=3,
                    label=label, linestyle="--" if label.startswith("sample") else "-")  # fmt: skip
        if ref.get(m) is not None:
            ax.axhline(ref[m], color="black", linestyle=":", linewidth=1, label="organism:vl (no CMRM)")
        ax.set_title(title)
        ax.set_xlabel("alpha")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    return save_png(fig, path)


def vector_norms(vector: Any) -> dict[str, float]:
    """Per-layer L2 norms of a dataset-level vector: a check of a re-calibration that survives float rounding."""
    return {str(layer): round(float(vector.vectors[layer].float().norm()), 6) for layer in vector.layers}


def check_recalibrated(chosen: dict[str, Any], vector: Any, rtol: float = 1e-3) -> bool | None:
    """Whether a re-calibrated vector matches the one measured at selection (on the layers it has).

    With per-layer norms recorded, compare them within ``rtol`` (a re-calibration on another machine or library
    version differs by float rounding, so its bytes, and their hash, differ); with only a hash, compare the
    hash. ``None`` when nothing was recorded. A mismatch of norms is logged as a warning; a mismatch of the hash
    alone only at info level, since a hash cannot tell rounding from a real change.
    """
    norms = chosen.get("vector_norms")
    if norms:
        now = vector_norms(vector)
        ok = set(now) <= set(norms) and all(
            abs(now[k] - norms[k]) <= rtol * max(abs(norms[k]), 1e-12) for k in now
        )
        if not ok:
            logger.warning("re-calibrated CMRM vector differs from the one measured at selection: per-layer "
                           "norms %s, recorded %s", now, norms)  # fmt: skip
        return ok
    recorded = chosen.get("vector_hash")
    if not recorded:
        return None
    ok = recorded == vector_hash(vector)
    if not ok:
        logger.info("re-calibrated CMRM vector hash %s differs from the selection's %s (float rounding across "
                    "machines and library versions changes it too; a selection now records per-layer norms)",
                    vector_hash(vector), recorded)  # fmt: skip
    return ok


def cmrm_systems(
    selection: dict[str, Any],
    cache_dir: str | Path | None = None,
    *,
    bundle: Any = None,
    anchors: Sequence[dict[str, Any]] | None = None,
    levels: Sequence[str] = ("dataset", "sample"),
    art_dir: Path | None = None,
) -> list[EvalSystem]:
    """The chosen CMRM systems on one shared ``organism:vl`` model: ``vl+cmrm-dataset``, ``vl+cmrm-sample``.

    The dataset-level vector is re-calibrated from the same anchors as at selection (deterministic) and checked
    against the selection's record (:func:`check_recalibrated`). ``levels`` picks the systems (only the dataset
    level needs the calibration). A level without a chosen setting is skipped.
    """
    bundle = bundle if bundle is not None else _load_bundle(cache_dir, art_dir)
    systems = []
    for level in levels:
        chosen = (selection.get(level) or {}).get("chosen")
        if not chosen:
            continue
        choice = CMRMChoice(**chosen["choice"])
        vec = None
        if level == "dataset":
            n = int(selection.get("anchors", {}).get("n", 64))
            these = list(anchors) if anchors is not None else cmrm_anchors(n)
            # only the steered layers: each layer's vector is reduced on its own, and the pass stops at the last
            steered = resolve_steer_layers(choice.layers, bundle.num_layers, range(bundle.num_layers))
            vec = _calibrated(bundle, these, choice, {}, _anchor_info(these, n), steered)
            check_recalibrated(chosen, vec)
        systems.append(EvalSystem(SYSTEM_NAMES[level], bundle,
                                  intervention=cmrm_intervention(bundle, choice, vec)))  # fmt: skip
    return systems

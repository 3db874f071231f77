"""CMRM on the model organism: anchors, the validation sweep that picks its settings, and the demo systems.

* :func:`cmrm_anchors` -- the calibration anchors: the organism's *training* prompts (half harmful, half
  benign) each with a benign synthetic *train*-split image (never a validation or evaluation item).
* :func:`select_cmrm` -- calibrates a dataset-level vector on ``organism:vl`` or ``organism:vlm`` over the
  anchors, sweeps a grid of application options x alpha (the paper grid: one axis at a time from the paper's
  form and from the last-position form, pruned by measurement; a smaller sample-level grid) on the validation
  split with the library's :func:`vlsafe.methods.cmrm.run_sweep` (one resumable sweep per option set), picks
  one setting per level with
  :func:`~vlsafe_organism.repairs.select.choose` and writes the selection as JSON plus a figure.
* :func:`cmrm_systems` -- the two chosen systems (``<system>+cmrm-dataset``, ``<system>+cmrm-sample``) for the
  demo.
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

from matplotlib import cm
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
    "BUILD_OPTIONS",
    "DATASET_GRID",
    "PAPER_DATASET_GRID",
    "PAPER_SAMPLE_GRID",
    "SAMPLE_GRID",
    "SELECTION_FILES",
    "CMRMChoice",
    "cmrm_anchors",
    "cmrm_intervention",
    "cmrm_systems",
    "plot_selection",
    "select_cmrm",
]

#: the VL systems CMRM is selected for, and the artefact file of each one's selection: ``vl`` (LoRA adaptation;
#: the system the paper's premise needs only if it stays safe on text) and ``vlm`` (projector only: the safe
#: LLM unchanged, so its text-only state is the safe LLM's -- the paper's situation exactly)
SELECTION_FILES = {"vl": "cmrm_selection.json", "vlm": "cmrm_vlm_selection.json"}


def system_names(system: str = "vl") -> dict[str, str]:
    """The demo's CMRM system names on ``system``: ``{level: "<system>+cmrm-<level>"}``."""
    if system not in SELECTION_FILES:
        raise ValueError(f"system={system!r}: CMRM is selected for {sorted(SELECTION_FILES)}")
    return {level: f"{system}+cmrm-{level}" for level in ("dataset", "sample")}


SYSTEM_NAMES = system_names("vl")

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
#: Alphas every option set of the paper grid is measured at first (a curve stops at its first broken point:
#: :func:`broken`)
COARSE_ALPHAS = [0.1, 0.5, 1.0]
#: The paper's alpha steps (0.1 to 1.0), measured for every option set with a promising coarse point
#: (:func:`promising`), up to its first broken point
FINE_ALPHAS = [round(0.1 * i, 1) for i in range(1, 11)]
#: Alphas beyond the paper's range, measured when a refined curve's best point is its alpha 1.0
BEYOND_ALPHAS = [1.5, 2.0]
#: The paper's form (design notes; ``vlsafe.methods.cmrm.presets``): blank img′, every layer with the shift
#: measured on the unsteered model, every position, the prompt and each decoded token.
PAPER_BASE: dict[str, Any] = {"corrupt": "blank", "layers": "all", "delta": False, "positions": "all",
                              "prefill_only": False}  # fmt: skip
#: The best setting measured before the paper grid (on ``organism:vlm``): the last position only, every layer
#: with per-layer increments, the anchor's own image.
LAST_BASE: dict[str, Any] = {"corrupt": "image", "layers": "all", "delta": True, "positions": "last",
                             "prefill_only": False}  # fmt: skip
#: The axes of the paper grid: img′, layers (with or without per-layer increments; the single layer is the
#: organism's earlier best single layer), positions, and when (every token or the prompt only)
AXES: dict[str, list[dict[str, Any]]] = {
    "corrupt": [{"corrupt": c} for c in ("blank", "noise", "image")],
    "layers": [{"layers": "all", "delta": False}, {"layers": "all", "delta": True},
               {"layers": "middle", "delta": True}, {"layers": [10], "delta": False}],
    "positions": [{"positions": p} for p in ("last", "text", "all")],
    "when": [{"prefill_only": False}, {"prefill_only": True}],
}  # fmt: skip


def axis_grid(bases: Sequence[dict[str, Any]], axes: dict[str, list[dict[str, Any]]],
              alphas: Sequence[float] = COARSE_ALPHAS) -> list[tuple[dict[str, Any], list[float]]]:  # fmt: skip
    """One axis at a time: each base, then each base with one axis moved to each of its other values
    (duplicates dropped), every option set with ``alphas``."""
    seen: list[dict[str, Any]] = []
    for base in bases:
        for variant in [base] + [{**base, **value} for values in axes.values() for value in values]:
            if variant not in seen:
                seen.append(variant)
    return [(options, list(alphas)) for options in seen]


#: The dataset-level paper grid: one axis at a time from :data:`PAPER_BASE` and from :data:`LAST_BASE`
PAPER_DATASET_GRID = axis_grid([PAPER_BASE, LAST_BASE], AXES)
#: The sample-level paper grid (two extra prefills per batch make a point dearer): the paper's form, and img′
#: and when moved from :data:`LAST_BASE`
PAPER_SAMPLE_GRID = axis_grid([PAPER_BASE], {}) + axis_grid(
    [LAST_BASE], {"corrupt": AXES["corrupt"], "when": AXES["when"]}
)
#: What the build sweeps per system beyond the paper grids' defaults: on ``vl`` (no premise: its text-only state
#: refuses little more than its image state) the sample level is cut to the paper's form and the last-position
#: form and not refined, for CPU time
BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    "vl": {"sample_grid": PAPER_SAMPLE_GRID[:2], "refine": ("dataset",)},
    "vlm": {},
}
#: Validation sizes of the sweep (harmful and benign prompts each, VQA questions): ``val_point``'s defaults; a
#: point costs 35-60 s of one CPU core on the organism at these sizes.
VAL_PROMPTS = 40
VAL_VQA = 48
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
    positions: Literal["all", "last", "text"] = "all"
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
        parts += [f"{k}={v}" for k, v in d.items() if k not in ("layers", "delta") and v != default[k]]
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


def _load_bundle(cache_dir: str | Path | None, art_dir: Path | None = None, system: str = "vl") -> Any:
    """``organism:<system>`` of ``art_dir`` (default: the committed artefacts) as a bundle (``cache_dir``: the
    organism cache, default ``$VLSAFE_CACHE/organism``)."""
    return load_model(resolve_organism(f"organism:{system}", cache_dir, art_dir))


def _sweep_config(level: str, options: dict[str, Any], alphas: Sequence[float], vector: Any, root: Path,
                  n_prompts: int, n_vqa: int, system: str = "vl") -> SweepConfig:  # fmt: skip
    """The library sweep of one option set of the grid over its alphas, on the validation split."""
    choice = CMRMChoice(level=level, alpha=float(alphas[0]), **options)  # type: ignore[arg-type]
    return SweepConfig(
        model=f"organism:{system}", cmrm=vector if level == "dataset" else "sample",
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


def broken(point: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether a setting broke the text: its refusal could not be measured, or it refuses no more harmful
    requests than the unsteered model while its VQA accuracy fell by more than the selection allows (the
    replies are no longer answers; steering harder does not mend that, so a curve stops there)."""
    if point["harmful_refusal"] is None or point["benign_refusal"] is None:
        return True
    drop = float(reference.get("utility") or 0.0) - float(point["utility"] or 0.0)
    return point["harmful_refusal"] <= reference["harmful_refusal"] + 1e-9 and drop > select.MAX_UTILITY_DROP + 1e-9


def promising(point: dict[str, Any], reference: dict[str, Any], gain: float = 0.10) -> bool:
    """Whether a coarse point earns its curve the paper's fine alpha steps: harmful refusal at least ``gain``
    above the unsteered model with benign refusal within the selection's limit."""
    if point["harmful_refusal"] is None or point["benign_refusal"] is None:
        return False
    rise = point["benign_refusal"] - reference["benign_refusal"]
    return point["harmful_refusal"] - reference["harmful_refusal"] >= gain - 1e-9 and rise <= select.MAX_BENIGN_RISE + 1e-9


def _fine_alphas(points: list[dict[str, Any]], reference: dict[str, Any]) -> list[float]:
    """The refinement of one promising curve: :data:`FINE_ALPHAS` (and :data:`BEYOND_ALPHAS` when its best
    promising point is at alpha 1.0), none above its first broken alpha."""
    stop = min((p["choice"]["alpha"] for p in points if broken(p, reference)), default=float("inf"))
    good = [p for p in points if promising(p, reference)]
    best = max(good, key=lambda p: p["harmful_refusal"])["choice"]["alpha"] if good else 0.0
    extra = FINE_ALPHAS + (BEYOND_ALPHAS if best >= 1.0 - 1e-9 else [])
    return [a for a in extra if a < stop]


def select_cmrm(
    out: str | Path,
    cache_dir: str | Path | None = None,
    *,
    system: str = "vl",
    dataset_grid: Sequence[tuple[dict[str, Any], Sequence[float]]] = PAPER_DATASET_GRID,
    sample_grid: Sequence[tuple[dict[str, Any], Sequence[float]]] = PAPER_SAMPLE_GRID,
    prune: bool = True,
    refine: Sequence[str] = ("dataset", "sample"),
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
    ``out`` is rewritten after every alpha.

    With ``prune`` (the paper grid's rule), a curve's alphas are measured gentlest first and the curve stops at
    its first :func:`broken` point; after the grid, every curve with a :func:`promising` point is refined to the
    paper's alpha steps (:func:`_fine_alphas`). Without it every listed alpha is measured.

    Args:
        out: The selection JSON (``{"system", "reference", "dataset", "sample", "anchors", "date"}``).
        cache_dir: Organism cache (default ``$VLSAFE_CACHE``).
        system: The organism system steered (a key of :data:`SELECTION_FILES`).
        dataset_grid: ``(options, alphas)`` pairs of dataset-level settings (options: :class:`CMRMChoice` fields).
        sample_grid: The same for sample level.
        prune: Stop curves at broken points and refine promising ones (see above).
        refine: The levels whose promising curves are refined (with ``prune``); a sample-level point costs
            about three times a dataset-level one.
        n_anchors: Anchors for the dataset-level vector (:func:`cmrm_anchors`).
        figure: PNG path of the sweep figure (none when ``None``).
        bundle: The VL model (default: ``organism:<system>``); ``anchors``: override the anchor set (tests).
        n_prompts: Validation harmful and benign prompts each per point; ``n_vqa``: validation VQA questions.
        art_dir: The artefact directory whose system is swept (default: the committed one).
        work_dir: Folder of the sweeps' run directories (default: ``cmrm-sweep`` in the organism cache).

    Returns:
        The selection dict as written.
    """
    out = Path(out)
    system_names(system)  # validates the system
    anchors = list(anchors) if anchors is not None else cmrm_anchors(n_anchors)
    info = _anchor_info(anchors, len(anchors))
    work = Path(work_dir) if work_dir is not None else organism_cache_dir(cache_dir) / f"cmrm-sweep-{system}"
    root = data_dir(cache_dir)
    bundle = bundle if bundle is not None else _load_bundle(cache_dir, art_dir, system)
    val = {"n_prompts": n_prompts, "n_vqa": n_vqa}
    grids = {"dataset": [o for o, _ in dataset_grid], "sample": [o for o, _ in sample_grid]}
    data: dict[str, Any] = {"system": system, "anchors": info, "val": val, "prune": prune, "grid": grids,
                            "refined": [lv for lv in ("dataset", "sample") if prune and lv in refine],
                            "selection_rule": select.selection_rule()}  # fmt: skip
    prior = read_json(out, "CMRM selection") if out.is_file() else {}
    same = prior.get("val") == val and prior.get("anchors", {}).get("hash") == info["hash"]
    if prior.get("reference") and same and prior.get("system", "vl") == system:
        data["reference"] = prior["reference"]
    else:
        t0 = time.monotonic()
        data["reference"] = {**select.val_point(EvalSystem(system, bundle), n_prompts, n_vqa, VAL_TOKENS, cache_dir),
                             "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    reference = data["reference"]
    vectors: dict[Any, Any] = {}
    for level, grid in (("dataset", dataset_grid), ("sample", sample_grid)):
        points: list[dict[str, Any]] = []
        data[level] = {"points": points, "chosen": None}

        def curve(options: dict[str, Any], alphas: Sequence[float], level: str = level,
                  points: list[dict[str, Any]] = points) -> list[dict[str, Any]]:  # fmt: skip
            """Measure one option set at ``alphas`` (gentlest first; with ``prune``, up to its first broken
            point), adding its new points to ``points``; returns all of its points."""
            choice = CMRMChoice(level=level, alpha=float(alphas[0]), **options)  # type: ignore[arg-type]
            vec = _calibrated(bundle, anchors, choice, vectors, info) if level == "dataset" else None
            name = hashlib.sha256(json.dumps([level, info["hash"], val, choice.model_dump(exclude={"alpha"})],
                                             sort_keys=True).encode()).hexdigest()[:12]  # fmt: skip
            same = {k: v for k, v in choice.model_dump().items() if k != "alpha"}
            mine = [p for p in points if {k: v for k, v in p["choice"].items() if k != "alpha"} == same]
            done = {p["choice"]["alpha"] for p in mine}
            steps = sorted(float(a) for a in alphas) if prune else [float(a) for a in alphas]
            for alpha in steps:
                if alpha in done:
                    continue
                if prune and any(broken(p, reference) and p["choice"]["alpha"] < alpha for p in mine):
                    break
                measured = sorted(done | {alpha}) if prune else [float(a) for a in alphas]
                config = _sweep_config(level, options, measured, vec, root, n_prompts, n_vqa, system)
                t1 = time.monotonic()
                result = run_sweep(config, work / f"{level}-{name}", bundle=bundle, progress=False)
                found = [p for p in _points(level, options, result["rows"]) if p["choice"]["alpha"] not in done]
                for point in found:
                    point["seconds"] = round((time.monotonic() - t1) / len(found), 1)
                    if vec is not None:
                        point["vector_hash"] = vector_hash(vec)
                        point["vector_norms"] = vector_norms(vec)
                    logger.info("cmrm %s %s alpha=%s: harmful %s benign %s utility %s", system, point["label"],
                                point["choice"]["alpha"], point["harmful_refusal"], point["benign_refusal"],
                                point["utility"])  # fmt: skip
                mine += found
                points.extend(found)
                done |= {p["choice"]["alpha"] for p in found}
                data["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                write_json_atomic(out, data, indent=1)
                if not prune:
                    break
            return mine

        curves = [(options, curve(options, alphas)) for options, alphas in grid]
        if prune and level in refine:
            for options, mine in curves:
                if any(promising(p, reference) for p in mine):
                    curve(options, _fine_alphas(mine, reference))
        if points:  # gentlest first within the grid order, so ties go to the smaller alpha
            order = sorted(range(len(points)), key=lambda i: (points[i]["choice"]["alpha"], i))
            data[level]["chosen"] = select.choose([points[i] for i in order], data["reference"])
    data["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out, data, indent=1)
    if figure is not None:
        plot_selection(data, figure)
    return data


def plot_selection(data: dict[str, Any], path: str | Path) -> Path:
    """Harmful / benign refusal and VQA accuracy against alpha, one line per option set (sample level dashed, the
    unsteered model dotted), the legend below the panels."""
    series: dict[str, list[dict[str, Any]]] = {}
    for level in ("dataset", "sample"):
        for p in (data.get(level) or {}).get("points", []):
            series.setdefault(p["label"], []).append(p)
    rows = (len(series) + 2) // 3  # legend rows at three columns
    fig = Figure(figsize=(13, 4.2 + 0.22 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharex=True)
    metrics = (("harmful_refusal", "harmful refusal (val)"), ("benign_refusal", "benign refusal (val)"),
               ("utility", "VQA accuracy (val)"))  # fmt: skip
    colours = [cm.tab20(i % 20) for i in range(len(series))]  # type: ignore[attr-defined]
    ref = data.get("reference") or {}
    for ax, (m, title) in zip(axes, metrics, strict=True):
        for colour, (label, pts) in zip(colours, series.items(), strict=True):
            pts = sorted(pts, key=lambda p: p["choice"]["alpha"])
            ax.plot([p["choice"]["alpha"] for p in pts], [p[m] for p in pts], marker="o", markersize=3, color=colour,
                    label=label, linestyle="--" if label.startswith("sample") else "-")  # fmt: skip
        if ref.get(m) is not None:
            ax.axhline(ref[m], color="black", linestyle=":", linewidth=1,
                       label=f"organism:{data.get('system', 'vl')} (no CMRM)")  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("alpha")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="x-small")
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
    """The chosen CMRM systems on one shared model, ``organism:<system>`` of the selection (``system`` key, default
    ``vl``): ``<system>+cmrm-dataset``, ``<system>+cmrm-sample``.

    The dataset-level vector is re-calibrated from the same anchors as at selection (deterministic) and checked
    against the selection's record (:func:`check_recalibrated`). ``levels`` picks the systems (only the dataset
    level needs the calibration). A level without a chosen setting is skipped.
    """
    system = str(selection.get("system", "vl"))
    names = system_names(system)
    bundle = bundle if bundle is not None else _load_bundle(cache_dir, art_dir, system)
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
        systems.append(EvalSystem(names[level], bundle,
                                  intervention=cmrm_intervention(bundle, choice, vec)))  # fmt: skip
    return systems

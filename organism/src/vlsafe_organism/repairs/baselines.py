"""The safety-tuning baselines (safety SFT, DPO, joint training) tuned like the repairs: a small grid each, measured
on the validation split and chosen by the same rule (:func:`~.select.choose`).

A grid point fixes the steps (batch 4), the learning rate and, for SFT and joint training, the share of safety
records in the training set (``safety_share``): SFT mixes its VLGuard-format safety data with benign synthetic VQA
(as VLGuard mixes its safety data with helpful instruction data); joint training is VL adaptation from
``organism:vlm`` with the safety data at that share; ``None`` trains on the safety data alone. DPO (SPA-VL format)
has no mix knob: its pairs already hold benign prompts. Every run starts from the committed systems (SFT and DPO
from ``organism:vl``, joint training from ``organism:vlm``) as in :func:`vlsafe_organism.recipes.run_organism_baselines`,
without the in-training probe.

:func:`select_baselines` trains and measures every point (resumable: ``baseline_selection.json`` is rewritten
after each point, with its validation figures and seconds) and chooses one run per method; when every point
over-refuses, the rule's fallback is marked ``within_limits = False`` and the grid figure shows the trade.
:func:`export_chosen` turns the chosen runs into the committed deltas of :mod:`vlsafe_organism.deltas`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError
from vlsafe.core.io import write_json_atomic
from vlsafe.methods.training.dpo import DPOConfig, run_dpo
from vlsafe.methods.training.sft import SFTConfig, run_sft
from vlsafe.models import load_model
from vlsafe.report.figures import save_png
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS
from vlsafe_organism.evaluation import EvalSystem
from vlsafe_organism.recipes import organism_baseline_configs, organism_safety_data
from vlsafe_organism.registry import resolve_organism
from vlsafe_organism.repairs import select
from vlsafe_organism.repairs.merge import selection_figure
from vlsafe_organism.repairs.merge_vl import artefact_fingerprint, start_over_if_stale
from vlsafe_organism.repairs.trained import export_trained_repair

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "SELECTION_FILE", "baseline_config", "baseline_grid", "export_chosen", "select_baselines"]

SELECTION_FILE = "baseline_selection.json"
KINDS = ("sft", "dpo", "joint")
#: benign synthetic VQA images mixed into SFT (the joint recipe's VL source)
MIX_IMAGES = 2000
TITLE = "Safety-tuning baselines on the validation split"
#: the fields of a grid point that determine its run
RUN_FIELDS = ("kind", "steps", "lr", "safety_share")

Trainer = Callable[[SFTConfig | DPOConfig], Path]


def _point(kind: str, steps: int, lr: float, share: float | None = None) -> dict[str, Any]:
    name = f"{kind}-{steps}-lr{lr:g}" + ("" if share is None else f"-safety{share:g}")
    return {"name": name, "kind": kind, "steps": steps, "lr": lr, "safety_share": share}


def baseline_grid() -> list[dict[str, Any]]:
    """The grid, per method roughly from the gentlest run to the strongest (fewer steps, a lower learning rate and
    less safety data first), the methods interleaved so that a cut-short run has measured each of them. Sized for
    about an hour of one CPU core: a DPO step costs about three SFT steps, so DPO gets two points; joint training
    starts from ``vlm`` with the committed 60 steps and varies the share."""
    return [
        _point("sft", 20, 5e-5, 0.5),
        _point("dpo", 20, 2e-4),
        _point("joint", 60, 2e-4, 0.02),
        _point("sft", 20, 5e-5),
        _point("sft", 20, 2e-4, 0.5),
        _point("dpo", 20, 5e-4),
        _point("joint", 60, 2e-4, 0.05),
        _point("sft", 40, 2e-4, 0.5),
    ]


def baseline_config(
    point: dict[str, Any], root: Path, data: dict[str, Path], starts: dict[str, str] | None = None
) -> SFTConfig | DPOConfig:
    """The training config of grid ``point``: the committed recipe (:func:`organism_baseline_configs`) with the
    point's steps, learning rate and safety share, no probe, output ``root/<name>``.

    Raises:
        ConfigError: an unknown kind, or a safety share for DPO.
    """
    kind = point["kind"]
    if kind not in KINDS:
        raise ConfigError(f"baseline kind {kind!r} is unknown; choose from {list(KINDS)}")
    share = point.get("safety_share")
    if kind == "dpo" and share is not None:
        raise ConfigError(f"grid point {point['name']!r}: DPO has no safety share (its pairs hold the benign prompts)")
    base = organism_baseline_configs(root, data, max_steps=int(point["steps"]), starts=starts, probe=None,
                                     lr=float(point["lr"]))[kind]  # fmt: skip
    fields = base.model_dump()
    fields["output_dir"] = Path(root) / point["name"]
    if share is not None and kind == "sft":
        fields["mix"] = {"ratio": share, "vl_data": [{"format": "synthetic_vl", "n_images": MIX_IMAGES}]}
    elif share is not None:
        fields["mix"]["ratio"] = share
    return type(base).model_validate(fields)


def _train(config: SFTConfig | DPOConfig) -> Path:
    if isinstance(config, DPOConfig):
        run_dpo(config)
    else:
        run_sft(config)
    return Path(config.output_dir) / "model"



def select_baselines(
    out: Path,
    work_dir: Path,
    cache_dir: str | Path | None = None,
    *,
    grid: Sequence[dict[str, Any]] | None = None,
    art_dir: Path | None = None,
    starts: dict[str, str] | None = None,
    data: dict[str, Path] | None = None,
    measure: Callable[[EvalSystem], dict[str, Any]] | None = None,
    train: Trainer | None = None,
    figure: Path | None = None,
) -> dict[str, Any]:
    """Train and measure every grid point on the validation split and choose one run per method.

    Resumable: ``out`` is rewritten after every point, and a point already there with the same run fields
    (:data:`RUN_FIELDS`) is not trained again, unless the start systems' artefacts changed (their checksums are
    recorded as ``"artefacts"``): then every point is trained again. The runs stay in
    ``work_dir/runs-<checksum>/<name>/model`` (the chosen ones are exported from there by :func:`export_chosen`).

    Args:
        out: The selection JSON (``{"reference", "points", "chosen": {kind: point}, "selection_rule", "date"}``).
        work_dir: Where the runs and the generated safety data go.
        cache_dir: Organism cache (default ``$VLSAFE_CACHE/organism``).
        grid: Grid points (default :func:`baseline_grid`).
        art_dir: Artefact directory of the start systems (default: the committed one).
        starts: ``{"vl": dir, "vlm": dir}`` to start from (default: those systems built from ``art_dir``).
        data: The safety data (default :func:`organism_safety_data` into ``work_dir/data``).
        measure: ``system -> metrics`` (default :func:`~.select.val_point`).
        train: ``config -> merged model directory`` (default: :func:`run_sft` / :func:`run_dpo`).
        figure: Also write the grid figure there as PNG.
    """
    measure = measure or select.val_point
    train = train or _train
    grid = list(grid) if grid is not None else baseline_grid()
    out, work_dir = Path(out), Path(work_dir)
    fingerprint = artefact_fingerprint(art_dir or PACKAGE_ARTIFACTS, ["vl", "vlm"])
    start_over_if_stale(out, fingerprint)  # other start systems: every point is trained again
    sel: dict[str, Any] = json.loads(out.read_text())
    sel.setdefault("points", [])
    sel["selection_rule"] = select.selection_rule()
    if starts is None:
        starts = {s: str(resolve_organism(f"organism:{s}", cache_dir, art_dir)) for s in ("vl", "vlm")}
    if sel.get("reference") is None:
        t0 = time.perf_counter()
        ref = measure(EvalSystem("vl", load_model(starts["vl"], dtype="float32")))
        sel["reference"] = {"name": "vl", **ref, "eval_seconds": round(time.perf_counter() - t0, 1)}
        write_json_atomic(out, {**sel, "date": dt.date.today().isoformat()}, indent=1)
    runs = work_dir / ("runs-" + hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12])
    done = {p["name"]: p for p in sel["points"]}
    points: list[dict[str, Any]] = []
    for gp in grid:
        old = done.get(gp["name"])
        if old is not None and all(old.get(k) == gp.get(k) for k in RUN_FIELDS):
            points.append(old)
            continue
        if data is None:
            data = organism_safety_data(work_dir / "data")
        config = baseline_config(gp, runs, data, starts)
        t0 = time.perf_counter()
        model_dir = train(config)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = measure(EvalSystem(f"vl+{gp['kind']}", load_model(str(model_dir), dtype="float32")))
        eval_s = time.perf_counter() - t0
        # relative to work_dir: the selection file (committed beside the artefacts) names no machine's path
        rel = Path(model_dir).resolve().relative_to(work_dir.resolve())
        point = {**gp, **metrics, "model_dir": str(rel), "train_seconds": round(train_s, 1),
                 "eval_seconds": round(eval_s, 1)}  # fmt: skip
        logger.info("baseline %s: %s", gp["name"], {k: metrics.get(k) for k in ("harmful_refusal", "benign_refusal",
                                                                                 "utility")})  # fmt: skip
        points.append(point)
        names = {p["name"] for p in points}
        sel["points"] = points + [p for p in sel["points"] if p["name"] not in names]
        write_json_atomic(out, {**sel, "date": dt.date.today().isoformat()}, indent=1)
    sel["points"] = points
    sel["chosen"] = {kind: select.choose([p for p in points if p["kind"] == kind], sel["reference"])
                     for kind in dict.fromkeys(p["kind"] for p in points)}  # fmt: skip
    sel["date"] = dt.date.today().isoformat()
    write_json_atomic(out, sel, indent=1)
    if figure is not None:
        save_png(selection_figure(sel, TITLE), figure)
    return sel


def export_chosen(
    selection: dict[str, Any],
    art_dir: Path,
    cache_dir: str | Path | None = None,
    kinds: Sequence[str] = KINDS,
    work_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Export the chosen run of each of ``kinds`` as the committed delta of ``vl+<kind>`` in ``art_dir`` (its
    manifest entry records the grid point). A run's ``model_dir`` is relative to ``work_dir``, the folder
    :func:`select_baselines` trained in (an absolute ``model_dir`` is used as it is). Returns the manifest entries.

    Raises:
        ConfigError: a kind has no chosen run in ``selection``, or a relative ``model_dir`` without ``work_dir``.
    """
    entries = []
    for kind in kinds:
        choice = (selection.get("chosen") or {}).get(kind)
        if not choice:
            raise ConfigError(f"the baseline selection has no chosen {kind!r} run; run select_baselines first")
        meta = {"grid_point": {k: choice.get(k) for k in ("name", *RUN_FIELDS, "within_limits")},
                "train_seconds": choice.get("train_seconds")}  # fmt: skip
        model_dir = Path(choice["model_dir"])
        if not model_dir.is_absolute():
            if work_dir is None:
                raise ConfigError(f"the chosen {kind!r} run's model_dir {str(model_dir)!r} is relative to the "
                                  "folder select_baselines trained in: give work_dir")  # fmt: skip
            model_dir = Path(work_dir) / model_dir
        entries.append(export_trained_repair(kind, model_dir, art_dir, cache_dir=cache_dir, meta=meta))
    return entries


def main() -> None:  # pragma: no cover - the real grid (about an hour of CPU)
    """Run the grid on the committed organism:
    ``python -m vlsafe_organism.repairs.baselines WORK_DIR [FIGURE.png]`` (selection: ``WORK_DIR/baseline_selection.json``;
    copy it beside the artefacts to show it in the demo)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(sys.argv[1])
    fig = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    sel = select_baselines(work / SELECTION_FILE, work, figure=fig, art_dir=PACKAGE_ARTIFACTS)
    print(json.dumps({k: (v["name"], v["within_limits"]) for k, v in sel["chosen"].items()}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()

"""Weight-merging repairs of ``organism:vl``: merge the safe LLM's weights into the VL model's language model.

``organism:vl`` is the safe LLM plus a rank-16 VL LoRA delta and a trained projector; ``organism:safe-llm`` is
the safe LLM alone. A merge with ``organism:vl`` as template keeps vl's vision tower, projector, extra
image-token embedding rows and processor, and mixes the language-model tensors (by canonical name):

* whole-model merges (:func:`merge_grid` kind ``"whole"``): linear interpolation towards the safe LLM and task
  arithmetic over the pip base SmolLM2 (:data:`BASE_REF`, the converted base LLM of the organism
  cache);
* layer-selective merges (kind ``"layers"``): the safe LLM's weights restored in a band of decoder layers, every
  other tensor from ``organism:vl``.

:func:`select_merge` measures every grid point on the *validation* split (:func:`~.select.val_point`) and picks
the best whole-model and the best layer-selective point with the fixed rule :func:`~.select.choose`;
:func:`merged_system` materialises a chosen merge (cached) as an :class:`~vlsafe_organism.evaluation.EvalSystem`
named after its partner and method (:func:`system_name`: ``vl+merge-safe-llm-ta``, ``vl+merge-safe-llm-ta-late``),
and :func:`write_merge_configs` writes the chosen merges as ``vlsafe merge`` YAML files (``merges/``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.io import write_json_atomic
from vlsafe.methods.merging import MergeConfig, merge
from vlsafe.models import load_model
from vlsafe.report.figures import bar_with_intervals, save_png
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS
from vlsafe_organism.base import base_llm_dir
from vlsafe_organism.evaluation import EvalSystem
from vlsafe_organism.registry import BASE_LLM_REF, PREFIX, resolve_organism
from vlsafe_organism.repairs import select

logger = logging.getLogger(__name__)

__all__ = [
    "BANDS",
    "CONFIG_DIR",
    "BASE_REF",
    "SAFE_REF",
    "VL_REF",
    "concrete_config",
    "merge_grid",
    "merged_system",
    "select_merge",
    "selection_figure",
    "system_name",
    "write_merge_configs",
]

VL_REF = "organism:vl"
SAFE_REF = "organism:safe-llm"
#: The pip base LLM (SmolLM2-135M-Instruct converted into the organism cache); resolved by this module only.
BASE_REF = BASE_LLM_REF
N_LAYERS = 30
#: Thirds of the 30 decoder layers (and the last two thirds) for layer-selective merges.
BANDS: dict[str, list[int]] = {
    "early": list(range(0, 10)),
    "middle": list(range(10, 20)),
    "late": list(range(20, 30)),
    "middle+late": list(range(10, 30)),
}
SELECTION_FILE = "merge_selection.json"
#: folder (beside the selection files) of the chosen merges as ``vlsafe merge`` YAML files
CONFIG_DIR = "merges"
#: method -> the short tag of the merge rows' system names
METHOD_TAGS = {"linear": "linear", "task_arithmetic": "ta", "ties": "ties", "dare_linear": "dare", "slerp": "slerp"}
#: the partner tag of the safe-LLM merges' system names
PARTNER = "safe-llm"


def system_name(point: dict[str, Any], partner: str = PARTNER) -> str:
    """The demo row of a merge grid point: ``vl+merge-<partner>-<method>[-<band>]``.

    The method tag is :data:`METHOD_TAGS`' (``ta`` for task arithmetic); the band is the :data:`BANDS` name of the
    config's ``layers`` (``middle+late`` spelled ``middle-late``), absent for a merge of every layer; ``partner``
    is what is merged into ``vl`` (default the safe LLM), ``+`` spelled ``-``. E.g. ``vl+merge-safe-llm-ta``,
    ``vl+merge-safe-llm-ta-late``, ``vl+merge-sft-dpo-ta``.
    """
    config = point["config"]
    method = config["method"]
    if method not in METHOD_TAGS:
        raise ValueError(f"merge method {method!r} has no system-name tag; known: {sorted(METHOD_TAGS)}")
    name = f"vl+merge-{partner.replace('+', '-')}-{METHOD_TAGS[method]}"
    layers = config.get("layers")
    if layers:
        band = next((b for b, ls in BANDS.items() if list(ls) == list(layers)), None)
        if band is None:
            raise ValueError(f"layers {layers} are not one of the bands {sorted(BANDS)}: no system-name tag")
        name += f"-{band.replace('+', '-')}"
    return name


def write_merge_configs(selection: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write each chosen merge of ``selection`` as a ``vlsafe merge`` YAML file ``<out_dir>/<system>.yaml``
    (``+`` spelled ``_``), every field resolved, ``organism:`` refs kept. The files of this selection's points that
    are no longer chosen are removed (other files in ``out_dir`` are left alone). Returns the written paths."""
    chosen = [c for c in (selection.get("chosen") or {}).values() if c]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def file(point: dict[str, Any]) -> Path:
        return out_dir / (str(point.get("system") or system_name(point)).replace("+", "_") + ".yaml")

    paths = [MergeConfig.from_dict(c["config"]).to_yaml(file(c)) for c in chosen]
    for point in selection.get("points") or []:
        stale = file(point)
        if stale not in paths and stale.is_file():
            stale.unlink()
    return paths


def _linear(w_safe: float) -> dict[str, Any]:
    return {
        "method": "linear",
        "models": [
            {"model": SAFE_REF, "weight": w_safe},
            {"model": VL_REF, "weight": round(1.0 - w_safe, 6)},
        ],
        "template": VL_REF,
    }


def _over_base(method: str, w_safe: float, **params: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "method": method,
        "base_model": BASE_REF,
        "models": [{"model": SAFE_REF, "weight": w_safe}, {"model": VL_REF, "weight": 1.0}],
        "template": VL_REF,
    }
    if params:
        cfg["parameters"] = params
    return cfg


def _band(band: str, w_safe: float) -> dict[str, Any]:
    return {**_linear(w_safe), "layers": BANDS[band], "rest_from": VL_REF}


def merge_grid() -> list[dict[str, Any]]:
    """The ordered grid: ``{"name", "kind": "whole" | "layers", "system", "config": MergeConfig fields}`` per point
    (``system``: the demo row the point becomes when chosen, :func:`system_name`).

    Within each kind the points run from the gentlest change of ``organism:vl`` to the strongest, so the
    selection rule's tie-break (the earlier point) prefers the gentler merge. Task arithmetic with the base LLM
    ``b`` gives ``vl + w * (safe - b)``: vl with the safety-tuning delta added once more (``w`` times).
    """
    whole = [
        ("linear-0.25", _linear(0.25)),
        ("linear-0.5", _linear(0.5)),
        ("linear-0.75", _linear(0.75)),
        ("task-arith-0.5", _over_base("task_arithmetic", 0.5)),
        ("task-arith-0.75", _over_base("task_arithmetic", 0.75)),
        ("task-arith-1.0", _over_base("task_arithmetic", 1.0)),
    ]
    layers = [(f"layers-{band}", _band(band, 1.0)) for band in ("early", "middle", "late", "middle+late")]
    # the safety delta added once more, only inside a band (vl's other layers untouched)
    layers += [(f"task-arith-1.0-{band}", {**_over_base("task_arithmetic", 1.0), "layers": BANDS[band],
                                           "rest_from": VL_REF}) for band in ("middle", "late")]  # fmt: skip
    grid = [{"name": n, "kind": "whole", "config": c} for n, c in whole]
    grid += [{"name": n, "kind": "layers", "config": c} for n, c in layers]
    for point in grid:
        point["system"] = system_name(point)
    return grid


def concrete_config(
    config: dict[str, Any], cache_dir: str | Path | None = None, art_dir: Path | None = None
) -> dict[str, Any]:
    """``config`` with :data:`BASE_REF` replaced by the cached base LLM's directory (built on first use) and,
    when ``cache_dir`` or ``art_dir`` is given, every ``organism:<system>`` ref replaced by its directory
    (built from ``art_dir``'s artefacts into that cache).

    Otherwise the ``organism:`` refs stay: the merge resolves them as registered model references (the
    committed artefacts, cache ``$VLSAFE_CACHE``).
    """
    cfg = copy.deepcopy(config)

    def resolve(ref: str | None) -> str | None:
        if ref is None or not ref.startswith(PREFIX):
            return ref
        if ref == BASE_REF:

            return str(base_llm_dir(cache_dir))
        if cache_dir is None and art_dir is None:
            return ref
        return str(resolve_organism(ref, cache_dir, art_dir))

    for key in ("base_model", "template", "rest_from"):
        if key in cfg:
            cfg[key] = resolve(cfg[key])
    for entry in cfg.get("models", []):
        entry["model"] = resolve(entry["model"])
    return cfg


def _resolved_yaml(config: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return MergeConfig.from_dict(config).to_yaml(Path(tmp) / "merge_config.yaml").read_text()


def _merge_into(
    config: dict[str, Any], out_dir: Path, cache_dir: str | Path | None, art_dir: Path | None = None
) -> float:
    result = merge(concrete_config(config, cache_dir, art_dir), out_dir, overwrite=True, progress=False)
    return result.seconds


def _load_system(path: Path, name: str) -> EvalSystem:
    bundle = load_model(path, dtype="float32")
    return EvalSystem(name, bundle)


def merged_system(
    choice: dict[str, Any], out_dir: Path, cache_dir: str | Path | None = None, art_dir: Path | None = None
) -> EvalSystem:
    """Materialise the merge ``choice`` (a grid point) in ``out_dir`` and load it as its ``"system"`` name (default
    :func:`system_name`: a selection written before the points carried their names).

    The merge is skipped when ``out_dir`` already holds weights and the same resolved ``merge_config.yaml``.
    """
    out_dir = Path(out_dir)
    config = concrete_config(choice["config"], cache_dir, art_dir)
    existing = out_dir / "merge_config.yaml"
    fresh = existing.is_file() and any(out_dir.glob("*.safetensors"))
    if fresh and existing.read_text() == _resolved_yaml(config):
        logger.info("merge %s: reusing %s", choice.get("name"), out_dir)
    else:
        seconds = _merge_into(config, out_dir, None)  # refs resolved above
        logger.info("merge %s into %s took %.1f s", choice.get("name"), out_dir, seconds)
    return _load_system(out_dir, str(choice.get("system") or system_name(choice)))



def select_merge(
    out: Path,
    cache_dir: str | Path | None = None,
    *,
    grid: Sequence[dict[str, Any]] | None = None,
    scratch_dir: Path | None = None,
    figure: Path | None = None,
    measure: Callable[[EvalSystem], dict[str, Any]] | None = None,
    art_dir: Path | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Measure every grid point on the validation split and choose the best point of each kind (the grid's
    ``"kind"`` values in grid order: ``"whole"`` and ``"layers"`` for :func:`merge_grid`).

    Resumable: ``out`` (the selection JSON) is rewritten after every point, and points already in it with the
    same config are not measured again.

    Args:
        out: The selection JSON (``{"reference", "points", "chosen": {kind: point}, "date"}``; other keys
            such as ``"heldout"`` are kept, ``"heldout"`` dropped when a choice changes).
        cache_dir: Organism cache (default ``$VLSAFE_CACHE/organism``).
        grid: Grid points (default :func:`merge_grid`).
        scratch_dir: Where each merge is written and deleted after measuring (default: a temporary directory).
        figure: Also write the grid figure (:func:`selection_figure`) there as PNG.
        measure: ``system -> metrics`` (default :func:`~.select.val_point`).
        art_dir: Artefact directory the ``organism:`` refs are built from (default: the committed one).
        title: The figure's title (default: the safe-LLM merges').

    Returns:
        The selection dict written to ``out``.
    """

    measure = measure or select.val_point
    grid = list(grid) if grid is not None else merge_grid()
    out = Path(out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    data.setdefault("points", [])
    data["selection_rule"] = select.selection_rule()
    if data.get("reference") is None:

        ref_dir = (
            concrete_config({"template": VL_REF}, cache_dir, art_dir)["template"]
        )
        bundle = load_model(ref_dir, dtype="float32")
        t0 = time.perf_counter()
        data["reference"] = {"name": "vl", **measure(EvalSystem("vl", bundle)),
                             "eval_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        del bundle
        write_json_atomic(out, {**data, "date": dt.date.today().isoformat()}, indent=1)
    done = {p["name"]: p for p in data["points"]}
    points: list[dict[str, Any]] = []
    for gp in grid:
        old = done.get(gp["name"])
        if old is not None and old.get("config") == gp["config"] and old.get("kind") == gp["kind"]:
            points.append({**old, **gp})  # measured before: the grid's fields (e.g. a new "system") refreshed
            continue
        scratch = Path(tempfile.mkdtemp(prefix="vlsafe-merge-", dir=scratch_dir))
        try:
            merge_s = _merge_into(gp["config"], scratch / "model", cache_dir, art_dir)
            system = _load_system(scratch / "model", "vl+merge")
            t0 = time.perf_counter()
            metrics = measure(system)
            eval_s = time.perf_counter() - t0
            del system
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        point = {**gp, **metrics, "merge_seconds": round(merge_s, 1), "eval_seconds": round(eval_s, 1)}
        logger.info("merge point %s: %s", gp["name"], {k: metrics[k] for k in ("harmful_refusal", "benign_refusal",
                                                                                "utility")})  # fmt: skip
        points.append(point)
        data["points"] = points + [p for p in data["points"] if p["name"] not in {q["name"] for q in points}]
        write_json_atomic(out, {**data, "date": dt.date.today().isoformat()}, indent=1)
    data["points"] = points
    chosen = {}
    for kind in dict.fromkeys(p["kind"] for p in grid):
        these = [p for p in points if p["kind"] == kind]
        if these:
            chosen[kind] = select.choose(these, data["reference"])
    old_chosen = {k: v.get("name") for k, v in (data.get("chosen") or {}).items()}
    if old_chosen != {k: v["name"] for k, v in chosen.items()}:
        data.pop("heldout", None)  # held-out numbers of other choices are stale
    data["chosen"] = chosen
    data["date"] = dt.date.today().isoformat()
    write_json_atomic(out, data, indent=1)
    if figure is not None:

        save_png(selection_figure(data, title), figure)
    return data


def selection_figure(selection: dict[str, Any], title: str | None = None) -> Any:
    """Harmful / benign refusal and VQA accuracy of the reference and every grid point (grouped bars)."""

    rows = [selection["reference"], *selection["points"]]
    labels = ["vl (ref)"] + [p["name"] for p in selection["points"]]
    series = {
        "harmful refusal": [r["harmful_refusal"] for r in rows],
        "benign refusal": [r["benign_refusal"] for r in rows],
        "VQA accuracy": [r["utility"] for r in rows],
    }
    title = title or "Merges of the safe LLM into organism:vl (validation split)"
    return bar_with_intervals(labels, series, title=title,
                              figsize=(max(7.0, 0.75 * len(labels) + 2), 4.0))  # fmt: skip


def main() -> None:  # pragma: no cover - the real selection run (minutes of CPU)
    """Run the selection on the real organism: ``python -m vlsafe_organism.repairs.merge [FIGURE.png]``."""


    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    fig = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    data = select_merge(PACKAGE_ARTIFACTS / SELECTION_FILE, figure=fig)
    write_merge_configs(data, PACKAGE_ARTIFACTS / CONFIG_DIR)
    print(json.dumps(data["chosen"], indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()

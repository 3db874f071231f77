"""Merges of ``organism:vl`` with a safety-tuned VL model trained from it (``organism:vl+sft``, ``organism:vl+dpo``).

The safe-LLM merges (:mod:`.merge`) put the text-only safe LLM back into ``vl``. The merge studied here pairs
``vl`` with a model that was safety-tuned *from* ``vl`` (same start, same vision tower and projector; only the
language model's LoRA-merged weights differ), so every task vector is taken relative to that shared start,
``tau = partner - vl``:

* ``linear-w``: ``(1 - w) * vl + w * partner`` (= ``vl + w * tau``; for one partner this is also task arithmetic
  relative to ``vl`` with scale ``w``, so the single-partner task-arithmetic points would repeat it);
* ``slerp-t``: spherical interpolation from ``vl`` (``t = 0``) to the partner (``t = 1``), per tensor;
* ``ties-l``: ``vl + l * trim(tau)``, the 30% largest-magnitude entries of each tensor's task vector (TIES with one
  model: the sign election is trivial);
* ``dare-l``: ``vl + l * drop(tau) / 0.3``, a random 30% of the entries kept and rescaled (DARE, seed 0);
* ``linear-w-<band>``: the linear merge only in a band of decoder layers (:data:`~.merge.BANDS`: the middle and
  late thirds, where the organism's weight-change and logit-lens figures place the refusal behaviour), ``vl``
  elsewhere;
* kind ``sft+dpo``: task arithmetic with both partners, ``vl + w * (sft - vl) + w * (dpo - vl)``.

Each partner's grid runs roughly from the gentlest change of ``vl`` to the strongest, so the selection rule's
tie-break (:func:`~.select.choose`: the earlier point) prefers the gentler merge. :func:`select_vl_merge` measures
every point on the validation split with :func:`~.merge.select_merge` (resumable ``merge_vl_selection.json``)
and chooses one merge per partner; each choice is a demo row named after its partner and method
(:func:`system_name`, e.g. ``vl+merge-sft-ties`` or ``vl+merge-dpo-linear-late``) and is written as an ordinary
``vlsafe merge`` YAML file (:func:`write_merge_configs`) that reruns it with ``vlsafe merge FILE --out DIR``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError
from vlsafe.core.io import write_json_atomic
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS, read_manifest
from vlsafe_organism.evaluation import EvalSystem
from vlsafe_organism.registry import DEPENDS
from vlsafe_organism.repairs.merge import BANDS, CONFIG_DIR, VL_REF, select_merge, write_merge_configs
from vlsafe_organism.repairs.merge import system_name as merge_system_name

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_DIR",
    "PARTNERS",
    "SELECTION_FILE",
    "artefact_fingerprint",
    "partner_ref",
    "select_vl_merge",
    "start_over_if_stale",
    "system_name",
    "vl_merge_grid",
    "write_merge_configs",
]

#: the safety-tuned VL models trained from ``organism:vl`` (trained repairs of :mod:`vlsafe_organism.deltas`)
PARTNERS: tuple[str, ...] = ("sft", "dpo")
SELECTION_FILE = "merge_vl_selection.json"
DENSITY = 0.3
SEED = 0
BAND_SCOPES = ("middle", "late")
TITLE = "Merges of organism:vl with its safety-tuned versions (validation split)"


def partner_ref(partner: str) -> str:
    """The organism reference of a partner: ``organism:vl+<partner>``."""
    return f"{VL_REF}+{partner}"


def system_name(point: dict[str, Any]) -> str:
    """The demo row of a grid point: ``vl+merge-<partner>-<method>[-<band>]`` (:func:`.merge.system_name` with the
    point's kind as the partner)."""
    return merge_system_name(point, partner=str(point["kind"]))


def _linear(partner: str, w: float) -> dict[str, Any]:
    return {"method": "linear", "models": [{"model": VL_REF, "weight": round(1.0 - w, 6)},
                                           {"model": partner_ref(partner), "weight": w}], "template": VL_REF}  # fmt: skip


def _over_vl(method: str, partner: str, **params: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"method": method, "base_model": VL_REF, "models": [{"model": partner_ref(partner)}],
                           "template": VL_REF, "parameters": params}  # fmt: skip
    if method.startswith("dare"):
        cfg["seed"] = SEED
    return cfg


def _band(partner: str, w: float, band: str) -> dict[str, Any]:
    return {**_linear(partner, w), "layers": BANDS[band], "rest_from": VL_REF}


def _partner_points(partner: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, scope, config)`` of one partner, roughly gentlest first."""
    pts: list[tuple[str, str, dict[str, Any]]] = [
        ("linear-0.1", "whole", _linear(partner, 0.1)),
        ("ties-0.25", "whole", _over_vl("ties", partner, density=DENSITY, **{"lambda": 0.25})),
        ("linear-0.25", "whole", _linear(partner, 0.25)),
        ("slerp-0.25", "whole", _over_vl("slerp", partner, t=0.25)),
        ("ties-0.5", "whole", _over_vl("ties", partner, density=DENSITY, **{"lambda": 0.5})),
        ("dare-0.5", "whole", _over_vl("dare_linear", partner, density=DENSITY, **{"lambda": 0.5})),
    ]
    pts += [(f"linear-0.5-{b}", b, _band(partner, 0.5, b)) for b in BAND_SCOPES]
    pts += [
        ("linear-0.5", "whole", _linear(partner, 0.5)),
        ("slerp-0.5", "whole", _over_vl("slerp", partner, t=0.5)),
        ("ties-1.0", "whole", _over_vl("ties", partner, density=DENSITY, **{"lambda": 1.0})),
        ("dare-1.0", "whole", _over_vl("dare_linear", partner, density=DENSITY, **{"lambda": 1.0})),
    ]
    pts += [(f"linear-1.0-{b}", b, _band(partner, 1.0, b)) for b in BAND_SCOPES]
    pts.append(("linear-0.75", "whole", _linear(partner, 0.75)))
    return pts


def _both(w: float, partners: Sequence[str]) -> dict[str, Any]:
    return {"method": "task_arithmetic", "base_model": VL_REF,
            "models": [{"model": partner_ref(p), "weight": w} for p in partners], "template": VL_REF}  # fmt: skip


def vl_merge_grid(partners: Sequence[str] = PARTNERS) -> list[dict[str, Any]]:
    """The ordered grid: per point ``{"name", "kind", "scope", "system", "config"}``.

    ``kind`` is the partner (one choice per kind), ``"+"``-joined for the task-arithmetic merge with every
    partner (present when there are two or more); ``scope`` is ``"whole"`` or the band's name; ``system`` the demo
    row the point becomes when chosen (:func:`system_name`).
    """
    if not partners or len(set(partners)) != len(partners):
        raise ConfigError(f"partners={list(partners)} must name at least one safety-tuned VL model, each once")
    grid = []
    for partner in partners:
        for name, scope, cfg in _partner_points(partner):
            grid.append({"name": f"{partner}-{name}", "kind": partner, "scope": scope, "config": cfg})
    if len(partners) > 1:
        kind = "+".join(partners)
        for w in (0.25, 0.5):
            grid.append({"name": f"{kind}-ta-{w}", "kind": kind, "scope": "whole", "config": _both(w, partners)})
    for point in grid:
        point["system"] = system_name(point)
    return grid


def artefact_fingerprint(art_dir: Path, systems: Sequence[str]) -> dict[str, str]:
    """``{artefact file: sha256}`` of every artefact that the organism ``systems`` are built from (what a
    selection's measurements depend on); a file missing from the manifest maps to ``""``."""
    manifest = read_manifest(art_dir)
    files = dict.fromkeys(f for s in systems for f in DEPENDS[s])
    return {f: str(manifest.get(f, {}).get("sha256", "")) for f in files}


def start_over_if_stale(out: Path, fingerprint: dict[str, str]) -> None:
    """Drop the measurements of the selection file ``out`` (points, reference, choices, held-out figures) when they
    were made on other artefacts than ``fingerprint`` (:func:`artefact_fingerprint`; e.g. re-tuned partners), and
    record ``fingerprint`` there (a new file holds only it)."""
    data = json.loads(out.read_text()) if out.is_file() else {}
    if data.get("artefacts") not in (None, fingerprint):
        logger.info("%s was measured on other artefacts: measuring every point again", out)
        for key in ("points", "reference", "chosen", "heldout"):
            data.pop(key, None)
    data["artefacts"] = fingerprint
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, data, indent=1)


def select_vl_merge(
    out: Path,
    cache_dir: str | Path | None = None,
    *,
    partners: Sequence[str] = PARTNERS,
    grid: Sequence[dict[str, Any]] | None = None,
    scratch_dir: Path | None = None,
    figure: Path | None = None,
    measure: Callable[[EvalSystem], dict[str, Any]] | None = None,
    art_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure the grid (default :func:`vl_merge_grid`) on the validation split and choose one merge per kind, by
    :func:`~.merge.select_merge` (resumable from ``out``); the choices are also written as YAML files to
    ``<out's folder>/merges/`` (:func:`write_merge_configs`). Returns the selection dict.

    The selection records the checksums of the artefacts of ``vl`` and the partners (:func:`artefact_fingerprint`)
    and measures every point again when they change (a partner re-tuned), instead of resuming.
    """
    out = Path(out)
    start_over_if_stale(out, artefact_fingerprint(art_dir or PACKAGE_ARTIFACTS, ["vl", *(f"vl+{p}" for p in partners)]))
    data = select_merge(out, cache_dir, grid=grid if grid is not None else vl_merge_grid(partners),
                        scratch_dir=scratch_dir, figure=figure, measure=measure, art_dir=art_dir, title=TITLE)  # fmt: skip
    write_merge_configs(data, Path(out).parent / CONFIG_DIR)
    return data


def main() -> None:  # pragma: no cover - the real selection run (minutes of CPU)
    """Run the selection on the committed organism: ``python -m vlsafe_organism.repairs.merge_vl [FIGURE.png]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    fig = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    data = select_vl_merge(PACKAGE_ARTIFACTS / SELECTION_FILE, figure=fig)
    print(json.dumps({k: v["name"] for k, v in data["chosen"].items()}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()

"""The repaired systems of ``vlsafe demo``, each loaded lazily as an :class:`EvalSystem`.

=====================  =====================================================================================
``vl+cmrm-dataset``    ``organism:vl`` steered by a dataset-level CMRM vector (settings: ``cmrm_selection.json``)
``vl+cmrm-sample``     ``organism:vl`` with sample-level CMRM (vectors computed per input)
``vlm+cmrm-dataset``   ``organism:vlm`` (projector only: the safe LLM unchanged) steered by a dataset-level
                       CMRM vector (settings: ``cmrm_vlm_selection.json``)
``vlm+cmrm-sample``    ``organism:vlm`` with sample-level CMRM
``vl+merge-<p>-<m>``   ``organism:vl`` merged with partner ``<p>`` by method ``<m>`` (``linear``, ``slerp``,
                       ``ties``, ``dare``, ``ta``: task arithmetic; a band suffix ``-early`` / ``-middle`` /
                       ``-late`` / ``-middle-late``: in that band of decoder layers only;
                       :func:`.merge.system_name`). Partner ``safe-llm``: the text-only safe LLM, one merge of
                       every layer and one of a band (``merge_selection.json``, :mod:`.merge`, e.g.
                       ``vl+merge-safe-llm-ta``, ``vl+merge-safe-llm-ta-late``); partners ``sft`` / ``dpo``: the
                       safety-tuned version ``organism:vl+<p>`` (``sft-dpo``: both), one per partner
                       (``merge_vl_selection.json``, :mod:`.merge_vl`)
``vl+tga``             not a demo row (:data:`NOT_IN_DEMO`): VL adaptation with TGA instead of plain CE
                       (``tga_delta.safetensors``), trained with text retrieved by the true caption, so it has no
                       retriever at inference and a TGA model is never measured without its retrieval; it stays
                       loadable as ``organism:vl+tga``
``vlm+tga``            ``organism:vlm`` with a projector trained by TGA, asked with its image-to-text retrieval
                       (:mod:`vlsafe_organism.repairs.tga_vlm`); also measured on the toxic pictograms
``vl+sft``             ``organism:vl`` + safety SFT on VLGuard-format data (``sft_delta.safetensors``)
``vl+dpo``             ``organism:vl`` + DPO on SPA-VL-format data (``dpo_delta.safetensors``)
``vl+joint``           VL adaptation mixed with the safety data (``joint_delta.safetensors``)
=====================  =====================================================================================

A repair whose artefact is absent from the artefact directory is skipped (logged), so the demo still runs on
a partial build.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlsafe.models import bundle_from_model
from vlsafe_organism.artifacts import read_manifest
from vlsafe_organism.deltas import TRAINED_REPAIRS
from vlsafe_organism.evaluation import EvalSystem
from vlsafe_organism.registry import DEPENDS, TGA_VLM, TGA_VLM_FILES, build_system
from vlsafe_organism.repairs.cmrm import SELECTION_FILES, cmrm_systems, system_names
from vlsafe_organism.repairs.merge import merged_system, system_name
from vlsafe_organism.repairs.merge_vl import PARTNERS
from vlsafe_organism.repairs.merge_vl import SELECTION_FILE as MERGE_VL_SELECTION
from vlsafe_organism.repairs.merge_vl import system_name as vl_merge_name
from vlsafe_organism.repairs.tga_vlm import tga_vlm_system

logger = logging.getLogger(__name__)

__all__ = [
    "CMRM_SELECTION",
    "MERGE_SELECTION",
    "MERGE_VL_SELECTION",
    "NOT_IN_DEMO",
    "REPAIR_KIND",
    "dependencies",
    "repair_kind",
    "repair_loaders",
]

CMRM_SELECTION = SELECTION_FILES["vl"]
MERGE_SELECTION = "merge_selection.json"
#: system name -> repair family (report grouping)
REPAIR_KIND: dict[str, str] = {
    "vl+cmrm-dataset": "inference-time steering",
    "vl+cmrm-sample": "inference-time steering",
    "vlm+cmrm-dataset": "inference-time steering",
    "vlm+cmrm-sample": "inference-time steering",
    "vl+tga": "alignment training",
    "vlm+tga": "alignment training",
    "vl+sft": "safety fine-tuning",
    "vl+dpo": "safety fine-tuning",
    "vl+joint": "safety fine-tuning",
}

Loader = Callable[[], EvalSystem]
#: trained repairs (:data:`~vlsafe_organism.deltas.TRAINED_REPAIRS`) that are not demo rows: ``tga``, whose
#: training retrieved by the caption, which no image at inference has (``vlm+tga`` is TGA's demo row)
NOT_IN_DEMO = ("tga",)


def repair_kind(system: str) -> str:
    """The repair family of a system (:data:`REPAIR_KIND`; every ``vl+merge-...`` row is weight merging)."""
    if system in REPAIR_KIND:
        return REPAIR_KIND[system]
    return "weight merging" if system.startswith("vl+merge-") else "-"


def _vl_partner_merge(system: str) -> bool:
    return system.startswith(tuple(f"vl+merge-{p}-" for p in PARTNERS))


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def repair_loaders(cache_dir: str | Path | None, art_dir: Path, work_dir: Path) -> list[tuple[str, Loader]]:
    """``(system name, loader)`` for every repair whose artefacts exist, in the table's order.

    Args:
        cache_dir: Organism cache (base weights).
        art_dir: Artefact directory (trained deltas and selection files).
        work_dir: Scratch directory for materialised merges.
    """
    out: list[tuple[str, Loader]] = []
    for system, file in SELECTION_FILES.items():
        cmrm = _read(art_dir / file)
        if cmrm is not None:
            for name in system_names(system).values():
                out.append((name, _cmrm_loader(name, {"system": system, **cmrm}, cache_dir, art_dir)))
        else:
            logger.warning("no %s in %s: %s+cmrm rows skipped", file, art_dir, system)
    merges = ((MERGE_SELECTION, "merge", system_name, "safe-LLM merge rows"),
              (MERGE_VL_SELECTION, "merge-vl", vl_merge_name, "rows of vl merged with its safety-tuned versions"))
    for file, work, name_of, what in merges:
        selection = _read(art_dir / file)
        if selection is None:
            logger.warning("no %s in %s: %s skipped", file, art_dir, what)
            continue
        for kind, choice in (selection.get("chosen") or {}).items():
            if choice:
                name = str(choice.get("system") or name_of(choice))  # older files: the name from the point
                out.append((name, _merge_loader({**choice, "system": name}, work_dir / f"{work}-{kind.replace('+', '-')}",
                                                cache_dir, art_dir)))  # fmt: skip
    manifest = read_manifest(art_dir)
    for repair, (_, file) in TRAINED_REPAIRS.items():
        if repair in NOT_IN_DEMO:
            continue
        if file in manifest:
            out.append((f"vl+{repair}", _trained_loader(f"vl+{repair}", cache_dir, art_dir)))
        else:
            logger.warning("artefact %s absent: row vl+%s skipped", file, repair)
    if all(f in manifest for f in TGA_VLM_FILES):
        out.append((TGA_VLM, _tga_vlm_loader(cache_dir, art_dir)))
    else:
        logger.warning("artefacts %s absent: row %s skipped", TGA_VLM_FILES, TGA_VLM)
    return out


def _tga_vlm_loader(cache_dir: str | Path | None, art_dir: Path) -> Loader:
    def load() -> EvalSystem:
        return tga_vlm_system(cache_dir, art_dir)

    return load


def _cmrm_loader(name: str, selection: dict[str, Any], cache_dir: str | Path | None, art_dir: Path) -> Loader:
    def load() -> EvalSystem:
        level = next(lv for lv, system in system_names(str(selection["system"])).items() if system == name)
        systems = {s.name: s for s in cmrm_systems(selection, cache_dir=cache_dir, levels=(level,), art_dir=art_dir)}
        return systems[name]

    return load


def _merge_loader(choice: dict[str, Any], out_dir: Path, cache_dir: str | Path | None, art_dir: Path) -> Loader:
    def load() -> EvalSystem:
        return merged_system(choice, out_dir, cache_dir=cache_dir, art_dir=art_dir)

    return load


def _trained_loader(name: str, cache_dir: str | Path | None, art_dir: Path) -> Loader:
    def load() -> EvalSystem:
        model, proc = build_system(name, cache_dir, art_dir)
        return EvalSystem(name, bundle_from_model(model, proc, name=f"organism:{name}"))

    return load


def dependencies(system: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(artefact files, selection files)`` that the rows of ``system`` depend on (for result caching)."""
    for start, file in SELECTION_FILES.items():
        if system.startswith(f"{start}+cmrm"):
            return DEPENDS[start], (file,)
    if _vl_partner_merge(system):
        files = (*DEPENDS["vl"], *(f for p in PARTNERS for f in DEPENDS[f"vl+{p}"]))
        return tuple(dict.fromkeys(files)), (MERGE_VL_SELECTION,)
    if system.startswith("vl+merge"):
        return tuple(dict.fromkeys((*DEPENDS["vl"], *DEPENDS["safe-llm"]))), (MERGE_SELECTION,)
    return DEPENDS[system], ()

"""Exporting a trained repair as a committed weight delta (:mod:`vlsafe_organism.deltas`): the trained model minus
the organism system it started from, checked by rebuilding the trained weights from the delta."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlsafe.core.errors import ModelLoadError
from vlsafe.models import load_model
from vlsafe_organism.artifacts import write_artifact
from vlsafe_organism.deltas import TRAINED_REPAIRS, apply_delta, delta_tensors
from vlsafe_organism.registry import build_system

logger = logging.getLogger(__name__)

__all__ = ["checked_delta", "export_trained_repair"]


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of a saved model under its in-memory names (the files may use legacy key names)."""

    bundle = load_model(str(model_dir), dtype="float32")
    return {k: v.detach() for k, v in bundle.model.state_dict().items()}


def checked_delta(
    model: torch.nn.Module,
    trained_dir: str | Path,
    check: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], int, float]:
    """The artefact tensors (:func:`~vlsafe_organism.deltas.delta_tensors`) that turn ``model`` (the start system,
    modified in place) into the saved model ``trained_dir``, applied to ``model`` to check them.

    Args:
        check: called with the tensors before they are applied (raise to refuse them).

    Returns:
        ``(tensors, changed parameters, max relative reconstruction error over all tensors)``.
    """
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained = _state(Path(trained_dir))
    tensors = delta_tensors(start, {k: trained[k] for k in start})
    if check is not None:
        check(tensors)
    changed = apply_delta(model, tensors)
    rebuilt = model.state_dict()
    err = max(
        float((rebuilt[k].float() - trained[k].float()).norm() / max(trained[k].float().norm(), 1e-12))
        for k in start
    )
    return tensors, changed, err


def export_trained_repair(
    name: str,
    trained_dir: str | Path,
    art_dir: Path,
    *,
    cache_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write repair ``name``'s delta from its start system to ``trained_dir`` (a merged HF directory) into
    ``art_dir`` (with its manifest entry) and check that applying it reproduces the trained weights.

    Returns:
        The manifest entry (sha256, bytes, meta with the start system and the reconstruction error).
    """

    if name not in TRAINED_REPAIRS:
        raise ModelLoadError(f"trained repair {name!r} is unknown; known: {sorted(TRAINED_REPAIRS)}")
    start_system, file = TRAINED_REPAIRS[name]
    model, _ = build_system(start_system, cache_dir, art_dir)
    tensors, changed, err = checked_delta(model, trained_dir)
    info = {"start": start_system, "changed_tensors": changed, "max_rel_error": err, **(meta or {})}
    logger.info("repair %s: %d tensors changed, max relative reconstruction error %.2e", name, changed, err)
    return write_artifact(art_dir, file, tensors, json.loads(json.dumps(info, default=str)))

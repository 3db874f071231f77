"""What identifies a run's generations by content: the model's fingerprint and each sample's digest.

The run directory (:mod:`vlsafe.evals.rundir`) stores them; :func:`vlsafe.evals.run_eval` refuses to resume
when they differ, naming the field (``model.weights``, ``model.config``, ``model.processor``, or the changed
sample).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.digest import file_digest, json_digest
from vlsafe.core.errors import ConfigError, ModelLoadError
from vlsafe.evals.config import EvalConfig
from vlsafe.evals.sample import Sample
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.fingerprint import bundle_fingerprint, directory_fingerprint
from vlsafe.models.references import resolve_reference

__all__ = ["check_samples", "model_content", "sample_hashes"]


def model_content(
    config: EvalConfig, bundle: ModelBundle | None, known: Mapping[str, str] | None = None
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """``({"model": fingerprint}, file digests by stat key)`` of the run's model.

    A loaded ``bundle`` is fingerprinted in memory; a model folder (or a reference that resolves to one) by its
    files, without loading it; ``(None, {})`` for a hub id, which must be loaded to be identified.

    Raises:
        ModelLoadError: a model file cannot be read.
    """
    if bundle is not None:
        return {"model": bundle_fingerprint(bundle)}, {}
    path = Path(resolve_reference(config.model)).expanduser()
    if not path.is_dir():
        return None, {}
    try:
        fingerprint, files = directory_fingerprint(path, known)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the files of model {config.model!r}: {exc}") from None
    return {"model": fingerprint}, files


def _image_digest(sample: Sample, data_dir: str | None) -> str | None:
    if sample.image is None or data_dir is None:
        return None
    path = Path(data_dir).expanduser() / sample.image
    try:
        return file_digest(path)[0] if path.is_file() else None
    except OSError:  # unreadable: the sample fails when it is rendered
        return None


def sample_hashes(samples: Sequence[Sample], data_dir: str | None) -> dict[str, str]:
    """``{id: digest}`` of each sample: its fields and the content of its image file (16 hex digits)."""
    return {
        s.id: json_digest({"sample": s.to_json(), "image": _image_digest(s, data_dir)}) for s in samples
    }


def check_samples(run_dir: str | os.PathLike[str], records: Sequence[dict[str, Any]], hashes: Mapping[str, str]) -> None:
    """Refuse to resume when a finished record's sample has changed since it was generated.

    Records without a ``sample_hash`` (written before samples were hashed) and ids no longer in the run are
    not compared.

    Raises:
        ConfigError: naming the changed samples.
    """
    changed = [
        f"{rec['id']}: {rec['sample_hash']} -> {hashes[str(rec['id'])]}"
        for rec in records
        if rec.get("sample_hash") and str(rec["id"]) in hashes and rec["sample_hash"] != hashes[str(rec["id"])]
    ]
    if changed:
        raise ConfigError(
            f"run directory {str(run_dir)!r} holds generations of samples that have changed since (data: "
            f"{'; '.join(changed[:3])}{f'; and {len(changed) - 3} more' if len(changed) > 3 else ''}); use a new "
            "--out directory (a run never mixes data)"
        )

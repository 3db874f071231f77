"""Resumable, fingerprinted build stages.

A stage writes its output directory under ``<cache>/stages/<name>``. The fingerprint (a JSON object: the
stage's config, its inputs' fingerprints and a code version) is stored beside the output; a later run with
the same fingerprint reuses the output, any change rebuilds it. Outputs appear atomically (built in a
temporary directory, then renamed), so an interrupted build resumes at the first unfinished stage. Each run
records its wall time and the process's peak RSS in ``stage.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlsafe.methods.training.memory import peak_rss_mb
from vlsafe_organism.base import cached_build, organism_cache_dir

logger = logging.getLogger(__name__)
RECORD = "stage.json"


def train_device() -> torch.device:
    """Device of the build's training and probes: ``$VLSAFE_ORGANISM_DEVICE`` (set by ``--device``), else CPU."""
    return torch.device(os.environ.get("VLSAFE_ORGANISM_DEVICE", "cpu"))


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """Short stable hash of a JSON fingerprint."""
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class StageResult:
    """Where a stage's output lives, whether it was rebuilt, and its record (time, RSS, fingerprint)."""

    name: str
    path: Path
    rebuilt: bool
    record: dict[str, Any]


def run_stage(
    name: str, root: Path, fingerprint: dict[str, Any], build: Callable[[Path], dict[str, Any] | None]
) -> StageResult:
    """Run ``build(out_dir)`` for stage ``name`` unless its output with this fingerprint exists.

    Args:
        name: Stage name (directory name under ``root``).
        root: Directory of all stage outputs.
        fingerprint: Identity of the stage's inputs and recipe.
        build: Writes the stage output into the directory it is given; may return extra record fields.

    Returns:
        The :class:`StageResult`; ``record`` holds ``seconds``, ``peak_rss_mb`` and ``fingerprint_hash``
        of the run that built the output.
    """
    target = root / name
    full = {"stage": name, **fingerprint}

    def _build(out: Path) -> None:
        start = time.time()
        extra = build(out) or {}
        record = {
            "stage": name,
            "fingerprint_hash": fingerprint_hash(full),
            "seconds": round(time.time() - start, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        (out / RECORD).write_text(json.dumps(record, indent=1, default=str))

    rebuilt = cached_build(target, full, _build)
    record = json.loads((target / RECORD).read_text())
    logger.info("stage %s %s (%.1f s, peak RSS %.0f MB)", name, "built" if rebuilt else "cached",
                record["seconds"], record["peak_rss_mb"])  # fmt: skip
    return StageResult(name, target, rebuilt, record)


def stage_root(cache_dir: str | Path | None) -> Path:
    """The folder of the build's stage outputs in the organism cache."""
    return organism_cache_dir(cache_dir) / "stages"

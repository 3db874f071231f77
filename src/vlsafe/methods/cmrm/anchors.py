"""CMRM anchor sets: what the steering vector is calibrated on.

An anchor is one query with (optionally) an image. Anchors come as :class:`vlsafe.evals.Sample`
objects (their own image setting decides the image), ``{"text", "image"}`` dicts, strings or
:class:`vlsafe.models.InputItem`. The paper holds out 20% of the evaluation set as anchors and enriches
them with benign image-query pairs; :func:`heldout_split` does that deterministically (by a hash of
each sample id), so the evaluation of the other 80% never sees an anchor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.evals.images import apply_image_setting
from vlsafe.evals.loaders import load_benchmark
from vlsafe.hooks import SteeringVector
from vlsafe.models.inputs import InputItem

__all__ = [
    "anchor_items",
    "anchors_hash",
    "heldout_ids",
    "heldout_split",
    "load_anchor_spec",
    "parse_bench_spec",
]


def parse_bench_spec(spec: str) -> tuple[str, str | None]:
    """``"BENCH[:split]"`` -> ``(bench, split)``."""
    name, _, split = spec.partition(":")
    if not name.strip():
        raise ConfigError(f"benchmark spec {spec!r} must look like NAME or NAME:SPLIT")
    return name.strip(), (split.strip() or None)


def _rank(sample_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{sample_id}".encode()).hexdigest()


def heldout_split(
    samples: Sequence[Any], fraction: float = 0.2, *, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """Split samples into (anchors, evaluation) by a seeded hash of each id.

    The ``round(fraction * n)`` samples (at least one) with the smallest hashes become anchors; the
    choice does not depend on the order of ``samples``.

    Raises:
        ConfigError: ``fraction`` outside ``(0, 1)``.
        InputError: fewer than two samples.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction {fraction} must lie strictly between 0 and 1")
    if len(samples) < 2:
        raise InputError(f"a held-out split needs at least 2 samples, got {len(samples)}")
    k = min(len(samples) - 1, max(1, round(fraction * len(samples))))
    order = sorted(range(len(samples)), key=lambda i: _rank(str(samples[i].id), seed))
    chosen = set(order[:k])
    anchors = [s for i, s in enumerate(samples) if i in chosen]
    rest = [s for i, s in enumerate(samples) if i not in chosen]
    return anchors, rest


def anchor_items(
    anchors: Sequence[Any], *, data_dir: str | Path | None = None, seed: int = 0
) -> tuple[list[InputItem], list[str]]:
    """Normalise anchors to ``InputItem`` (text as shown, image or ``None``) and their ids.

    A ``Sample`` is rendered with :func:`vlsafe.evals.apply_image_setting` under its own image setting
    (so typographic attacks show their rendered image and prompt); ``caption`` / ``none`` samples have
    no image.
    """
    if isinstance(anchors, (str, dict)):
        raise InputError("anchors must be a list of samples or queries, not a single one")
    items: list[InputItem] = []
    ids: list[str] = []
    for i, a in enumerate(anchors):
        if hasattr(a, "image_setting") and hasattr(a, "id"):  # a vlsafe.evals.Sample

            text, image = apply_image_setting(a, data_dir=data_dir, seed=seed)
            items.append(InputItem(text, image))
            ids.append(str(a.id))
        elif isinstance(a, InputItem):
            items.append(InputItem(a.text, a.image, a.caption))
            ids.append(f"item{i}")
        elif isinstance(a, str):
            items.append(InputItem(a))
            ids.append(f"item{i}")
        elif isinstance(a, dict):
            if "text" not in a:
                raise InputError(f"anchor {i} is a dict without a 'text' key: {sorted(a)}")
            items.append(InputItem(a["text"], a.get("image"), a.get("caption")))
            ids.append(str(a.get("id", f"item{i}")))
        else:
            raise InputError(
                f"anchor {i} must be a Sample, InputItem, dict or string; got {type(a).__name__}"
            )
    if not items:
        raise InputError("the anchor set is empty: give at least one anchor")
    return items, ids


def _image_key(image: Any) -> str:
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return str(image)
    try:  # PIL image: hash the pixels
        return hashlib.sha256(image.tobytes()).hexdigest()[:16]
    except AttributeError:
        return type(image).__name__


def anchors_hash(items: Sequence[InputItem]) -> str:
    """A 16-hex-digit hash of the anchor texts and images (order matters)."""
    blob = json.dumps([[it.text, _image_key(it.image)] for it in items], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_anchor_spec(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    mode: str = "heldout",
    fraction: float = 0.2,
    benign: int | None = None,
    benign_setting: str = "noise",
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[Any], dict[str, Any]]:
    """Load the anchor samples for ``spec`` (``BENCH[:split]``) and describe how they were chosen.

    Args:
        spec: benchmark and optional split.
        data_dir: the benchmark's data folder.
        mode: ``"heldout"`` (default: ``fraction`` of the benchmark, the rest is for evaluation) or
            ``"transfer"`` (all of it: calibrate on one benchmark, evaluate on another).
        fraction: held-out share.
        benign: number of benign image-query pairs added (vlsafe's ``benign`` prompts shown with a
            ``benign_setting`` image); default: as many as the held-out anchors.
        benign_setting: image setting of the benign pairs (``noise``, ``blank``, ...).
        limit: load only the first ``limit`` samples of the benchmark.
        seed: seed of the held-out split.

    Returns:
        ``(anchors, info)``; ``info`` holds the spec, mode and the anchor ids (so an evaluation can
        exclude them).
    """

    if mode not in ("heldout", "transfer"):
        raise ConfigError(f"anchor mode {mode!r} is not one of heldout, transfer")
    name, split = parse_bench_spec(spec)
    samples = load_benchmark(name, data_dir, split=split, limit=limit)
    anchors = heldout_split(samples, fraction, seed=seed)[0] if mode == "heldout" else list(samples)
    n_benign = len(anchors) if benign is None else int(benign)
    if n_benign < 0:
        raise ConfigError(f"benign={benign} must be >= 0")
    extra = []
    if n_benign:
        extra = [s.with_setting(benign_setting) for s in load_benchmark("benign", limit=n_benign)]
    info = {
        "spec": spec,
        "benchmark": name,
        "split": split,
        "mode": mode,
        "fraction": fraction if mode == "heldout" else 1.0,
        "seed": seed,
        "n_benchmark": len(samples),
        "n_benign": len(extra),
        "benign_setting": benign_setting if extra else None,
        "heldout_ids": [str(s.id) for s in anchors] if mode == "heldout" else [],
    }
    return [*anchors, *extra], info


def heldout_ids(cmrm: str | Path) -> set[str]:
    """Ids of the held-out anchors a saved vector was calibrated on (empty for ``"sample"``/transfer).

    Raises:
        InputError: the vector file is missing, corrupt, or its metadata is not a JSON object.
    """
    if str(cmrm) == "sample":
        return set()
    meta = SteeringVector.load(cmrm).meta
    return {str(i) for i in (meta.get("anchors") or {}).get("heldout_ids") or []}

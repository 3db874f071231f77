"""Training data sources of the safety baselines and the *joint training* mix (paper 2): safety data mixed
into VL-adaptation data at a fixed ratio.

A :class:`DataSource` names one data set in a config: a published format on disk (``vlguard``, ``spavl``,
``llava``) or the organism's generated data (``synthetic_vl``: benign VQA on synthetic images). The records
become TRL's training tables through :mod:`vlsafe.methods.training.trl_data`. With
``ratio = r``, :func:`mix_records` keeps every VL-adaptation record and draws (seeded; cycling when the
safety set is smaller) as many safety records as make them a share ``r`` of the result.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data import vl_safety as vd
from vlsafe.methods.training.vl_safety_gen import synthetic_vl_records

__all__ = ["DataSource", "MixSettings", "load_source", "mix_records"]

Format = Literal["vlguard", "spavl", "llava", "synthetic_vl"]
PREFERENCE_FORMATS = ("spavl",)


class DataSource(BaseModel):
    """One training data set.

    Attributes:
        format: ``vlguard`` / ``llava`` (SFT records), ``spavl`` (preference pairs) or ``synthetic_vl``
            (generated benign VQA; needs ``n_images``).
        path: the metadata file (JSON array or JSON lines) for on-disk formats.
        image_dir: folder the image paths are relative to (default: beside the file).
        limit: keep the first ``limit`` records.
        text_only: drop the images (train the same prompts without them).
        n_images: images to generate for ``synthetic_vl``.
        seed: generation seed for ``synthetic_vl``.
    """

    model_config = ConfigDict(extra="forbid")
    format: Format
    path: Path | None = None
    image_dir: Path | None = None
    limit: int | None = Field(None, gt=0)
    text_only: bool = False
    n_images: int | None = Field(None, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _needs(self) -> DataSource:
        if self.format == "synthetic_vl":
            if self.n_images is None:
                raise ValueError("format 'synthetic_vl' needs n_images")
        elif self.path is None:
            raise ValueError(f"format {self.format!r} needs a path to its metadata file")
        return self


class MixSettings(BaseModel):
    """Joint training: the safety data become ``ratio`` of a mix with VL-adaptation data."""

    model_config = ConfigDict(extra="forbid")
    vl_data: list[DataSource] = Field(min_length=1)
    ratio: float = Field(0.1, gt=0, lt=1, description="share of safety records in the mixed training set")
    seed: int = 0


def load_source(source: DataSource) -> list[Any]:
    """The records of one source (``SFTRecord`` or ``PreferenceRecord``)."""
    if source.format == "synthetic_vl":
        records: list[Any] = synthetic_vl_records(int(source.n_images or 0), seed=source.seed)
    else:
        loader: Any = {"vlguard": vd.load_vlguard, "spavl": vd.load_spavl, "llava": vd.load_llava}[
            source.format
        ]
        assert source.path is not None  # checked by the validator
        records = loader(source.path, source.image_dir)
    if source.limit is not None:
        records = records[: source.limit]
    if source.text_only:
        records = [replace(r, image=None) for r in records]
    return records


def load_sources(sources: Sequence[DataSource], kind: Literal["sft", "preference"]) -> list[Any]:
    """Concatenate sources of one kind; a source of the other kind is a config error."""
    out: list[Any] = []
    for s in sources:
        is_pref = s.format in PREFERENCE_FORMATS
        if is_pref != (kind == "preference"):
            want = (
                "a preference format (spavl)"
                if kind == "preference"
                else "an SFT format (vlguard, llava, synthetic_vl)"
            )
            raise ConfigError(f"data source format {s.format!r} does not fit this trainer; it needs {want}")
        out.extend(load_source(s))
    if not out:
        raise InputError("the data sources hold no records")
    return out


def mix_records(
    vl_records: Sequence[Any], safety_records: Sequence[Any], ratio: float, seed: int = 0
) -> list[Any]:
    """All ``vl_records`` plus ``round(ratio / (1 - ratio) * len(vl_records))`` safety records, shuffled.

    Safety records are drawn without replacement in a seeded order and cycled when more are needed.

    Raises:
        InputError: ``ratio`` outside ``(0, 1)`` or an empty input.
    """
    if not 0 < ratio < 1:
        raise InputError(f"ratio={ratio} must lie strictly between 0 and 1")
    if not vl_records or not safety_records:
        raise InputError("joint training needs both VL-adaptation and safety records")
    rng = random.Random(f"vlsafe-mix:{seed}")
    n_safety = max(1, round(ratio / (1 - ratio) * len(vl_records)))
    order = list(range(len(safety_records)))
    rng.shuffle(order)
    drawn = [safety_records[order[i % len(order)]] for i in range(n_safety)]
    mixed = list(vl_records) + drawn
    rng.shuffle(mixed)
    return mixed

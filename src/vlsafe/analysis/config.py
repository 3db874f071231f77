"""The configs of the analyses (``vlsafe analyze shift|directions|layers|weights``), one per ``run_*`` function.

Query sources (``items``, ``harmful``, ``harmless``) are a ``.jsonl`` / ``.txt`` file or a benchmark name (see
:func:`vlsafe.analysis.load_items`); from Python they may also be lists of queries (strings, ``{"text", "image",
"caption"}`` dicts, ``InputItem`` or ``Sample`` objects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, InstanceOf, field_validator

from vlsafe.hooks import SteeringVector
from vlsafe.models import Variant

__all__ = [
    "AnalysisOptions",
    "DirectionsConfig",
    "ItemsSource",
    "LayersConfig",
    "ShiftConfig",
    "WeightsConfig",
]

#: Queries: a file or benchmark name, or a list of queries.
ItemsSource = str | Path | list[Any]
Position = Literal["last", "text_mean", "image_mean", "mean"]


def _default_positions() -> list[Position]:
    return ["last", "text_mean"]


class AnalysisOptions(BaseModel):
    """What the analyses of one model share: the model, how queries are read, and resources.

    Attributes:
        model: HF id or local directory of the model.
        data_dir: benchmark data folder (image paths are resolved against it).
        limit: use only the first ``limit`` queries of each source.
        batch_size: queries per forward pass.
        seed: seed of noise images, splits and probes.
        dtype: model dtype.
        trust_remote_code: allow the checkpoint's own code to run.
        allow_pickle: also load model weights stored as pickles (``pytorch_model.bin``).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    data_dir: str | None = None
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    dtype: str | None = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("variants", "reference", check_fields=False)
    @classmethod
    def _known_variants(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else list(value or [])
        known = [v.value for v in Variant]
        bad = [str(n) for n in names if str(n) not in known]
        if bad:
            raise ValueError(f"unknown input variant(s) {', '.join(map(repr, bad))}; known: {', '.join(known)}")
        return value


class ShiftConfig(AnalysisOptions):
    """Representation shift of input variants against a reference variant, per layer.

    Attributes:
        items: the queries (a .jsonl of text, image, caption; a .txt, one per line; or a benchmark name).
        variants: input variants compared (``None``: every variant the items allow).
        reference: the variant the others are compared with.
        layers: layer indices (``None``: all).
        positions: where states are read: ``last`` token, ``text_mean``, ``image_mean``, ``mean``.
        direction: a saved steering vector (e.g. ``directions.safetensors`` of the directions analysis) whose
            per-layer direction the states are projected on.
        scatter_layers: layers of the PCA scatter (``None``: the last).
        max_scatter_points: points per variant in the PCA scatter.
    """

    items: ItemsSource
    variants: list[str] | None = None
    reference: str = "text"
    layers: list[int] | None = None
    positions: list[Position] = Field(default_factory=_default_positions, min_length=1)
    direction: Path | InstanceOf[SteeringVector] | None = None
    scatter_layers: list[int] | None = None
    max_scatter_points: int = Field(500, ge=1)


class DirectionsConfig(AnalysisOptions):
    """Refusal directions (harmful minus harmless mean state) and held-out probe accuracy per layer.

    Attributes:
        harmful: harmful prompts (a .txt / .jsonl or a benchmark name).
        harmless: harmless prompts (a .txt / .jsonl or a benchmark name).
        items: image queries whose variants are projected on the directions (optional).
        variants: input variants of ``items``.
        layers: layer indices (``None``: all).
        test_fraction: held-out share of each class for the probes.
        probe_steps: optimisation steps of each linear probe.
    """

    harmful: ItemsSource
    harmless: ItemsSource
    items: ItemsSource | None = None
    variants: list[str] | None = None
    layers: list[int] | None = None
    test_fraction: float = Field(0.25, gt=0, lt=1)
    probe_steps: int = Field(300, ge=1)


class LayersConfig(AnalysisOptions):
    """Safety-layer localisation with the logit lens, and image-span vs caption cosines.

    Attributes:
        items: the queries (a .jsonl of text, image, caption; a .txt; or a benchmark name).
        variants: input variants (``None``: text, caption and image where the items allow).
        top_k: the top-k of ``P_j - P_{j-1}`` a refusal token must enter for the activation layer.
        caption_cosine: also compute the cosine of image-span and caption states per layer.
    """

    items: ItemsSource
    variants: list[str] | None = None
    top_k: int = Field(10, ge=1)
    caption_cosine: bool = True


class WeightsConfig(BaseModel):
    """Relative weight change ``||A - B|| / ||A||`` per layer and module between two checkpoints.

    Attributes:
        checkpoint_a: the reference checkpoint (a folder of safetensors shards or one ``.safetensors`` file).
        checkpoint_b: the changed checkpoint.
        names: tensor matching: ``exact`` names, ``llm`` (a VLM's language model against an LLM by canonical
            names) or ``auto`` (``exact`` when the name sets agree).
        resized: tensors differing only in their leading dimension (a resized vocabulary): ``error``,
            ``skip`` them, or compare the common leading rows (``overlap``).
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint_a: Path
    checkpoint_b: Path
    names: Literal["auto", "exact", "llm"] = "auto"
    resized: Literal["error", "skip", "overlap"] = "error"

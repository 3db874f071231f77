"""``MergeConfig``: one merge, validated and loadable from YAML.

Example::

    method: ties
    base_model: path/to/base-llm
    models:
      - model: path/to/safety-tuned-llm
        weight: 0.5
      - model: path/to/vlm                   # a VLM: its language model is merged by canonical names
        weight:                              # per-module weights: first matching filter wins
          - {filter: self_attn, value: 0.7}
          - {value: 0.5}                     # default entry (no filter)
    parameters: {density: 0.5}
    dtype: bfloat16
    layers: [10, 11, 12]                     # merge only these decoder layers ...
    rest_from: path/to/vlm                   # ... and take every other tensor from this input

A weight (and SLERP's ``t``) is a number, a per-layer list (one value per decoder layer; embeddings
take the first value, the final norm and LM head the last), or a list of ``{filter, value}`` entries
matched as substrings of the canonical (LLM) tensor name, whose last entry has no filter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from vlsafe.core.config import read_yaml_mapping, validate_config
from vlsafe.core.errors import ConfigError
from vlsafe.core.io import write_text_atomic
from vlsafe.methods.merging.methods import METHODS
from vlsafe.methods.merging.names import layer_index

__all__ = ["FilterValue", "MergeConfig", "ModelEntry", "ValueSpec", "parse_size", "resolve_value"]


class FilterValue(BaseModel):
    """A weight for the tensors whose canonical name contains ``filter`` (all tensors when ``None``)."""

    model_config = ConfigDict(extra="forbid")
    filter: str | None = None
    value: float | list[float]


ValueSpec = float | list[float] | list[FilterValue]


class ModelEntry(BaseModel):
    """One input model: a local directory or hub id, its weight, and an optional density override."""

    model_config = ConfigDict(extra="forbid")
    model: str
    weight: ValueSpec | None = None
    density: float | None = None

    @field_validator("density")
    @classmethod
    def _density(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"density={v} must lie in [0, 1]")
        return v


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(
            f"size {value!r} must be bytes or a number with a unit (e.g. '5GB', '500MB', '2GiB')"
        )
    unit = match.group(2).upper().rstrip("B")
    return int(float(match.group(1)) * _UNITS[unit])


class MergeConfig(BaseModel):
    """One merge.

    Attributes:
        method: a registered method (``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``,
            ``dare_ties``, ``slerp``).
        base_model: the base checkpoint (task vectors are ``model - base``; SLERP's ``t = 0`` end).
        models: the inputs with their weights (default 1.0; for SLERP the single ``t = 1`` model).
        weights: shorthand for per-model weights, one number per model.
        parameters: method parameters: ``density`` (fraction kept), ``lambda`` (task-vector scale),
            ``normalize`` (divide by summed weights), ``t`` (SLERP, a weight spec).
        dtype: output dtype (default: each tensor keeps the template's dtype).
        shard_size: largest output shard (bytes or e.g. ``"5GB"``).
        seed: DARE seed.
        layers: merge only these decoder layers; every other tensor comes from ``rest_from``.
        rest_from: the input that supplies unmerged tensors (default: the template).
        template: the input whose tensor names, config, tokenizer and processor files, and
            non-language tensors (vision tower, projector) the output takes (default: the first
            VLM among the inputs, else the base model, else the first model).
        merge_non_language: also merge non-language tensors present in every input (two VLMs).
        output: output directory (the CLI's ``--out`` overrides it).
    """

    model_config = ConfigDict(extra="forbid")
    method: str
    base_model: str | None = None
    models: list[ModelEntry]
    weights: list[float] | None = None
    parameters: dict[str, Any] = {}
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    shard_size: int | str = "5GB"
    seed: int = 0
    layers: list[int] | None = None
    rest_from: str | None = None
    template: str | None = None
    merge_non_language: bool = False
    output: str | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown merge method {v!r}; known: {', '.join(METHODS.names())}")
        return v

    @field_validator("shard_size")
    @classmethod
    def _shard(cls, v: int | str) -> int | str:
        if parse_size(v) <= 0:
            raise ValueError(f"shard_size={v!r} must be positive")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(i < 0 for i in v)):
            raise ValueError(f"layers={v} must be a non-empty list of layer indices >= 0")
        return v

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        spec = METHODS.get(self.method)
        if not self.models:
            raise ValueError("models must list at least one model")
        if spec.needs_base and self.base_model is None:
            raise ValueError(f"method {self.method!r} needs base_model (task vectors are model - base)")
        if spec.kind == "slerp" and len(self.models) != 1:
            raise ValueError(
                f"slerp interpolates base_model and exactly one model; models lists {len(self.models)}"
            )
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(
                    f"weights has {len(self.weights)} values but models lists {len(self.models)} models; "
                    "give one weight per model"
                )
            if any(m.weight is not None for m in self.models):
                raise ValueError("give weights either as the top-level list or per model, not both")
        unknown = sorted(set(self.parameters) - set(spec.defaults))
        if unknown:
            allowed = ", ".join(sorted(spec.defaults)) or "(none)"
            raise ValueError(f"method {self.method!r} takes no parameter {unknown[0]!r}; it takes: {allowed}")
        density = self.parameters.get("density", 1.0)
        if not isinstance(density, int | float) or not 0.0 <= float(density) <= 1.0:
            raise ValueError(f"parameters.density={density!r} must be a number in [0, 1]")
        if any(m.density is not None for m in self.models) and "density" not in spec.defaults:
            raise ValueError(f"method {self.method!r} has no density; remove the per-model density")
        for entry in self.models:
            _check_spec(entry.weight, f"weight of {entry.model}")
        if "t" in self.parameters:
            self.parameters["t"] = _coerce_spec(self.parameters["t"])
            _check_spec(self.parameters["t"], "parameters.t")
        refs = self.input_refs()
        for field_name in ("rest_from", "template"):
            ref = getattr(self, field_name)
            if ref is not None and ref not in refs:
                raise ValueError(f"{field_name}={ref!r} must be one of the inputs: {', '.join(refs)}")
        return self

    def input_refs(self) -> list[str]:
        """The inputs in source order: the base (if any), then the models."""
        return ([self.base_model] if self.base_model is not None else []) + [m.model for m in self.models]

    def model_weights(self) -> list[ValueSpec]:
        """Each model's weight spec (default 1.0)."""
        if self.weights is not None:
            return list(self.weights)
        return [m.weight if m.weight is not None else 1.0 for m in self.models]

    # -- I/O ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergeConfig:
        """Validate ``data``; raises ``ConfigError`` naming each broken field and rule."""
        return validate_config(cls, data, "merge config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        """Load a YAML file holding one mapping of config fields."""
        return cls.from_dict(read_yaml_mapping(path, "merge config"))

    def to_yaml(self, path: str | Path) -> Path:
        """Write the resolved config (every field, defaults included), atomically."""
        data = self.model_dump(mode="json")
        data["parameters"] = {**METHODS.get(self.method).defaults, **data["parameters"]}
        return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _coerce_spec(value: Any) -> ValueSpec:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [FilterValue.model_validate(v) for v in value]
    return value  # type: ignore[no-any-return]


def _check_spec(spec: ValueSpec | None, what: str) -> None:
    if spec is None or isinstance(spec, int | float):
        return
    if not isinstance(spec, list) or not spec:
        raise ValueError(
            f"{what}={spec!r} must be a number, a per-layer list, or a list of {{filter, value}}"
        )
    if isinstance(spec[0], FilterValue):
        if spec[-1].filter is not None:  # type: ignore[union-attr]
            raise ValueError(f"{what}: the last {{filter, value}} entry must have no filter (the default)")
        for entry in spec:
            _check_spec(entry.value, what)  # type: ignore[union-attr]
    elif not all(isinstance(v, int | float) for v in spec):
        raise ValueError(f"{what}={spec!r} mixes numbers and {{filter, value}} entries")


def resolve_value(spec: ValueSpec, canonical: str, n_layers: int, what: str = "weight") -> float:
    """The number a weight spec gives the tensor with canonical name ``canonical``.

    Raises:
        ConfigError: a per-layer list does not have one value per decoder layer.
    """
    if isinstance(spec, int | float):
        return float(spec)
    if spec and isinstance(spec[0], FilterValue):
        for entry in spec:
            if entry.filter is None or entry.filter in canonical:  # type: ignore[union-attr]
                return resolve_value(entry.value, canonical, n_layers, what)  # type: ignore[union-attr]
    values = [float(v) for v in spec]  # type: ignore[arg-type]
    if len(values) == 1:
        return values[0]
    if len(values) != n_layers:
        raise ConfigError(
            f"{what} lists {len(values)} per-layer values but the model has {n_layers} decoder layers; "
            "give one value per layer"
        )
    layer = layer_index(canonical)
    if layer is None:
        return values[0] if "embed" in canonical else values[-1]
    return values[layer]

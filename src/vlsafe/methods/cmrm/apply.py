"""Applying CMRM vectors: which layers, how strongly, where.

Adding ``alpha * v_l`` at *every* decoder layer accumulates through the residual stream (each layer's
output already carries the earlier shifts): on a 30-layer probe of the organism that gave gibberish at
``alpha = 0.5``. The application options are therefore explicit:

- ``layers``: ``"middle"`` (default: the band ``[L // 4, L // 2)``, at least one layer), ``"all"``, one
  index or a list.
- ``delta``: add ``v_l - v_{l-1}`` instead of ``v_l`` inside the chosen layers (the first keeps
  ``v_l``), so that the total shift after layer ``l`` adds up to ``alpha * v_l`` rather than a sum.
- ``norm_scale``: scale alpha per position by ``||h|| / mean ||h||`` at calibration.
- ``positions``: ``"all"`` tokens (the paper) or ``"last"``; ``prefill_only``: leave generated tokens alone.

The defaults (``middle`` band, ``delta=True``) were measured against the other options on the model
organism (``organism/src/vlsafe_organism/artifacts/cmrm_selection.json``, BENCHMARKS.md "Repairs on the model
organism"): there, the band at alpha >= 0.5 and every multi-layer setting at alpha >= 0.5 break the text, and
no coherent setting (alpha <= 0.25 on the band, or one layer at the last position) refuses more than no
steering, so no other option is better there. Sweep alpha (``vlsafe cmrm sweep``) on your own model before
trusting any value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from vlsafe.core.config import comma_items
from vlsafe.core.errors import ConfigError
from vlsafe.hooks import SteeringVector
from vlsafe.hooks.vector import Alpha
from vlsafe.methods.cmrm.calibrate import check_compatible
from vlsafe.models.bundle import ModelBundle

__all__ = ["ApplyOptions", "LayerSpec", "cmrm_steer", "middle_band", "prepare_vector", "resolve_steer_layers"]

LayerSpec = Literal["middle", "all"] | int | list[int]


def middle_band(num_layers: int) -> list[int]:
    """The default band of middle layers: ``[L // 4, L // 2)`` (at least one layer)."""
    lo = num_layers // 4
    hi = max(lo + 1, num_layers // 2)
    return list(range(lo, min(hi, num_layers)))


def resolve_steer_layers(
    spec: LayerSpec | Sequence[int] | None, num_layers: int, available: Sequence[int]
) -> list[int]:
    """Turn a layer spec into sorted indices, all present in the vector."""
    if spec is None or spec == "middle":
        chosen = middle_band(num_layers)
    elif spec == "all":
        chosen = list(available)
    elif isinstance(spec, int):
        chosen = [spec]
    elif isinstance(spec, str):
        raise ConfigError(f"layers={spec!r} is not 'middle', 'all', an index or a list of indices")
    else:
        chosen = [int(i) for i in spec]
    out = []
    for i in chosen:
        if not -num_layers <= i < num_layers:
            raise ConfigError(f"layer {i} is out of range: the model has {num_layers} decoder layers")
        out.append(i % num_layers)
    out = sorted(set(out))
    if not out:
        raise ConfigError("the layer selection is empty")
    missing = [i for i in out if i not in available]
    if missing:
        raise ConfigError(f"layers {missing} are not in the CMRM vector (it has {list(available)})")
    return out


class ApplyOptions(BaseModel):
    """How a CMRM vector is applied (see the module docstring for the open choices)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float | list[float] | dict[int, float] = 1.0
    layers: LayerSpec = "middle"
    delta: bool = True
    norm_scale: bool = False
    positions: Literal["all", "last"] = "all"
    prefill_only: bool = False

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("middle", "all"):
            try:
                return [int(x) for x in comma_items(v)]
            except ValueError:
                raise ValueError(f"layers={v!r} must be 'middle', 'all' or comma-separated indices") from None
        return v

    def describe(self) -> str:
        """A compact, stable text of the options (used in run fingerprints and tables)."""
        return (
            f"alpha={self.alpha!r},layers={self.layers!r},delta={self.delta},norm_scale={self.norm_scale},"
            f"positions={self.positions},prefill_only={self.prefill_only}"
        )


def prepare_vector(
    vector: SteeringVector,
    num_layers: int,
    layers: LayerSpec | Sequence[int] | None = "middle",
    delta: bool = True,
) -> SteeringVector:
    """The vector restricted to the steered layers, as per-layer deltas when ``delta``."""
    chosen = resolve_steer_layers(layers, num_layers, vector.layers)
    sub = vector.subset(chosen)
    return sub.layer_deltas() if delta else sub


def _alpha_for(alpha: Alpha, chosen: Sequence[int]) -> Alpha:
    if isinstance(alpha, Mapping):
        return {int(k): float(v) for k, v in alpha.items() if int(k) in chosen}
    return alpha


@contextmanager
def cmrm_steer(
    bundle: ModelBundle,
    vector: SteeringVector,
    alpha: Alpha = 1.0,
    *,
    layers: LayerSpec | Sequence[int] | None = "middle",
    delta: bool = True,
    norm_scale: bool = False,
    positions: str = "all",
    prefill_only: bool = False,
) -> Iterator[SteeringVector]:
    """Apply a dataset-level CMRM vector while the context is open: ``h_l <- h_l + alpha * v_l``.

    ``alpha > 0`` moves multimodal states toward text-only ones; ``alpha = 0`` leaves the model exactly
    as it is. A per-layer ``alpha`` (sequence) follows the order of the *steered* layers.

    Raises:
        InputError: the vector was calibrated on a model of another shape.
        ConfigError: bad layers / alpha / options.

    Yields:
        The vector actually added (restricted layers, deltas applied).
    """
    check_compatible(vector, bundle)
    prepared = prepare_vector(vector, bundle.num_layers, layers, delta)
    with prepared.apply(
        bundle,
        _alpha_for(alpha, prepared.layers),
        positions=positions,
        prefill_only=prefill_only,
        norm_scale=norm_scale,
    ):
        yield prepared

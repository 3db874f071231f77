"""Applying CMRM vectors: which layers, how strongly, where, when.

The options (:class:`ApplyOptions`; the defaults are the ``paper`` preset, see :mod:`vlsafe.methods.cmrm.presets`
for where each comes from):

- ``layers``: ``"all"`` (default; the paper adds the vector at every decoder layer), ``"middle"`` (the band
  ``[L // 4, L // 2)``, at least one layer; vlsafe's), one index or a list.
- ``delta``: add ``v_l - v_{l-1}`` instead of ``v_l`` inside the chosen layers (the first keeps ``v_l``), so
  that the total shift after layer ``l`` adds up to ``alpha * v_l`` rather than a sum (vlsafe's; default off).
  Each ``v_l`` is measured on the unsteered model, so with ``delta`` off the shifts added at earlier layers
  reach layer ``l`` through the residual stream on top of ``v_l``.
- ``norm_scale``: scale alpha per position by ``||h|| / mean ||h||`` at calibration (vlsafe's; default off).
- ``positions``: ``"all"`` real tokens (default), ``"last"`` position of each call, or ``"text"`` (the query's
  text span of the prompt); see :mod:`vlsafe.methods.cmrm.steering`.
- ``when``: ``"every"`` (default: the prompt and every decoded token, which get the vector measured at the
  prompt's last position) or ``"prefill"`` (the prompt pass only).

The committed selection on the model organism (``organism/src/vlsafe_organism/artifacts/cmrm_selection.json``)
records what each setting measured there; sweep alpha and the other options (``vlsafe cmrm sweep``) on your own
model before trusting any value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from vlsafe.core.config import comma_items
from vlsafe.core.errors import ConfigError
from vlsafe.hooks import SteeringVector
from vlsafe.hooks.vector import Alpha
from vlsafe.methods.cmrm.calibrate import check_compatible
from vlsafe.methods.cmrm.presets import named_choice
from vlsafe.methods.cmrm.steering import SteerHooks
from vlsafe.models.bundle import ModelBundle

__all__ = [
    "ApplyOptions",
    "LayerSpec",
    "cmrm_steer",
    "middle_band",
    "prepare_vector",
    "resolve_steer_layers",
    "steer_hooks",
]

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
    if spec == "middle":
        chosen = middle_band(num_layers)
    elif spec is None or spec == "all":
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
    """How a CMRM vector is applied (see the module docstring; the defaults are the ``paper`` preset).

    Attributes:
        alpha: strength: a scalar, one value per steered layer in order, or ``{layer: alpha}``.
        layers: steered layers: ``all`` (paper), ``middle`` (vlsafe's band), an index or a list of indices.
        delta: add per-layer increments ``v_l - v_(l-1)`` inside the steered layers (vlsafe's option).
        norm_scale: scale alpha per position by the hidden-state norm over its mean at calibration (vlsafe's).
        positions: steered positions: ``all`` tokens, the ``last`` position of each call, or the query's
            ``text`` span.
        when: ``every`` (the prompt and each decoded token) or ``prefill`` (the prompt only).
    """

    model_config = ConfigDict(extra="forbid")

    alpha: float | list[float] | dict[int, float] = 1.0
    layers: LayerSpec = "all"
    delta: bool = False
    norm_scale: bool = False
    positions: Literal["all", "last", "text"] = "all"
    when: Literal["prefill", "every"] = "every"

    @model_validator(mode="before")
    @classmethod
    def _prefill_only(cls, data: Any) -> Any:
        """Accept the earlier ``prefill_only`` flag as ``when`` (``True``: ``prefill``, ``False``: ``every``)."""
        if not isinstance(data, dict) or "prefill_only" not in data:
            return data
        data = dict(data)
        legacy = "prefill" if data.pop("prefill_only") else "every"
        if data.get("when", legacy) != legacy:
            raise ValueError(f"prefill_only and when={data['when']!r} disagree: give when only")
        data["when"] = legacy
        return data

    @field_validator("positions", "when", mode="before")
    @classmethod
    def _choices(cls, v: Any, info: ValidationInfo) -> Any:
        return named_choice(cls, v, info)

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
        """A compact, stable text of the options (used in run fingerprints and tables).

        The default ``when="every"`` is written as ``prefill_only=False`` (``prefill``: ``True``), as before ``when``
        existed, so run directories written then still resume.
        """
        text = (
            f"alpha={self.alpha!r},layers={self.layers!r},delta={self.delta},norm_scale={self.norm_scale},"
            f"positions={self.positions},prefill_only={self.when == 'prefill'}"
        )
        return text


def prepare_vector(
    vector: SteeringVector,
    num_layers: int,
    layers: LayerSpec | Sequence[int] | None = "all",
    delta: bool = False,
) -> SteeringVector:
    """The vector restricted to the steered layers, as per-layer deltas when ``delta``."""
    chosen = resolve_steer_layers(layers, num_layers, vector.layers)
    sub = vector.subset(chosen)
    return sub.layer_deltas() if delta else sub


def _alpha_for(alpha: Alpha, chosen: Sequence[int]) -> Alpha:
    if isinstance(alpha, Mapping):
        return {int(k): float(v) for k, v in alpha.items() if int(k) in chosen}
    return alpha


def steer_hooks(
    bundle: ModelBundle,
    vector: SteeringVector,
    alpha: Alpha = 1.0,
    *,
    layers: LayerSpec | Sequence[int] | None = "all",
    delta: bool = False,
    norm_scale: bool = False,
    positions: str = "all",
    when: str = "every",
) -> SteerHooks:
    """The (not yet registered) hooks that apply a dataset-level vector; enter them to steer (what
    :func:`cmrm_steer` does). Their ``hooks.prepared`` is the vector actually added."""
    check_compatible(vector, bundle)
    prepared = prepare_vector(vector, bundle.num_layers, layers, delta)
    hooks = SteerHooks(
        bundle,
        prepared.layers,
        _alpha_for(alpha, prepared.layers),
        positions=positions,
        when=when,
        norm_scale=norm_scale,
    )
    hooks.set_vector(prepared)
    hooks.prepared = prepared
    return hooks


@contextmanager
def cmrm_steer(
    bundle: ModelBundle,
    vector: SteeringVector,
    alpha: Alpha = 1.0,
    *,
    layers: LayerSpec | Sequence[int] | None = "all",
    delta: bool = False,
    norm_scale: bool = False,
    positions: str = "all",
    when: str = "every",
    text_mask: torch.Tensor | None = None,
) -> Iterator[SteeringVector]:
    """Apply a dataset-level CMRM vector while the context is open: ``h_l <- h_l + alpha * v_l``.

    The defaults are the ``paper`` preset: every layer, no increments, all positions, prompt and decoded tokens.
    ``alpha > 0`` moves multimodal states toward text-only ones; ``alpha = 0`` leaves the model exactly as it
    is. A per-layer ``alpha`` (sequence) follows the order of the *steered* layers.

    Args:
        text_mask: positions ``text``: the ``[B, T]`` text-span mask of the batch to steer
            (``BatchInputs.masks.text``).

    Raises:
        InputError: the vector was calibrated on a model of another shape.
        ConfigError: bad layers / alpha / options.

    Yields:
        The vector actually added (restricted layers, deltas applied).
    """
    hooks = steer_hooks(
        bundle, vector, alpha, layers=layers, delta=delta, norm_scale=norm_scale, positions=positions, when=when
    )
    hooks.set_text_mask(text_mask)
    with hooks:
        assert hooks.prepared is not None
        yield hooks.prepared

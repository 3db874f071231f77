"""The hooks that add CMRM vectors to decoder-layer outputs (both levels).

:class:`SteerHooks` registers one forward hook per steered layer while its context is open and steers with
whatever vector it is given (:meth:`SteerHooks.set_vector`: one ``[H]`` vector per layer, or ``[B, H]`` rows), at
the positions of :data:`STEER_POSITIONS`:

- ``all``: every real token of the prompt (pads untouched);
- ``last``: the last position of each model call (the prompt's last token at prefill, the new token when decoding);
- ``text``: the query's text span of the prompt (:attr:`vlsafe.models.PositionMasks.text`, set per batch with
  :meth:`SteerHooks.set_text_mask`); a longer call (a prompt with appended answer options) leaves the extra
  positions alone.

``when`` (:data:`WHEN`): ``prefill`` steers the prompt pass only; ``every`` also each decoded token (there every
mode steers the new token). A call is a decode step when the model is called with a non-empty KV cache and one
new position (:meth:`vlsafe.hooks.plumbing.CallContext.is_prefill`); any other call is part of the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector
from vlsafe.hooks.apply import LayerSteer
from vlsafe.hooks.operators import OPERATORS
from vlsafe.hooks.plumbing import CallContext, hidden_from_output, outer_pre_hook, registered
from vlsafe.hooks.vector import Alpha
from vlsafe.models.bundle import ModelBundle

__all__ = ["STEER_POSITIONS", "WHEN", "SteerHooks", "check_choice"]

STEER_POSITIONS = ("all", "last", "text")
WHEN = ("prefill", "every")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Raise a :class:`ConfigError` naming ``value`` and the allowed values when ``value`` is not one of them."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")


class SteerHooks:
    """Context manager: forward hooks on ``layers`` adding ``alpha * v_l`` (``v``: :meth:`set_vector`).

    Args:
        bundle: the model.
        layers: steered decoder layers (resolved indices).
        alpha: scalar, one value per steered layer in order, or ``{layer: alpha}``.
        positions: one of :data:`STEER_POSITIONS`.
        when: one of :data:`WHEN`.
        norm_scale: scale alpha per position by ``||h|| / meta["hidden_norms"][l]`` of the vector.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        layers: Sequence[int],
        alpha: Alpha = 1.0,
        *,
        positions: str = "all",
        when: str = "every",
        norm_scale: bool = False,
    ) -> None:
        check_choice("positions", positions, STEER_POSITIONS)
        check_choice("when", when, WHEN)
        self.bundle = bundle
        self.layers = list(layers)
        self.alphas = SteeringVector({i: torch.zeros(1) for i in self.layers}).alphas(alpha)
        self.positions = positions
        self.when = when
        self.norm_scale = norm_scale
        self.busy = False
        self.text_mask: torch.Tensor | None = None
        self.prepared: SteeringVector | None = None  # what steer_hooks prepared (the vector actually added)
        self._steers: dict[int, LayerSteer] = {}
        self._ctx = CallContext()
        self._registration: Any = None

    def set_vector(self, vector: SteeringVector | None) -> None:
        """Steer with ``vector`` (its layers must include every steered layer; already restricted and as deltas
        where wanted); ``None``: stop steering."""
        self._steers = {}
        if vector is None:
            return
        missing = [i for i in self.layers if i not in vector.vectors]
        if missing:
            raise ConfigError(f"layers {missing} are not in the CMRM vector (it has {vector.layers})")
        norms: Mapping[int, float] = {}
        if self.norm_scale:
            norms = {int(k): float(v) for k, v in (vector.meta.get("hidden_norms") or {}).items()}
            if any(layer not in norms for layer in self.layers):
                raise ConfigError(
                    "norm_scale=True needs meta['hidden_norms'] for every steered layer of the vector"
                )
        op = OPERATORS.get("add")
        mode = "last" if self.positions == "last" else "all"
        for layer in self.layers:
            self._steers[layer] = LayerSteer(
                vector.vectors[layer],
                self.alphas[layer],
                op,
                self._ctx,
                mode,
                False,  # when: decided per call by the hook (see the module docstring)
                norms[layer] if self.norm_scale else None,
            )

    def set_text_mask(self, mask: torch.Tensor | None) -> None:
        """The ``[B, T]`` text-span mask of the next batch's prompt (positions ``text``)."""
        self.text_mask = None if mask is None else mask.to(torch.bool)

    def _text_positions(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.text_mask
        if mask is None:
            raise ConfigError(
                "positions='text' needs the batch's text-span mask: give text_mask, or steer through "
                "CMRMIntervention / SampleLevelCMRM, which set it for each batch"
            )
        b, t = hidden.shape[:2]
        if mask.shape[0] != b or mask.shape[1] > t:
            raise InputError(
                f"the text-span mask has shape {tuple(mask.shape)} but the prompt is {(b, t)}: set the mask "
                "of the batch being steered (a prompt split over several calls, as shared-prefix decoding "
                "does, cannot be steered at positions 'text')"
            )
        if mask.shape[1] < t:  # answer options appended after the prompt: not part of the text span
            mask = torch.cat([mask, mask.new_zeros((b, t - mask.shape[1]))], dim=1)
        return mask.to(hidden.device)

    def _hook(self, layer: int):  # noqa: ANN202 - forward hook closure
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            steer = self._steers.get(layer)
            if self.busy or steer is None:
                return None
            hidden = hidden_from_output(output)
            prefill = self._ctx.is_prefill(hidden)
            if not prefill:
                if self.when == "prefill":
                    return None
                steer.positions = "all"  # the new token, whatever the prompt's positions were
            elif self.positions == "text":
                steer.positions = self._text_positions(hidden)
            elif self.positions == "last":
                steer.positions = "last"
            return steer.steer_hidden(output, hidden, prefill)

        return hook

    def __enter__(self) -> SteerHooks:
        if self._registration is not None:
            raise ConfigError("these CMRM hooks are already registered")
        handles = [
            outer_pre_hook(self.bundle.model, self._ctx),
        ]
        for layer in self.layers:
            # prepend: run before observers, so recorders and output_hidden_states see the steered state
            handles.append(self.bundle.layers[layer].register_forward_hook(self._hook(layer), prepend=True))
        self._registration = registered(handles)
        self._registration.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        registration, self._registration = self._registration, None
        try:
            if registration is not None:
                registration.__exit__(None, None, None)
        finally:
            self.set_vector(None)

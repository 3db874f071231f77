"""The steering context manager: add (or ablate, clamp) vectors at decoder-layer outputs.

Correct for left-padded batches (pad positions are never changed) and for ``generate`` with a
KV cache: the first call of a generation is the prefill (its hidden length equals the attention
mask's length); later calls are decode steps that see only the new token(s).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks.operators import OPERATORS
from vlsafe.hooks.plumbing import CallContext, hidden_from_output, outer_pre_hook, registered, replace_hidden
from vlsafe.models.bundle import ModelBundle

if TYPE_CHECKING:  # annotations only: vector.py builds on this module (SteeringVector.apply calls steer)
    from vlsafe.hooks.vector import Alpha, SteeringVector

__all__ = ["POSITION_MODES", "LayerSteer", "steer"]

POSITION_MODES = ("all", "last")


class LayerSteer:
    """The forward hook that steers one decoder layer's output (what :func:`steer` registers per layer).

    Register it with ``layer.register_forward_hook(hook, prepend=True)`` together with
    :func:`vlsafe.hooks.plumbing.outer_pre_hook` for the same ``ctx``; the vector is cast lazily to the
    hidden state's dtype and device, once per combination.

    Args:
        vector: ``[H]`` (every row) or ``[B, H]`` (one vector per batch row).
        alpha: the strength.
        op: the operator ``op(hidden, vector, alpha) -> steered`` (see :mod:`vlsafe.hooks.operators`).
        ctx: the call context the outer pre-hook fills (attention mask, prefill or decode step).
        positions: ``"all"`` real tokens, ``"last"`` token of each call, or a boolean ``[B, T]`` prompt mask.
        prefill_only: leave decode steps of ``generate`` unsteered.
        ref_norm: when given, alpha is scaled per position by ``||h|| / ref_norm``.
    """

    def __init__(
        self,
        vector: torch.Tensor,
        alpha: float,
        op: Any,
        ctx: CallContext,
        positions: str | torch.Tensor,
        prefill_only: bool,
        ref_norm: float | None,
    ) -> None:
        self.vector = vector
        self.alpha = alpha
        self.op = op
        self.ctx = ctx
        self.positions = positions
        self.prefill_only = prefill_only
        self.ref_norm = ref_norm
        self._cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        # the CMRM case (add, a fixed alpha): one cached ``alpha * v`` and one add per call
        self._add = op is OPERATORS.get("add") and ref_norm is None
        self._scaled: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def _vec(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        v = self._cast.get(key)
        if v is None:
            v = self.vector.to(device=hidden.device, dtype=hidden.dtype)
            v = v[:, None, :] if v.dim() == 2 else v
            self._cast[key] = v
            if self._add:
                # ``alpha * v`` once per dtype and device instead of at every call (the same values: the
                # operator would compute exactly this product first)
                self._scaled[key] = self.alpha * v
        if v.dim() == 3 and v.shape[0] != hidden.shape[0]:
            raise InputError(
                f"a per-row steering vector has {v.shape[0]} rows but the batch has {hidden.shape[0]} rows"
            )
        return v

    def _mask(self, hidden: torch.Tensor, prefill: bool) -> torch.Tensor | None:
        pos = self.positions
        if isinstance(pos, torch.Tensor):
            if not prefill:
                return None  # generated tokens: steered unless prefill_only (checked by the caller)
            if pos.shape != hidden.shape[:2]:
                raise InputError(
                    f"position mask has shape {tuple(pos.shape)} but the layer input is {tuple(hidden.shape[:2])}"
                )
            mask = pos.to(device=hidden.device, dtype=torch.bool)
            real = self.ctx.token_mask(hidden)
            return mask if real is None else mask & real
        if pos == "last":
            mask = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            mask[:, -1] = True
            return mask
        # "all": every real token; decode steps only carry real tokens.
        return self.ctx.token_mask(hidden) if prefill else None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = hidden_from_output(output)
        return self.steer_hidden(output, hidden, self.ctx.is_prefill(hidden))

    def steer_hidden(self, output: Any, hidden: torch.Tensor, prefill: bool) -> Any:
        """The hook's work for a layer ``output`` whose hidden state (``hidden``) and call kind (``prefill``)
        the caller has already read (a caller that decides per call, as CMRM's hooks do, reads them once)."""
        if self.prefill_only and not prefill:
            return None
        v = self._vec(hidden)
        if self._add:
            steered = hidden + self._scaled[(hidden.dtype, hidden.device)]
        else:
            alpha: float | torch.Tensor = self.alpha
            if self.ref_norm is not None:
                alpha = self.alpha * hidden.norm(dim=-1, keepdim=True) / self.ref_norm
            steered = self.op(hidden, v, alpha)
        mask = self._mask(hidden, prefill)
        if mask is not None:
            steered = torch.where(mask.unsqueeze(-1), steered, hidden)
        return replace_hidden(output, steered)


@contextmanager
def steer(
    bundle: ModelBundle,
    vector: SteeringVector,
    alpha: Alpha = 1.0,
    *,
    positions: str | torch.Tensor = "all",
    prefill_only: bool = False,
    operator: str = "add",
    layers: Sequence[int] | None = None,
    norm_scale: bool = False,
) -> Iterator[None]:
    """Steer the model's decoder layers while the context is open.

    With the default ``add`` operator, the output ``h_l`` of every decoder layer ``l`` in the
    vector becomes ``h_l + alpha_l * v_l``.

    Args:
        bundle: the model to steer (never modified; hooks are removed on exit, also on error).
        vector: the per-layer vectors (``[H]`` or per-row ``[B, H]``).
        alpha: a scalar, one value per vector layer (in layer order), or ``{layer: alpha}``.
        positions: ``"all"`` real tokens (pads untouched), ``"last"`` token of each call, or a
            boolean ``[B, T]`` mask over the prompt (generated tokens are steered unless
            ``prefill_only``).
        prefill_only: steer only the prompt pass of ``generate``, not the decode steps.
        operator: ``"add"``, ``"ablate"`` or ``"clamp"`` (see ``vlsafe.hooks.operators``).
        layers: apply only these layers of the vector (default: all of its layers).
        norm_scale: scale alpha per position by ``||h|| / ref`` where ``ref`` is the vector's
            ``meta["hidden_norms"][layer]`` (mean hidden-state norm at calibration), so the shift
            keeps its size relative to the hidden state it is added to.
    """
    if isinstance(positions, str) and positions not in POSITION_MODES:
        raise ConfigError(
            f"positions={positions!r} is not one of {', '.join(POSITION_MODES)} or a boolean mask"
        )
    vector.validate(bundle)
    alphas = vector.alphas(alpha)
    chosen = vector.layers if layers is None else [bundle.check_layer(int(i)) for i in layers]
    missing = [layer for layer in chosen if layer not in vector.vectors]
    if missing:
        raise ConfigError(f"layers {missing} are not in the steering vector (it has {vector.layers})")
    op = OPERATORS.get(operator)
    ref_norms: dict[int, float] = {}
    if norm_scale:
        norms = vector.meta.get("hidden_norms")
        if not isinstance(norms, dict):
            raise ConfigError(
                "norm_scale=True needs meta['hidden_norms'] (per-layer mean hidden-state norms)"
            )
        ref_norms = {int(k): float(v) for k, v in norms.items()}
        lacking = [layer for layer in chosen if layer not in ref_norms]
        if lacking:
            raise ConfigError(f"norm_scale=True: meta['hidden_norms'] lacks layers {lacking}")
    ctx = CallContext()
    handles = [outer_pre_hook(bundle.model, ctx)]
    with registered(handles):
        for layer in chosen:
            hook = LayerSteer(
                vector.vectors[layer],
                alphas[layer],
                op,
                ctx,
                positions,
                prefill_only,
                ref_norms.get(layer) if norm_scale else None,
            )
            # prepend: run before any observer (transformers records hidden states with its own
            # forward hooks), so that output_hidden_states and our recorders see the steered state.
            handles.append(bundle.layers[layer].register_forward_hook(hook, prepend=True))
        yield

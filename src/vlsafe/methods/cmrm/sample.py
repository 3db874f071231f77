"""Sample-level CMRM: a vector for each input, computed on the fly and applied to that row only.

For a batch of (query, image) inputs, two extra batched prefill passes (text only; query with the
corrupted image) give ``v_l = h_l(text) - h_l(corrupted)`` per row (``[B, H]``); generation then adds
``alpha * v_l`` to each row's own hidden states. No Python loop over samples.

Two ways to use it::

    with SampleLevelCMRM(bundle, alpha=1.0) as cmrm:
        out = cmrm.generate(queries, images=images, max_new_tokens=64)   # explicit

    with SampleLevelCMRM(bundle, alpha=1.0, auto=True) as cmrm:        # e.g. as a run_eval intervention
        cmrm.before_batch(queries, images)    # the runner makes this call before every batch
        model.generate(**build_inputs(bundle, queries, images=images).inputs)

``auto=True`` computes the vectors in ``before_batch`` (the runner's batch-observer protocol,
:mod:`vlsafe.evals.interventions`): the following model calls are steered with them; a batch announced
without images is not steered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector
from vlsafe.hooks.apply import LayerSteer
from vlsafe.hooks.operators import OPERATORS
from vlsafe.hooks.plumbing import CallContext, outer_pre_hook, registered
from vlsafe.hooks.vector import Alpha
from vlsafe.methods.cmrm.apply import LayerSpec, resolve_steer_layers
from vlsafe.methods.cmrm.calibrate import POSITIONS, _check_choice, variant_differences
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import InputItem, as_input_items, build_inputs

__all__ = ["SampleLevelCMRM"]


class SampleLevelCMRM:
    """Context manager: per-input CMRM vectors, applied per row.

    Args:
        bundle: a vision-language model.
        alpha: strength (scalar, per steered layer in order, or ``{layer: alpha}``).
        layers: steered layers: ``"middle"`` (default band), ``"all"``, an index or a list.
        delta: add per-layer increments ``v_l - v_{l-1}`` inside the steered layers.
        norm_scale: scale alpha by ``||h|| / mean ||h||`` of the batch's corrupted-image pass.
        positions: ``"all"`` tokens or ``"last"`` of each call.
        prefill_only: steer only the prompt pass.
        corrupt: the image of the second pass (``image``: the input's own image; ``blank``, ``noise``,
            ``mean``). With ``image`` and ``alpha = 1`` at one layer, the steered state at the
            calibration position equals the text-only state there.
        vector_positions: where the difference is measured: ``"last"`` or ``"text_mean"``.
        auto: compute vectors in ``before_batch`` for each announced batch (see the module docstring).
        seed: seed of noise images.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        alpha: Alpha = 1.0,
        *,
        layers: LayerSpec | Sequence[int] | None = "middle",
        delta: bool = True,
        norm_scale: bool = False,
        positions: str = "all",
        prefill_only: bool = False,
        corrupt: str = "image",
        vector_positions: str = "last",
        auto: bool = False,
        seed: int = 0,
    ) -> None:
        if not bundle.is_vlm:
            raise InputError(
                f"sample-level CMRM needs a vision-language model; {bundle.name!r} takes no images"
            )
        _check_choice("vector_positions", vector_positions, POSITIONS)
        if positions not in ("all", "last"):
            raise ConfigError(f"positions={positions!r} is not one of all, last")
        self.bundle = bundle
        self.layers = resolve_steer_layers(layers, bundle.num_layers, range(bundle.num_layers))
        self.alpha = alpha
        self._alphas = SteeringVector({i: torch.zeros(1) for i in self.layers}).alphas(alpha)
        self.delta = delta
        self.norm_scale = norm_scale
        self.positions = positions
        self.prefill_only = prefill_only
        self.corrupt = corrupt
        self.vector_positions = vector_positions
        self.auto = auto
        self.seed = seed
        self.vector: SteeringVector | None = None
        self.n_computed = 0
        self._busy = False
        self._active = False
        self._hooks: dict[int, LayerSteer] = {}
        self._ctx = CallContext()
        self._handles: list[Any] = []
        self._registration: Any = None

    # -- vectors ---------------------------------------------------------------------------
    def compute(self, items: Sequence[Any], images: Sequence[Any] | None = None) -> SteeringVector:
        """Per-row vectors ``[B, H]`` for these inputs (two batched prefill passes, never steered)."""
        rows = as_input_items(items, images, None)
        self._busy = True
        try:
            diffs, norms = variant_differences(
                self.bundle,
                rows,
                corrupt=self.corrupt,
                positions=self.vector_positions,
                layers=self.layers,
                seed=self.seed,
            )
        finally:
            self._busy = False
        meta = {
            "method": "cmrm",
            "level": "sample",
            "corrupt": self.corrupt,
            "positions": self.vector_positions,
            "model": self.bundle.name,
            "num_layers": self.bundle.num_layers,
            "hidden_norms": {layer: float(n.mean()) for layer, n in norms.items()},
        }
        self.n_computed += len(rows)
        return SteeringVector(diffs, meta)

    def prepare(self, items: Sequence[Any], images: Sequence[Any] | None = None) -> SteeringVector:
        """Compute the vectors for the next batch (same rows, same order) and steer with them."""
        self.set_vector(self.compute(items, images))
        assert self.vector is not None
        return self.vector

    def set_vector(self, vector: SteeringVector | None) -> None:
        """Steer the following calls with ``vector`` (per-row ``[B, H]`` or shared ``[H]``); None: stop."""
        self.vector = vector
        self._hooks = {}
        if vector is None:
            return
        applied = vector.subset(self.layers)
        applied = applied.layer_deltas() if self.delta else applied
        norms = {int(k): float(v) for k, v in (vector.meta.get("hidden_norms") or {}).items()}
        if self.norm_scale and any(layer not in norms for layer in self.layers):
            raise ConfigError(
                "norm_scale=True needs meta['hidden_norms'] for every steered layer of the vector"
            )
        op = OPERATORS.get("add")
        for layer in self.layers:
            ref = norms[layer] if self.norm_scale else None
            self._hooks[layer] = LayerSteer(
                applied.vectors[layer],
                self._alphas[layer],
                op,
                self._ctx,
                self.positions,
                self.prefill_only,
                ref,
            )

    def generate(
        self, items: Sequence[Any], images: Sequence[Any] | None = None, **gen_kwargs: Any
    ) -> torch.Tensor:
        """Build the image batch, compute its vectors and ``generate`` with them (returns new token ids)."""
        if not self._active:
            raise ConfigError("SampleLevelCMRM.generate must be called inside its `with` block")
        batch = build_inputs(self.bundle, items, variant="image", images=images, seed=self.seed)
        self.prepare(items, images)
        inputs = batch.to(self.bundle.device).inputs
        model: Any = self.bundle.model
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
        return out[:, inputs["input_ids"].shape[1] :]

    # -- hooks -----------------------------------------------------------------------------
    def _layer_hook(self, layer: int):  # noqa: ANN202 - forward hook closure
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self._busy:
                return None
            steer = self._hooks.get(layer)
            return None if steer is None else steer(module, args, output)

        return hook

    def before_batch(self, texts: Sequence[str], images: Sequence[Any] | None) -> None:
        """Batch-observer protocol: with ``auto``, compute vectors for the batch about to be generated.

        ``texts`` are the rows' queries in order and ``images`` their images (``None``: a text-only
        batch, which is not steered).
        """
        if not self.auto:
            return
        if not self._active:
            raise ConfigError("SampleLevelCMRM.before_batch must be called inside its `with` block")
        if images is None:
            self.set_vector(None)
        else:
            self.prepare([InputItem(t) for t in texts], images)

    # -- context ---------------------------------------------------------------------------
    def __enter__(self) -> SampleLevelCMRM:
        if self._active:
            raise ConfigError("this SampleLevelCMRM context is already open")
        model = self.bundle.model
        self._handles = [outer_pre_hook(model, self._ctx)]
        for layer in self.layers:
            self._handles.append(
                self.bundle.layers[layer].register_forward_hook(self._layer_hook(layer), prepend=True)
            )
        self._registration = registered(self._handles)
        self._registration.__enter__()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        try:
            self._registration.__exit__(None, None, None)
        finally:
            self.set_vector(None)

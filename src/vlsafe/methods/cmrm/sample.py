"""Sample-level CMRM: a vector for each input, computed on the fly and applied to that row only.

For a batch of (query, image) inputs, two extra batched prefill passes (text only; query with the
corrupted image) give ``v_l = h_l(text) - h_l(corrupted)`` per row (``[B, H]``); generation then adds
``alpha * v_l`` to each row's own hidden states. No Python loop over samples.

Two ways to use it::

    with SampleLevelCMRM(bundle, alpha=1.0) as cmrm:                   # the paper preset's options
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

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector
from vlsafe.hooks.vector import Alpha
from vlsafe.methods.cmrm.apply import LayerSpec, resolve_steer_layers
from vlsafe.methods.cmrm.calibrate import CORRUPTIONS, POSITIONS, variant_differences
from vlsafe.methods.cmrm.steering import SteerHooks, check_choice
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import InputItem, as_input_items, build_inputs

__all__ = ["SampleLevelCMRM"]


class SampleLevelCMRM:
    """Context manager: per-input CMRM vectors, applied per row.

    Args:
        bundle: a vision-language model.
        alpha: strength (scalar, per steered layer in order, or ``{layer: alpha}``).
        layers: steered layers: ``"all"`` (default, the paper), ``"middle"`` (vlsafe's band), an index or a list.
        delta: add per-layer increments ``v_l - v_{l-1}`` inside the steered layers (vlsafe's option).
        norm_scale: scale alpha by ``||h|| / mean ||h||`` of the batch's corrupted-image pass.
        positions: ``"all"`` tokens, ``"last"`` of each call, or the query's ``"text"`` span.
        when: ``"every"`` (prompt and decoded tokens) or ``"prefill"`` (prompt only).
        prefill_only: the earlier spelling of ``when="prefill"`` (``True``) / ``"every"`` (``False``).
        corrupt: the image of the second pass: ``blank`` (default, the paper's meaningless image), ``noise``,
            ``image`` (the input's own image) or ``mean``. With ``image`` and ``alpha = 1`` at one layer, the
            steered state at the calibration position equals the text-only state there.
        vector_positions: where the difference is measured: ``"last"`` or ``"text_mean"``.
        auto: compute vectors in ``before_batch`` for each announced batch (see the module docstring).
        seed: seed of noise images.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        alpha: Alpha = 1.0,
        *,
        layers: LayerSpec | Sequence[int] | None = "all",
        delta: bool = False,
        norm_scale: bool = False,
        positions: str = "all",
        when: str | None = None,
        prefill_only: bool | None = None,
        corrupt: str = "blank",
        vector_positions: str = "last",
        auto: bool = False,
        seed: int = 0,
    ) -> None:
        if not bundle.is_vlm:
            raise InputError(
                f"sample-level CMRM needs a vision-language model; {bundle.name!r} takes no images"
            )
        check_choice("vector_positions", vector_positions, POSITIONS)
        check_choice("corrupt", corrupt, CORRUPTIONS)
        legacy = None if prefill_only is None else ("prefill" if prefill_only else "every")
        if when is not None and legacy is not None and when != legacy:
            raise ConfigError(f"prefill_only={prefill_only} and when={when!r} disagree: give when only")
        when = when or legacy or "every"
        self.bundle = bundle
        self.layers = resolve_steer_layers(layers, bundle.num_layers, range(bundle.num_layers))
        self.alpha = alpha
        self.delta = delta
        self.norm_scale = norm_scale
        self.positions = positions
        self.when = when
        self.corrupt = corrupt
        self.vector_positions = vector_positions
        self.auto = auto
        self.seed = seed
        self.vector: SteeringVector | None = None
        self.n_computed = 0
        self._active = False
        self._hooks = SteerHooks(
            bundle, self.layers, alpha, positions=positions, when=when, norm_scale=norm_scale
        )

    # -- vectors ---------------------------------------------------------------------------
    def compute(self, items: Sequence[Any], images: Sequence[Any] | None = None) -> SteeringVector:
        """Per-row vectors ``[B, H]`` for these inputs (two batched prefill passes, never steered)."""
        rows = as_input_items(items, images, None)
        self._hooks.busy = True
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
            self._hooks.busy = False
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
        """Compute the vectors for the next batch (same rows, same order) and steer with them (with positions
        ``text``, also that batch's text-span mask)."""
        if self.positions == "text":
            batch = build_inputs(self.bundle, items, variant="image", images=images, seed=self.seed)
            self._hooks.set_text_mask(batch.masks.text)
        self.set_vector(self.compute(items, images))
        assert self.vector is not None
        return self.vector

    def set_vector(self, vector: SteeringVector | None) -> None:
        """Steer the following calls with ``vector`` (per-row ``[B, H]`` or shared ``[H]``); None: stop."""
        self.vector = vector
        if vector is None:
            self._hooks.set_vector(None)
            return
        applied = vector.subset(self.layers)
        self._hooks.set_vector(applied.layer_deltas() if self.delta else applied)

    def set_text_mask(self, mask: torch.Tensor | None) -> None:
        """Positions ``text``: the ``[B, T]`` text-span mask of the next batch (``prepare`` sets it itself)."""
        self._hooks.set_text_mask(mask)

    def generate(
        self, items: Sequence[Any], images: Sequence[Any] | None = None, **gen_kwargs: Any
    ) -> torch.Tensor:
        """Build the image batch, compute its vectors and ``generate`` with them (returns new token ids)."""
        if not self._active:
            raise ConfigError("SampleLevelCMRM.generate must be called inside its `with` block")
        batch = build_inputs(self.bundle, items, variant="image", images=images, seed=self.seed)
        if self.positions == "text":
            self._hooks.set_text_mask(batch.masks.text)
        self.set_vector(self.compute(items, images))
        inputs = batch.to(self.bundle.device).inputs
        model: Any = self.bundle.model
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
        return out[:, inputs["input_ids"].shape[1] :]

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
        self._hooks.__enter__()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        try:
            self._hooks.__exit__(None, None, None)
        finally:
            self.vector = None

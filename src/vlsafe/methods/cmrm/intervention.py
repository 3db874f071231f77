"""``CMRMIntervention``: CMRM as an intervention for :func:`vlsafe.evals.run_eval`.

Dataset level (a vector file or ``SteeringVector``) or sample level (``"sample"``). Its
``fingerprint`` holds the vector's content hash and every application option, so a run directory
resumed with another alpha, layer choice or vector is refused instead of silently mixing generations;
it listens to the runner's ``before_batch`` announcements (see :mod:`vlsafe.evals.interventions`): at sample
level to compute each batch's vectors (:class:`SampleLevelCMRM`), and with positions ``text`` to take each batch's
text-span mask.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm.apply import ApplyOptions, steer_hooks
from vlsafe.methods.cmrm.calibrate import check_compatible
from vlsafe.methods.cmrm.sample import SampleLevelCMRM
from vlsafe.methods.cmrm.steering import SteerHooks
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import build_inputs

__all__ = ["CMRMIntervention", "vector_hash"]


def vector_hash(vector: SteeringVector) -> str:
    """16-hex-digit hash of a vector's layers and values."""
    h = hashlib.sha256()
    for layer in vector.layers:
        h.update(str(layer).encode())
        h.update(vector.vectors[layer].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class CMRMIntervention:
    """A reusable context manager applying CMRM to ``bundle``.

    Args:
        bundle: the model the runner will use (pass the same bundle to ``run_eval``).
        cmrm: ``"sample"`` for sample-level CMRM, else a vector path or ``SteeringVector``.
        options: :class:`ApplyOptions` (or a dict of its fields).
        corrupt: sample level only: the image of the corrupted pass (``blank``, the default, ``noise``,
            ``image``, ``mean``).
        vector_positions: sample level only: ``last`` or ``text_mean``.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        cmrm: str | Path | SteeringVector,
        options: ApplyOptions | dict[str, Any] | None = None,
        *,
        corrupt: str = "blank",
        vector_positions: str = "last",
    ) -> None:
        self.bundle = bundle
        self.options = options if isinstance(options, ApplyOptions) else ApplyOptions(**(options or {}))
        self.corrupt = corrupt
        self.vector_positions = vector_positions
        self.sample_level = isinstance(cmrm, str) and cmrm == "sample"
        self.vector: SteeringVector | None = None
        if not self.sample_level:
            if isinstance(cmrm, SteeringVector):
                self.vector = cmrm
            else:
                self.vector = SteeringVector.load(cmrm)
            check_compatible(self.vector, bundle)
            source = f"vector:{vector_hash(self.vector)}"
        else:
            source = f"sample:corrupt={corrupt},positions={vector_positions}"
        self.fingerprint = f"CMRM[{source};{self.options.describe()}]"
        self._stack: ExitStack | None = None
        self.sampler: SampleLevelCMRM | None = None
        self._steering: SteerHooks | None = None

    def __enter__(self) -> CMRMIntervention:
        if self._stack is not None:
            raise ConfigError("this CMRM intervention is already active")
        o = self.options
        stack = ExitStack()
        try:
            if self.sample_level:
                self.sampler = SampleLevelCMRM(
                    self.bundle,
                    o.alpha,
                    layers=o.layers,
                    delta=o.delta,
                    norm_scale=o.norm_scale,
                    positions=o.positions,
                    when=o.when,
                    corrupt=self.corrupt,
                    vector_positions=self.vector_positions,
                    auto=True,
                )
                stack.enter_context(self.sampler)
            else:
                assert self.vector is not None
                self._steering = steer_hooks(
                    self.bundle,
                    self.vector,
                    o.alpha,
                    layers=o.layers,
                    delta=o.delta,
                    norm_scale=o.norm_scale,
                    positions=o.positions,
                    when=o.when,
                )
                stack.enter_context(self._steering)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def before_batch(self, texts: Any, images: Any) -> None:
        """Runner protocol: compute sample-level vectors for the batch about to be generated; with positions
        ``text`` at dataset level, take the batch's text-span mask."""
        if self._stack is None:
            return
        if self.sampler is not None:
            self.sampler.before_batch(texts, images)
        elif self._steering is not None and self.options.positions == "text":
            variant = "text" if images is None else "image"
            batch = build_inputs(self.bundle, list(texts), variant=variant, images=images)
            self._steering.set_text_mask(batch.masks.text)

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

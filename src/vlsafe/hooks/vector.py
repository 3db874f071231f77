"""``SteeringVector``: one vector per decoder layer, with metadata, arithmetic and I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.paths import safetensors_with_sidecar
from vlsafe.core.tensor_files import load_tensors, save_tensors
from vlsafe.hooks.apply import steer

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from vlsafe.models.bundle import ModelBundle

Alpha = float | Sequence[float] | Mapping[int, float]

#: the ``format`` in the header of a saved steering vector
VECTOR_FORMAT = "vlsafe.steering_vector"


@dataclass
class SteeringVector:
    """Per-layer steering vectors.

    Attributes:
        vectors: layer index -> tensor ``[H]`` (one vector for every row) or ``[B, H]`` (one per
            row of the batch it will be applied to; used by sample-level CMRM).
        meta: provenance (model, method, options, date, ...). JSON-serialisable.
    """

    vectors: dict[int, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ConfigError("a steering vector needs at least one layer")
        sizes = {v.shape[-1] for v in self.vectors.values()}
        if len(sizes) != 1:
            raise InputError(f"steering vectors have different hidden sizes across layers: {sorted(sizes)}")
        for layer, v in self.vectors.items():
            if v.dim() not in (1, 2):
                raise InputError(
                    f"layer {layer}: a steering vector must be [H] or [B, H], got shape {tuple(v.shape)}"
                )

    # -- properties ------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).shape[-1])

    def norms(self) -> dict[int, float]:
        """L2 norm per layer (mean over rows for per-row vectors)."""
        return {k: float(v.float().norm(dim=-1).mean()) for k, v in sorted(self.vectors.items())}

    def validate(self, bundle: ModelBundle | None = None) -> None:
        """Check values are finite and, with a bundle, that layers and hidden size fit the model."""
        for layer, v in self.vectors.items():
            if not torch.isfinite(v).all():
                raise InputError(f"steering vector for layer {layer} contains NaN or inf values")
        if bundle is not None:
            if self.hidden_size != bundle.hidden_size:
                raise InputError(
                    f"steering vector hidden size {self.hidden_size} does not match the model's "
                    f"hidden size {bundle.hidden_size}"
                )
            for layer in self.layers:
                bundle.check_layer(layer)

    # -- arithmetic ------------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        layers = sorted(set(self.vectors) | set(other.vectors))
        out: dict[int, torch.Tensor] = {}
        for layer in layers:
            a = self.vectors.get(layer)
            b = other.vectors.get(layer)
            if a is None:
                assert b is not None
                out[layer] = b * sign
            elif b is None:
                out[layer] = a.clone()
            else:
                out[layer] = a + sign * b
        return SteeringVector(out, {"derived": "combination"})

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> SteeringVector:
        return SteeringVector({k: v * float(scalar) for k, v in self.vectors.items()}, dict(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def subset(self, layers: Sequence[int]) -> SteeringVector:
        """Only the given layers."""
        missing = [layer for layer in layers if layer not in self.vectors]
        if missing:
            raise ConfigError(f"layers {missing} are not in this steering vector (it has {self.layers})")
        return SteeringVector({layer: self.vectors[layer] for layer in layers}, dict(self.meta))

    def layer_deltas(self) -> SteeringVector:
        """Per-layer increments ``v_l - v_{l-1}`` (the first layer keeps ``v_l``).

        Adding every layer's vector at every layer accumulates through the residual stream;
        adding the increments instead makes the shift at layer ``l`` add up to ``v_l``.
        """
        out: dict[int, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        for layer in self.layers:
            v = self.vectors[layer]
            out[layer] = v.clone() if prev is None else v - prev
            prev = v
        meta = dict(self.meta)
        meta["layer_deltas"] = True
        return SteeringVector(out, meta)

    def alphas(self, alpha: Alpha) -> dict[int, float]:
        """Resolve ``alpha`` (scalar, per-layer sequence in layer order, or mapping) per layer."""
        if isinstance(alpha, (int, float)):
            values = {layer: float(alpha) for layer in self.layers}
        elif isinstance(alpha, Mapping):
            unknown = sorted(set(alpha) - set(self.vectors))
            if unknown:
                raise ConfigError(
                    f"alpha given for layers {unknown} that the vector does not have ({self.layers})"
                )
            values = {layer: float(alpha.get(layer, 0.0)) for layer in self.layers}
        else:
            seq = list(alpha)
            if len(seq) != len(self.layers):
                raise ConfigError(
                    f"alpha has {len(seq)} values but the vector has {len(self.layers)} layers; "
                    "give one alpha per layer (in layer order) or a scalar"
                )
            values = {layer: float(a) for layer, a in zip(self.layers, seq, strict=True)}
        bad = {k: a for k, a in values.items() if not math.isfinite(a)}
        if bad:
            raise ConfigError(f"alpha must be finite; got {bad}")
        return values

    # -- application -----------------------------------------------------------------------
    def apply(
        self,
        bundle: ModelBundle,
        alpha: Alpha = 1.0,
        *,
        positions: str | torch.Tensor = "all",
        prefill_only: bool = False,
        operator: str = "add",
        layers: Sequence[int] | None = None,
        norm_scale: bool = False,
    ) -> AbstractContextManager[None]:
        """Steer ``bundle`` while the returned context is open; see ``vlsafe.hooks.apply.steer``."""

        return steer(
            bundle,
            self,
            alpha,
            positions=positions,
            prefill_only=prefill_only,
            operator=operator,
            layers=layers,
            norm_scale=norm_scale,
        )

    # -- I/O -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors, with the metadata in its header) and a ``.json`` sidecar with the
        metadata; each file is replaced atomically (see :mod:`vlsafe.core.tensor_files`)."""
        tensor_path, meta_path = safetensors_with_sidecar(path)
        tensors = {f"layer.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in self.vectors.items()}
        return save_tensors(tensor_path, tensors, format=VECTOR_FORMAT, meta=self.meta, sidecar=meta_path)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Load what ``save`` wrote; checks names, shapes and finiteness.

        Raises:
            InputError: a missing, corrupt or truncated file, metadata that is not a JSON object, tensors not
                named ``layer.<index>``, or vectors that are not finite ``[H]`` vectors of one width.
        """
        tensor_path, meta_path = safetensors_with_sidecar(path)
        raw, meta = load_tensors(tensor_path, "steering vector", sidecar=meta_path)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise InputError(f"{tensor_path}: the metadata must be a JSON object, got {type(meta).__name__}")
        vectors: dict[int, torch.Tensor] = {}
        for key, value in raw.items():
            head, _, idx = key.partition(".")
            if head != "layer" or not idx.isdigit():
                raise InputError(f"{tensor_path}: unexpected tensor {key!r}; expected names 'layer.<index>'")
            vectors[int(idx)] = value
        try:
            vec = cls(vectors, meta)
            vec.validate()
        except (ConfigError, ValueError, IndexError) as exc:
            raise InputError(f"{tensor_path}: {exc}") from None
        return vec

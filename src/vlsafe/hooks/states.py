"""``HiddenStates``: per-layer tensors with metadata, saved as safetensors + JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlsafe.core.errors import InputError
from vlsafe.core.paths import safetensors_with_sidecar
from vlsafe.core.tensor_files import load_tensors, save_tensors


@dataclass
class HiddenStates:
    """Hidden states per decoder layer.

    Attributes:
        states: layer index -> tensor. Shapes depend on how they were captured: ``[N, H]`` (one
            vector per sample), ``[H]`` (running mean over samples) or ``[B, T, H]`` (all positions).
        meta: provenance (model, positions, reduce, variant, ...). JSON-serialisable.
        count: number of samples behind each tensor (for running means).
    """

    states: dict[int, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    count: int = 0

    @property
    def layers(self) -> list[int]:
        return sorted(self.states)

    def __getitem__(self, layer: int) -> torch.Tensor:
        try:
            return self.states[layer]
        except KeyError:
            raise InputError(f"layer {layer} was not captured; captured layers: {self.layers}") from None

    def __len__(self) -> int:
        return len(self.states)

    def stack(self) -> torch.Tensor:
        """All layers stacked on a new first axis (layer order as in ``layers``)."""
        return torch.stack([self.states[layer] for layer in self.layers])

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors, metadata in its header) and its ``.json`` sidecar, each atomically;
        returns the tensor file path."""
        tensor_path, meta_path = safetensors_with_sidecar(path)
        tensors = {f"layer.{k}": v for k, v in self.states.items()}
        side = {"meta": self.meta, "count": self.count}
        return save_tensors(tensor_path, tensors, format="vlsafe.hidden_states", meta=side, sidecar=meta_path)

    @classmethod
    def load(cls, path: str | Path) -> HiddenStates:
        """Load what ``save`` wrote.

        Raises:
            InputError: a missing, corrupt or truncated file, or tensors not named ``layer.<index>``.
        """
        tensor_path, meta_path = safetensors_with_sidecar(path)
        raw, side = load_tensors(tensor_path, "hidden-state", sidecar=meta_path)
        side = side if isinstance(side, dict) else {}
        states: dict[int, torch.Tensor] = {}
        for key, value in raw.items():
            head, _, idx = key.partition(".")
            if head != "layer" or not idx.isdigit():
                raise InputError(f"{tensor_path}: unexpected tensor {key!r}; expected names 'layer.<index>'")
            states[int(idx)] = value
        return cls(states=states, meta=side.get("meta", {}), count=int(side.get("count", 0)))

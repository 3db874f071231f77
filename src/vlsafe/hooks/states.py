"""``HiddenStates``: per-layer tensors with metadata, saved as safetensors + JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json
from vlsafe.core.paths import safetensors_with_sidecar


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
        """Write ``path`` (.safetensors) and its ``.json`` sidecar; returns the tensor file path."""
        tensor_path, meta_path = safetensors_with_sidecar(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{k}": v.detach().to("cpu").contiguous() for k, v in self.states.items()}
        save_file(tensors, str(tensor_path), metadata={"format": "vlsafe.hidden_states"})
        meta_path.write_text(json.dumps({"meta": self.meta, "count": self.count}, indent=2, default=str))
        return tensor_path

    @classmethod
    def load(cls, path: str | Path) -> HiddenStates:
        """Load what ``save`` wrote."""
        tensor_path, meta_path = safetensors_with_sidecar(path)
        if not tensor_path.is_file():
            raise InputError(f"hidden-state file {str(tensor_path)!r} does not exist")
        raw = load_file(str(tensor_path))
        states: dict[int, torch.Tensor] = {}
        for key, value in raw.items():
            if not key.startswith("layer."):
                raise InputError(f"{tensor_path}: unexpected tensor {key!r}; expected names 'layer.<index>'")
            states[int(key.split(".", 1)[1])] = value
        side = read_json(meta_path, "hidden-state sidecar") if meta_path.is_file() else {}
        return cls(states=states, meta=side.get("meta", {}), count=int(side.get("count", 0)))

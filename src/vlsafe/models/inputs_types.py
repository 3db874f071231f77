"""Types shared by input building, capture and steering."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from vlsafe.core.errors import ConfigError


class Variant(str, Enum):
    """The input variants of design section 5.1."""

    IMAGE = "image"  # (o) the query with its own image
    BLANK = "blank"  # (b) the query with a blank (white) image
    MEAN = "mean"  # (b') the query with a mean-colour image of the original
    NOISE = "noise"  # (b'') the query with a Gaussian-noise image
    TEXT = "text"  # (t) text only, image placeholder removed
    CAPTION = "caption"  # (c) the image's caption in place of the image

    @property
    def has_image(self) -> bool:
        return self in (Variant.IMAGE, Variant.BLANK, Variant.MEAN, Variant.NOISE)


@dataclass
class PositionMasks:
    """Per-row boolean masks over the token axis of a batch (shape ``[B, T]``).

    All masks are derived from token ids and the tokenizer, never from fixed offsets.

    Attributes:
        attention: real (non-pad) tokens.
        image: image-feature tokens (the tokens the vision features replace).
        text: the user's query text (and caption, for the caption variant).
        last: the last prompt token of each row (exactly one True per row).
    """

    attention: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor
    last: torch.Tensor

    def get(self, name: str) -> torch.Tensor:
        if name not in ("attention", "image", "text", "last"):
            raise ConfigError(f"unknown position mask {name!r}; known: attention, image, text, last")
        return getattr(self, name)

    def to(self, device: torch.device | str) -> PositionMasks:
        return PositionMasks(*(m.to(device) for m in (self.attention, self.image, self.text, self.last)))


@dataclass
class BatchInputs:
    """Model-ready tensors for a batch plus the position masks and provenance.

    ``inputs`` is passed as ``model(**batch.inputs)`` or ``model.generate(**batch.inputs)``.
    """

    inputs: dict[str, Any]
    masks: PositionMasks
    variant: Variant
    prompts: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> BatchInputs:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.inputs.items()}
        return BatchInputs(moved, self.masks.to(device), self.variant, list(self.prompts))

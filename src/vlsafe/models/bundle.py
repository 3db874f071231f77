"""``ModelBundle``: a loaded model with everything vlsafe needs to drive it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlsafe.core.errors import ConfigError


@dataclass
class ModelBundle:
    """A model, its processor/tokenizer, its decoder layers and its family.

    Attributes:
        model: the ``PreTrainedModel`` (image-text-to-text or causal LM).
        tokenizer: the tokenizer (for a VLM, the processor's tokenizer).
        processor: the multimodal processor, or ``None`` for a text-only LLM.
        family: a key of ``vlsafe.models.FAMILIES`` ("llava", "qwen2_vl", ..., "causal_lm").
        layers: the decoder layers, in order (``model.get_decoder().layers`` or a user override).
        name: the id or path the model was loaded from.
        image_token_id: id of the token that stands for one image patch/feature, if any.
        extra: family-specific facts (image size, tokens per image, ...).
    """

    model: nn.Module
    tokenizer: Any
    processor: Any | None
    family: str
    layers: nn.ModuleList | list[nn.Module]
    name: str = ""
    image_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_vlm(self) -> bool:
        """Whether the model takes images."""
        return self.processor is not None and self.image_token_id is not None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def text_config(self) -> Any:
        cfg: Any = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check_layer(self, index: int) -> int:
        """Return ``index`` normalised to ``0..num_layers-1`` or raise a clear error."""

        n = self.num_layers
        if not isinstance(index, int) or not -n <= index < n:
            raise ConfigError(
                f"layer index {index!r} is out of range: this model has {n} decoder layers (0..{n - 1})"
            )
        return index % n

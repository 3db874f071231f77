"""``inspect_model``: the facts ``vlsafe inspect`` prints about a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import build_inputs
from vlsafe.models.inputs_types import Variant
from vlsafe.models.loading import load_model

#: Side of the standard image used to measure image tokens per image.
STANDARD_IMAGE_SIDE = 336


def image_tokens_per_image(bundle: ModelBundle, side: int = STANDARD_IMAGE_SIDE) -> int | None:
    """Image tokens one ``side`` x ``side`` image becomes, measured by building one input; ``None`` for LLMs."""
    if not bundle.is_vlm:
        return None

    image = Image.new("RGB", (side, side), (128, 128, 128))
    batch = build_inputs(bundle, [{"text": "Describe the image.", "image": image}], Variant.IMAGE)
    return int(batch.masks.image.sum())


def inspect_model(model: str | Path | ModelBundle, **load_kwargs: Any) -> dict[str, Any]:
    """Summarise a model: family, model_type, layers, sizes, image tokens per image, dtype, parameters.

    Args:
        model: a model directory, hub id, or an already loaded :class:`ModelBundle`.
        **load_kwargs: passed to :func:`vlsafe.models.load_model` when ``model`` is not a bundle.
    """

    bundle = model if isinstance(model, ModelBundle) else load_model(model, **load_kwargs)
    text_cfg = bundle.text_config
    return {
        "name": bundle.name,
        "family": bundle.family,
        "model_type": bundle.extra.get("model_type") or getattr(bundle.model.config, "model_type", None),
        "model_class": type(bundle.model).__name__,
        "is_vlm": bundle.is_vlm,
        "num_layers": bundle.num_layers,
        "hidden_size": bundle.hidden_size,
        "vocab_size": int(getattr(text_cfg, "vocab_size", len(bundle.tokenizer))),
        "tokenizer_size": len(bundle.tokenizer),
        "image_token_id": bundle.image_token_id,
        "image_tokens_per_image": image_tokens_per_image(bundle),
        "standard_image_side": STANDARD_IMAGE_SIDE if bundle.is_vlm else None,
        "dtype": str(bundle.dtype).removeprefix("torch."),
        "device": str(bundle.device),
        "params": sum(p.numel() for p in bundle.model.parameters()),
    }

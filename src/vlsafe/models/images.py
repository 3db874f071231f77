"""Images for the image variants: the given image, blank, mean-colour and seeded Gaussian noise."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vlsafe.core.errors import InputError
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs_types import Variant
from vlsafe.models.loading import load_image

#: Side of the blank/noise image for processors without a fixed input size (Qwen2-VL dynamic resolution).
DEFAULT_IMAGE_SIDE = 224

#: Mean and standard deviation (0-255 scale) of the Gaussian-noise image.
NOISE_MEAN = 127.5
NOISE_STD = 64.0


def processor_image_size(bundle: ModelBundle) -> tuple[int, int]:
    """The (height, width) a blank or noise image gets: the processor's fixed input size.

    ``crop_size`` or ``size`` height/width when set; ``shortest_edge``/``longest_edge`` as a square; for
    dynamic-resolution processors (Qwen2-VL, whose ``size`` holds pixel counts) ``DEFAULT_IMAGE_SIDE``
    clamped to the processor's pixel range.
    """
    ip = getattr(bundle.processor, "image_processor", None)
    for attr in ("crop_size", "size"):
        size = getattr(ip, attr, None)
        if isinstance(size, dict) and "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
    size = getattr(ip, "size", None) or {}
    if bundle.family in ("qwen2_vl", "qwen2_5_vl"):
        lo = int(size.get("shortest_edge", 0)) or 1
        hi = int(size.get("longest_edge", 0)) or DEFAULT_IMAGE_SIDE**2
        area = min(max(DEFAULT_IMAGE_SIDE**2, lo), hi)
        side = int(round(area**0.5))
        return side, side
    for key in ("shortest_edge", "longest_edge"):
        if key in size:
            return int(size[key]), int(size[key])
    return DEFAULT_IMAGE_SIDE, DEFAULT_IMAGE_SIDE


def make_variant_image(bundle: ModelBundle, image: Any, variant: Variant, *, seed: int, index: int) -> Any:
    """Return the PIL image row ``index`` gets under ``variant``.

    Args:
        bundle: the model (for the processor's image size).
        image: the item's image (path or PIL), needed by ``image`` and ``mean``.
        variant: an image variant.
        seed: seed of the noise image.
        index: row index, for error messages.
    """

    if variant in (Variant.IMAGE, Variant.MEAN):
        if image is None:
            raise InputError(f"item {index} has no image, which the {variant.value!r} variant needs")
        pil = load_image(image)
        if variant is Variant.IMAGE:
            return pil
        mean = np.asarray(pil, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        colour = tuple(int(round(c)) for c in mean)
        return Image.new("RGB", pil.size, colour)
    h, w = processor_image_size(bundle)
    if variant is Variant.BLANK:
        return Image.new("RGB", (w, h), (255, 255, 255))
    if variant is Variant.NOISE:
        rng = np.random.default_rng(seed)
        pixels = rng.normal(NOISE_MEAN, NOISE_STD, size=(h, w, 3)).clip(0, 255).astype(np.uint8)
        return Image.fromarray(pixels, "RGB")
    raise InputError(f"variant {variant.value!r} has no image")

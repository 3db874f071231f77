"""Image settings: produce the (text, image) pair a model sees for a sample under an ``ImageSetting``.

Control images (blank, mean colour, seeded Gaussian noise), provided images (loaded safely from the data
directory), captions in place of images, and the typographic attacks of ``vlsafe.evals.attacks``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlsafe.core.errors import InputError
from vlsafe.core.paths import check_relative_path
from vlsafe.evals.attacks import (
    FIGSTEP_PROMPT,
    MMSB_TYPO_PROMPT,
    key_phrase,
    render_figstep,
    render_mmsb_composite,
    render_typography,
)
from vlsafe.evals.sample import ImageSetting, Sample
from vlsafe.models.loading import open_image

DEFAULT_SIZE = 336
FIGSTEP_SIZE = 760
TYPO_WIDTH = 1024


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, int) else size
    if w < 1 or h < 1:
        raise InputError(f"image size {size!r} must be positive")
    return int(w), int(h)


def blank_image(size: int | tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """An all-white RGB image."""
    return Image.new("RGB", _size(size), (255, 255, 255))


def mean_colour(image: Image.Image) -> tuple[int, int, int]:
    """Per-channel mean of an image's RGB pixels, rounded to integers."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    return tuple(int(round(v)) for v in arr.reshape(-1, 3).mean(axis=0))  # type: ignore[return-value]


def mean_colour_image(image: Image.Image, size: int | tuple[int, int] | None = None) -> Image.Image:
    """A flat image in the mean colour of ``image`` (its own size unless ``size`` is given)."""
    return Image.new("RGB", _size(size) if size is not None else image.size, mean_colour(image))


def noise_image(
    size: int | tuple[int, int] = DEFAULT_SIZE, seed: int = 0, *, mean: float = 127.5, std: float = 64.0
) -> Image.Image:
    """Gaussian noise N(mean, std) per pixel and channel, clipped to [0, 255]; equal seeds give equal images."""
    w, h = _size(size)
    rng = np.random.default_rng(seed)
    arr = np.clip(np.rint(rng.normal(mean, std, size=(h, w, 3))), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def load_image(data_dir: Path | str | None, relpath: str) -> Image.Image:
    """Open ``data_dir / relpath`` as RGB; rejects paths escaping ``data_dir`` and names missing files.

    Raises:
        InputError: the path escapes ``data_dir``, the file is missing, or it is not a readable image (corrupt,
            truncated, or a decompression bomb).
    """
    if data_dir is None:
        raise InputError(f"image {relpath!r} needs a data directory to be resolved; none was given")
    try:
        rel = check_relative_path(relpath)
    except ValueError as err:
        raise InputError(str(err)) from None
    root = Path(data_dir).expanduser().resolve()
    path = (root / rel).resolve()
    if root != path and root not in path.parents:  # a symlink pointing outside
        raise InputError(f"image path {relpath!r} resolves outside the data directory {str(root)!r}")
    if not path.is_file():
        raise InputError(f"image file {str(path)!r} does not exist")
    image: Image.Image = open_image(path)
    return image


def caption_prompt(caption: str, text: str) -> str:
    """Text that stands in for an image: the caption, then the request."""
    return f"Image description: {caption.strip()}\n\n{text}"


def sample_seed(sample: Sample, seed: int = 0) -> int:
    """A per-sample seed derived from ``seed``, the benchmark, the id and the text."""
    blob = f"{seed}\x00{sample.benchmark}\x00{sample.id}\x00{sample.text}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def setting_text(sample: Sample, setting: ImageSetting | str | None = None) -> str:
    """The prompt text a model is shown for ``sample`` under ``setting`` (the text part of
    :func:`apply_image_setting`, without rendering an image).

    Raises:
        InputError: the caption setting on a sample without a caption.
    """
    setting = ImageSetting(setting) if setting is not None else sample.image_setting
    if setting == ImageSetting.CAPTION:
        if not sample.caption:
            raise InputError(f"sample {sample.id!r} has no caption, which image setting 'caption' needs")
        return caption_prompt(sample.caption, sample.text)
    if setting == ImageSetting.FIGSTEP:
        return FIGSTEP_PROMPT
    if setting in (ImageSetting.MMSB_TYPO, ImageSetting.MMSB_SD_TYPO):
        return MMSB_TYPO_PROMPT
    return sample.text


def image_identity(
    sample: Sample, setting: ImageSetting | str | None = None, *, size: int | tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[Any, ...] | None:  # fmt: skip
    """A key that is equal for two samples exactly when :func:`apply_image_setting` shows them the same image
    (by construction, without rendering it); ``None`` when the setting shows no image.

    Equal keys: the blank image of one size; a provided (or mean-colour) image of one path; one typographic
    rendering of the same text. Seeded noise is per sample.
    """
    setting = ImageSetting(setting) if setting is not None else sample.image_setting
    if setting in (ImageSetting.NONE, ImageSetting.CAPTION):
        return None
    if setting == ImageSetting.BLANK:
        return (setting.value, size)
    if setting == ImageSetting.NOISE:
        return (setting.value, size, sample_seed(sample, seed))
    if setting == ImageSetting.FIGSTEP:
        return (setting.value, size, str(sample.metadata.get("instruction") or sample.request))
    if setting == ImageSetting.MMSB_TYPO:
        return (setting.value, size, str(sample.metadata.get("key_phrase") or key_phrase(sample.request)))
    if setting == ImageSetting.MMSB_SD_TYPO:
        phrase = sample.metadata.get("key_phrase") or key_phrase(sample.request)
        return (setting.value, size, sample.image, str(phrase))
    return (setting.value, size, sample.image)


def apply_image_setting(
    sample: Sample,
    setting: ImageSetting | str | None = None,
    *,
    data_dir: Path | str | None = None,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[str, Image.Image | None]:
    """Return the prompt text and image (or ``None``) a model sees for ``sample`` under ``setting``.

    Args:
        sample: the sample; its ``image`` is resolved against ``data_dir`` when needed.
        setting: overrides ``sample.image_setting`` when given.
        data_dir: the benchmark's data directory (needed by provided, mean and mmsb_sd_typo).
        size: output size; defaults are 336 px (blank, noise), the source size (mean, provided: left
            unchanged), 760 px (figstep) and 1024 px wide (mmsb typography).
        seed: base seed for noise; each sample derives its own seed from it (see ``sample_seed``).

    Raises:
        InputError: when the setting needs something the sample lacks (an image, a caption).
    """
    setting = ImageSetting(setting) if setting is not None else sample.image_setting
    text = setting_text(sample, setting)
    if setting in (ImageSetting.NONE, ImageSetting.CAPTION):
        return text, None
    if setting == ImageSetting.BLANK:
        return text, blank_image(size or DEFAULT_SIZE)
    if setting == ImageSetting.NOISE:
        return text, noise_image(size or DEFAULT_SIZE, sample_seed(sample, seed))
    if setting == ImageSetting.FIGSTEP:
        instruction = sample.metadata.get("instruction") or sample.request
        return text, render_figstep(str(instruction), size or FIGSTEP_SIZE)
    if setting == ImageSetting.MMSB_TYPO:
        phrase = sample.metadata.get("key_phrase") or key_phrase(sample.request)
        width = _size(size)[0] if size else TYPO_WIDTH
        return text, render_typography(str(phrase), width)
    # The remaining settings need the sample's own image.
    if sample.image is None:
        raise InputError(f"sample {sample.id!r} has no image, which image setting {setting.value!r} needs")
    source = load_image(data_dir, sample.image)
    if setting == ImageSetting.PROVIDED:
        return text, source if size is None else source.resize(_size(size), Image.Resampling.BICUBIC)
    if setting == ImageSetting.MEAN:
        return text, mean_colour_image(source, size)
    if setting == ImageSetting.MMSB_SD_TYPO:
        phrase = sample.metadata.get("key_phrase") or key_phrase(sample.request)
        width = _size(size)[0] if size else source.width
        return text, render_mmsb_composite(source, str(phrase), width)
    raise InputError(f"unknown image setting {setting!r}")  # pragma: no cover - enum is exhaustive

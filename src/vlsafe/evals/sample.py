"""The ``Sample`` record every benchmark loader produces.

A sample is one prompt (plus, optionally, an image reference and a multiple-choice key). Samples are
plain pydantic models, so ``sample.model_dump(mode="json")`` is a JSON object and
``Sample.model_validate(obj)`` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlsafe.core.paths import check_relative_path


class ImageSetting(str, Enum):
    """How the image shown with a sample's prompt is produced.

    ``none`` sends text only; ``blank``/``mean``/``noise`` replace the image with a white, mean-colour or
    Gaussian-noise image; ``provided`` loads ``Sample.image``; ``caption`` puts ``Sample.caption`` into the
    text instead of an image; ``figstep``, ``mmsb_typo`` and ``mmsb_sd_typo`` render typographic attack
    images (FigStep list, MM-SafetyBench typography, MM-SafetyBench picture + typography).
    """

    NONE = "none"
    BLANK = "blank"
    MEAN = "mean"
    NOISE = "noise"
    PROVIDED = "provided"
    CAPTION = "caption"
    FIGSTEP = "figstep"
    MMSB_TYPO = "mmsb_typo"
    MMSB_SD_TYPO = "mmsb_sd_typo"


class SampleKind(str, Enum):
    """What a sample measures: a harmful request, a benign one, a harmless-but-scary one, or utility."""

    HARMFUL = "harmful"
    BENIGN = "benign"
    OVER_REFUSAL = "over_refusal"
    UTILITY = "utility"



class Sample(BaseModel):
    """One evaluation item.

    Attributes:
        id: unique within its benchmark.
        benchmark: registry name of the benchmark that produced it.
        text: the prompt text (for utility items, the question without the choices).
        kind: harmful, benign, over_refusal or utility.
        category: the benchmark's category / scenario / policy label, when it has one.
        image: image path relative to the benchmark's data directory, or ``None``.
        image_setting: how the image is produced at generation time (see ``ImageSetting``).
        caption: a text description of the image, for the ``caption`` setting.
        choices: answer options for multiple-choice and yes/no items.
        answer: the correct option's text when ``choices`` is set; otherwise an optional reference answer.
        metadata: benchmark-specific fields (original ids, key phrases, rewritten instructions, ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    id: str = Field(min_length=1)
    benchmark: str = Field(min_length=1)
    text: str
    kind: SampleKind
    category: str | None = None
    image: str | None = None
    image_setting: ImageSetting = ImageSetting.NONE
    caption: str | None = None
    choices: list[str] | None = None
    answer: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("image")
    @classmethod
    def _image_inside_data_dir(cls, value: str | None) -> str | None:
        return None if value is None else check_relative_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> Sample:
        if not self.text.strip() and self.image_setting != ImageSetting.FIGSTEP:
            raise ValueError(f"sample {self.id!r} has empty text")
        if self.image_setting in (ImageSetting.PROVIDED, ImageSetting.MEAN, ImageSetting.MMSB_SD_TYPO):
            if self.image is None:
                raise ValueError(
                    f"sample {self.id!r}: image_setting {self.image_setting.value!r} needs an image"
                )
        if self.image_setting == ImageSetting.CAPTION and not self.caption:
            raise ValueError(f"sample {self.id!r}: image_setting 'caption' needs a caption")
        if self.choices is not None:
            if len(self.choices) < 2:
                raise ValueError(
                    f"sample {self.id!r}: choices must hold at least 2 options, got {self.choices}"
                )
            if self.answer is not None and self.answer not in self.choices:
                raise ValueError(f"sample {self.id!r}: answer {self.answer!r} is not one of {self.choices}")
        return self

    @property
    def answer_index(self) -> int | None:
        """Index of ``answer`` in ``choices`` (``None`` for open-ended items)."""
        if self.choices is None or self.answer is None:
            return None
        return self.choices.index(self.answer)

    @property
    def request(self) -> str:
        """The underlying request for judges: ``metadata["request"]`` when an attack rewrote it, else ``text``."""
        value = self.metadata.get("request")
        return value if isinstance(value, str) and value else self.text

    @property
    def prompt_hash(self) -> str:
        """A stable 16-hex-digit hash of what the model is shown (text, image, setting, caption, choices).

        It ignores ``id``, ``benchmark``, ``kind`` and ``metadata``, so the same prompt gets the same hash
        in every benchmark and every run.
        """
        payload = {
            "text": self.text,
            "image": self.image,
            "image_setting": self.image_setting.value,
            "caption": self.caption,
            "choices": self.choices,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def with_setting(self, setting: ImageSetting | str) -> Sample:
        """Return a copy with another ``image_setting`` (validated)."""
        data = self.model_dump()
        data["image_setting"] = ImageSetting(setting)
        return Sample.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as strings)."""
        return self.model_dump(mode="json")

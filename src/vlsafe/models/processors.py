"""Processor loading and saving without torchvision and without a video processor.

transformers falls back to PIL image processors when torchvision is missing. Processors that have a
video slot (Qwen2-VL, Qwen2.5-VL, SmolVLM) refuse ``video_processor=None`` and their video processors
need torchvision, so vlsafe builds them through a subclass that accepts ``None`` there. Such processors
cannot ``save_pretrained``; :func:`save_processor` writes the image processor, the tokenizer, the chat
template and a ``processor_config.json`` separately, and :func:`load_processor` reads them back.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import transformers
from huggingface_hub import hf_hub_download
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
from transformers.models.smolvlm import processing_smolvlm

from vlsafe.core.errors import ModelLoadError
from vlsafe.models.families import Family

PROCESSOR_CONFIG = "processor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

#: Processor ``__init__`` arguments kept in ``processor_config.json`` for video-slot families.
_SAVED_KWARGS = ("image_seq_len", "image_seq_length")

#: What SmolVLM's processor reads from its video processor even for image-only prompts.
_SMOLVLM_VIDEO_DEFAULTS = SimpleNamespace(num_frames=64, fps=1)


def _num2words_standin(number: int, *args: Any, **kwargs: Any) -> str:
    """Used by SmolVLM only to spell video frame counts; vlsafe never passes videos."""
    return str(number)


@cache
def _without_video(cls: Any) -> type:
    """A subclass of the processor class ``cls`` that accepts ``video_processor=None``."""

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def _processor_class(family: Family) -> type:
    names = {
        "llava": "LlavaProcessor",
        "llava_next": "LlavaNextProcessor",
        "qwen2_vl": "Qwen2VLProcessor",
        "qwen2_5_vl": "Qwen2_5_VLProcessor",
        "idefics3": "Idefics3Processor",
        "smolvlm": "SmolVLMProcessor",
        "gemma3": "Gemma3Processor",
    }
    return getattr(transformers, names[family.name])


def make_processor(family: Family, image_processor: Any, tokenizer: Any, **kwargs: Any) -> Any:
    """Build the family's processor from an image processor and a tokenizer.

    Args:
        family: a VLM family.
        image_processor: an image processor (PIL backend is fine).
        tokenizer: the tokenizer, with the family's special tokens.
        **kwargs: processor ``__init__`` arguments (``chat_template``, ``patch_size``, ``image_seq_len``, ...).
    """
    cls = _processor_class(family)
    if not family.video_slot:
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)
    if family.name == "smolvlm":

        if processing_smolvlm.num2words is None:
            # The real package only spells out video frame counts, which vlsafe never builds.
            processing_smolvlm.num2words = _num2words_standin
    processor = _without_video(cls)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs
    )
    if family.name == "smolvlm":
        processor.video_processor = _SMOLVLM_VIDEO_DEFAULTS
    return processor


def save_processor(processor: Any, family: Family, out_dir: str | Path) -> None:
    """Save a processor so that :func:`load_processor` (and, outside video families, AutoProcessor) reads it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not family.video_slot:
        processor.save_pretrained(out)
        return
    processor.image_processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    config: dict[str, Any] = {"processor_class": _processor_class(family).__name__}
    for key in _SAVED_KWARGS:
        if hasattr(processor, key):
            config[key] = getattr(processor, key)
    (out / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if isinstance(processor.chat_template, str):
        (out / CHAT_TEMPLATE_FILE).write_text(processor.chat_template)


def load_processor(family: Family, path: str, *, trust_remote_code: bool = False) -> Any:
    """Load the processor of a VLM checkpoint (local directory or hub id).

    Raises:
        ModelLoadError: the processor files are missing or unreadable.
    """

    try:
        if not family.video_slot:
            return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        kwargs = _read_processor_kwargs(path)
        template = _read_chat_template(path) or getattr(tokenizer, "chat_template", None)
        return make_processor(family, image_processor, tokenizer, chat_template=template, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"could not load the {family.name} processor from {path!r}: {exc}") from exc


def _local_or_hub_file(path: str, name: str) -> Path | None:
    local = Path(path)
    if local.is_dir():
        candidate = local / name
        return candidate if candidate.is_file() else None
    try:
        return Path(hf_hub_download(path, name))
    except Exception:  # noqa: BLE001 - a missing optional file is not an error
        return None


def _read_processor_kwargs(path: str) -> dict[str, Any]:
    file = _local_or_hub_file(path, PROCESSOR_CONFIG)
    if file is None:
        return {}
    data = json.loads(file.read_text())
    return {k: v for k, v in data.items() if k in _SAVED_KWARGS}


def _read_chat_template(path: str) -> str | None:
    file = _local_or_hub_file(path, CHAT_TEMPLATE_FILE)
    if file is not None:
        return file.read_text()
    legacy = _local_or_hub_file(path, "chat_template.json")
    if legacy is not None:
        return json.loads(legacy.read_text()).get("chat_template")
    return None

"""TGA training records (JSONL) and their encoding into model batches with span masks.

One JSON object per line::

    {"image": "imgs/1.png", "instruction": "What is shown?", "answer": "A red square.",
     "caption": "a red square on a white background", "retrieved": "optional related text", "id": "optional"}

Relative image paths are resolved against the JSONL file's folder. :func:`encode_tga_batch` writes the
first user turn with :func:`vlsafe.data.retrieval.retrieval_spans` (the same function inference uses; the retrieved
text before the image with ``order="text_first"``, as released) and renders it with the input builder's
:func:`vlsafe.models.inputs.user_turn_layout`, appends the answer and the template's end-of-turn text, and derives
every span from character offsets
(as :func:`vlsafe.models.build_inputs` does): the image tokens (``input_ids == image_token_id``), the
retrieved-text tokens, and the answer tokens (the labels). The caption is encoded alone (text variant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from vlsafe.core.config import validation_problems
from vlsafe.core.errors import InputError
from vlsafe.core.io import iter_jsonl
from vlsafe.data.retrieval import retrieval_spans
from vlsafe.methods.training.memory import IGNORE_INDEX
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.families import get_family
from vlsafe.models.images import make_variant_image
from vlsafe.models.inputs import (
    USER_TEXT_SENTINEL,
    build_inputs,
    render_user_turn,
    text_span_mask,
    user_turn_layout,
)
from vlsafe.models.inputs_types import Variant

_ANSWER_SENTINEL = "\ue002vlsafe-answer\ue003"


class TGARecord(BaseModel):
    """One TGA training example."""

    model_config = ConfigDict(extra="forbid")
    instruction: str
    answer: str
    caption: str
    image: str | None = None
    retrieved: str | None = None
    id: str | None = None

    @field_validator("instruction", "answer", "caption")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


def read_tga_records(path: str | Path) -> list[TGARecord]:
    """Read TGA JSONL; relative image paths become absolute (against the file's folder) and must exist.

    Raises:
        InputError: a missing or empty file, invalid JSON, a record that breaks a field rule, or a missing
            image (each message names ``file:line``).
    """
    file = Path(path)
    records: list[TGARecord] = []
    for number, row in iter_jsonl(file, "training data"):
        try:
            rec = TGARecord.model_validate(row)
        except ValidationError as exc:
            raise InputError(f"{file}:{number}: {validation_problems(exc, 'record')}") from None
        if rec.image is not None:
            img = Path(rec.image)
            img = img if img.is_absolute() else (file.parent / img).resolve()
            if not img.is_file():
                raise InputError(f"{file}:{number}: image {img} not found")
            rec.image = str(img)
        records.append(rec)
    if not records:
        raise InputError(f"training data {file} holds no records")
    return records


@dataclass
class TGABatch:
    """A training batch: model inputs, answer labels and the masks/inputs the guide loss needs.

    Attributes:
        inputs: ``model(**inputs)`` tensors of the full prompt + answer (left-padded).
        labels: ``[B, T]`` answer token ids, ``-100`` elsewhere.
        image_mask: ``[B, T]`` image-feature tokens.
        retrieved_mask: ``[B, T]`` retrieved-text tokens (all False in rows without retrieved text).
        caption_inputs: the captions alone (chat template, text variant), for ``C_j``.
        caption_mask: ``[B, Tc]`` caption tokens in ``caption_inputs``.
        prompts: the rendered prompts (without the answer).
    """

    inputs: dict[str, Any]
    labels: torch.Tensor
    image_mask: torch.Tensor
    retrieved_mask: torch.Tensor
    caption_inputs: dict[str, Any]
    caption_mask: torch.Tensor
    prompts: list[str]

    def to(self, device: torch.device | str) -> TGABatch:
        def mv(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in d.items()}

        return TGABatch(
            mv(self.inputs),
            self.labels.to(device),
            self.image_mask.to(device),
            self.retrieved_mask.to(device),
            mv(self.caption_inputs),
            self.caption_mask.to(device),
            list(self.prompts),
        )


def answer_suffix(bundle: ModelBundle) -> str:
    """The text the chat template puts after an assistant reply (its end-of-turn), or the EOS token."""
    before, after = render_user_turn(bundle, True, True)
    try:
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": USER_TEXT_SENTINEL}]},
            {"role": "assistant", "content": [{"type": "text", "text": _ANSWER_SENTINEL}]},
        ]
        assert bundle.processor is not None
        rendered = bundle.processor.apply_chat_template(conversation, tokenize=False)
        rendered = rendered[0] if isinstance(rendered, list) else rendered
        head, tail = rendered.split(_ANSWER_SENTINEL)
        if head == before + USER_TEXT_SENTINEL + after and tail.strip():
            return tail.rstrip("\n")
    except Exception:  # noqa: BLE001 - templates without assistant support fall back to EOS
        pass
    return str(bundle.tokenizer.eos_token or "")


def _span_mask(offsets: torch.Tensor, attention: torch.Tensor, spans: list[tuple[int, int]],
               replacements: Any) -> torch.Tensor:  # fmt: skip
    mask = text_span_mask(offsets, attention, spans, replacements)
    empty = torch.tensor([s == e for s, e in spans], dtype=torch.bool)
    mask[empty] = False
    return mask


def encode_tga_batch(
    bundle: ModelBundle,
    records: Sequence[TGARecord],
    retrieved: Sequence[str | None] | None = None,
    order: str = "text_first",
) -> TGABatch:
    """Encode records into a :class:`TGABatch` (see the module docstring).

    Args:
        bundle: a VLM.
        records: the examples (each needs an image).
        retrieved: retrieved text per record, overriding ``record.retrieved``.
        order: ``text_first`` (retrieved text, image, instruction) or ``image_first``.
    """
    if not bundle.is_vlm:
        raise InputError(f"TGA needs a vision-language model; {bundle.name!r} is {bundle.family}")
    retrieved = list(retrieved) if retrieved is not None else [r.retrieved for r in records]
    if len(retrieved) != len(records):
        raise InputError(f"{len(retrieved)} retrieved texts for {len(records)} records")
    tokenizer = bundle.tokenizer
    tokenizer.padding_side = "left"
    layout = user_turn_layout(bundle, True, True)
    before = layout.before
    suffix = answer_suffix(bundle)
    texts, r_spans, a_spans, prompts = [], [], [], []
    for rec, ret in zip(records, retrieved, strict=True):
        user, (rs, re_), _ = retrieval_spans(rec.instruction, ret, order)
        rendered = layout.render(user)
        prompt = rendered.text
        full = prompt + rec.answer.strip() + suffix
        prompts.append(prompt)
        texts.append(full)
        r_spans.append(rendered.span(rs, re_))
        a_spans.append((len(prompt), len(full)))
    images = [
        make_variant_image(bundle, rec.image, Variant.IMAGE, seed=0, index=i) for i, rec in enumerate(records)
    ]
    family = get_family(bundle.family)
    image_arg: list[Any] = (
        [[im] for im in images] if family.nested_images or family.name == "gemma3" else images
    )
    bos = getattr(tokenizer, "bos_token", None)
    assert bundle.processor is not None
    enc = dict(
        bundle.processor(
            text=texts,
            images=image_arg,
            add_special_tokens=not (bos and before.startswith(bos)),
            padding=True,
            return_tensors="pt",
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
    )
    offsets = torch.as_tensor(np.asarray(enc.pop("offset_mapping")))
    replacements = enc.pop("text_replacement_offsets", None)
    attention = enc["attention_mask"]
    ids = enc["input_ids"]
    answer = _span_mask(offsets, attention, a_spans, replacements)
    labels = torch.where(answer, ids, torch.full_like(ids, IGNORE_INDEX))
    cap = build_inputs(bundle, [r.caption for r in records], "text", add_generation_prompt=False)
    return TGABatch(
        inputs=enc,
        labels=labels,
        image_mask=ids == bundle.image_token_id,
        retrieved_mask=_span_mask(offsets, attention, r_spans, replacements),
        caption_inputs=cap.inputs,
        caption_mask=cap.masks.text,
        prompts=prompts,
    )

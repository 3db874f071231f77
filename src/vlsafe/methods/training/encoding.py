"""Turn (prompt, image, reply) triples into training batches whose labels cover the reply only.

The prompt is rendered exactly as at evaluation time, by :func:`vlsafe.models.build_inputs` (the model's
own chat template, image first, the processor's image-placeholder expansion, the assistant header). The
reply is tokenised on its own and followed by the chat template's end-of-turn text
(:func:`reply_suffix`). Rows are right-padded; ``labels`` are ``-100`` on the prompt (which includes every
image token), on padding, and the reply's token ids elsewhere. Image tensors (``pixel_values``,
``image_sizes``, ``image_grid_thw``...) come from the same processor call, so every family the models
package supports works unchanged; a batch is either all-image or all-text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlsafe.core.errors import InputError
from vlsafe.models import InputItem, ModelBundle, build_inputs

__all__ = ["IGNORE_INDEX", "EncodedBatch", "GroupedBatch", "encode_batch", "modality_groups", "reply_suffix"]

IGNORE_INDEX = -100
_SENTINEL = "\ue000vlsafe-reply\ue001"


def reply_suffix(bundle: ModelBundle) -> str:
    """The text the chat template writes after an assistant reply (e.g. ``"<|im_end|>"``), trailing
    whitespace removed; the tokenizer's EOS token when the template has no assistant turn."""
    messages: list[dict[str, Any]]
    template_owner: Any = bundle.processor if bundle.processor is not None else bundle.tokenizer
    if bundle.processor is not None:
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]},
        ]
    else:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    suffix = ""
    if getattr(template_owner, "chat_template", None) or getattr(bundle.tokenizer, "chat_template", None):
        try:
            rendered = template_owner.apply_chat_template(messages, tokenize=False)
        except Exception:  # a template without an assistant role: fall back to EOS
            rendered = ""
        if isinstance(rendered, list):
            rendered = rendered[0]
        if _SENTINEL in rendered:
            suffix = rendered.split(_SENTINEL, 1)[1].rstrip()
    if not suffix:
        suffix = getattr(bundle.tokenizer, "eos_token", None) or ""
    return suffix


@dataclass
class EncodedBatch:
    """A right-padded training batch.

    Attributes:
        inputs: keyword arguments of ``model(**inputs)`` (``input_ids``, ``attention_mask``, image tensors).
        labels: ``[B, T]`` reply token ids, ``-100`` on prompt, image and padding positions.
        image_mask: ``[B, T]`` positions holding image placeholder tokens.
        prompt_lengths: tokens of each row's prompt (the labels start there).
        ids: record ids of the rows, when the caller sets them.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor
    image_mask: torch.Tensor
    prompt_lengths: list[int]
    ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> EncodedBatch:
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.inputs.items()}
        return EncodedBatch(
            moved, self.labels.to(device), self.image_mask.to(device), self.prompt_lengths, self.ids
        )

    @property
    def n_tokens(self) -> int:
        """Non-padding tokens in the batch."""
        return int(self.inputs["attention_mask"].sum())


def encode_batch(
    bundle: ModelBundle,
    prompts: Sequence[str],
    replies: Sequence[str],
    images: Sequence[Any] | None = None,
    *,
    max_length: int | None = None,
) -> EncodedBatch:
    """Encode prompts (with optional images) and the replies to learn into one batch.

    Args:
        bundle: the model being trained (its tokenizer / processor and chat template are used).
        prompts: user instructions.
        replies: the assistant replies (the end-of-turn text is appended).
        images: one image (path or PIL) per row, or ``None`` for a text-only batch. Mixing rows with and
            without an image in one batch is refused.
        max_length: cut the reply so that each row has at most this many tokens (prompts are never cut).

    Raises:
        InputError: mismatched lengths, a mixed batch, an image on a text-only model, an empty reply, or a
            prompt longer than ``max_length``.
    """
    n = len(prompts)
    if n == 0 or len(replies) != n or (images is not None and len(images) != n):
        raise InputError(
            f"encode_batch needs equally many prompts ({n}), replies ({len(replies)}) and images "
            f"({'none' if images is None else len(images)}), at least one"
        )
    with_image = images is not None and any(im is not None for im in images)
    if with_image and images is not None and any(im is None for im in images):
        raise InputError("a batch must be all-image or all-text; group rows by modality before encoding")
    items = [InputItem(p, im) for p, im in zip(prompts, images or [None] * n, strict=True)]
    built = build_inputs(bundle, items, variant="image" if with_image else "text")
    suffix = reply_suffix(bundle)
    tokenizer = bundle.tokenizer
    ids_in = built.inputs["input_ids"]
    attention = built.inputs["attention_mask"].bool()
    width_in = ids_in.shape[1]
    seq_keys = [
        k for k, v in built.inputs.items() if torch.is_tensor(v) and tuple(v.shape[:2]) == (n, width_in)
    ]
    rows: list[dict[str, torch.Tensor]] = []
    prompt_lengths: list[int] = []
    for r in range(n):
        reply = str(replies[r]).strip()
        if not reply:
            raise InputError(f"row {r}: the reply is empty")
        reply_ids = torch.tensor(
            tokenizer(reply + suffix, add_special_tokens=False)["input_ids"], dtype=torch.long
        )
        keep = attention[r]
        plen = int(keep.sum())
        if max_length is not None:
            if plen >= max_length:
                raise InputError(
                    f"row {r}: the prompt has {plen} tokens, not fewer than max_length={max_length}"
                )
            reply_ids = reply_ids[: max_length - plen]
        row = {k: built.inputs[k][r][keep] for k in seq_keys}
        row["input_ids"] = torch.cat([row["input_ids"], reply_ids])
        row["attention_mask"] = torch.ones(plen + len(reply_ids), dtype=built.inputs["attention_mask"].dtype)
        for k in seq_keys:
            if k not in ("input_ids", "attention_mask"):  # e.g. token_type_ids: reply tokens are text (0)
                row[k] = torch.cat([row[k], row[k].new_zeros(len(reply_ids))])
        row["labels"] = torch.cat([torch.full((plen,), IGNORE_INDEX, dtype=torch.long), reply_ids])
        row["image_mask"] = torch.cat(
            [built.masks.image[r][keep], torch.zeros(len(reply_ids), dtype=torch.bool)]
        )
        rows.append(row)
        prompt_lengths.append(plen)
    width = max(len(row["input_ids"]) for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        dtype = rows[0][key].dtype
        tensor = torch.full((n, width), fill.get(key, 0), dtype=dtype)
        for r, row in enumerate(rows):
            tensor[r, : len(row[key])] = row[key]
        out[key] = tensor
    inputs = {k: v for k, v in built.inputs.items() if k not in seq_keys}
    for k in seq_keys:
        inputs[k] = out[k]
    return EncodedBatch(inputs, out["labels"], out["image_mask"], prompt_lengths)


class GroupedBatch(list[EncodedBatch]):
    """The encoded sub-batches of one training batch, one per modality (image rows, text rows)."""

    def to(self, device: torch.device | str) -> GroupedBatch:
        return GroupedBatch(b.to(device) for b in self)

    @property
    def n_tokens(self) -> int:
        return sum(b.n_tokens for b in self)


def modality_groups(images: Sequence[Any]) -> list[list[int]]:
    """Row indices split into the rows with an image and those without (empty groups dropped)."""
    with_image = [i for i, im in enumerate(images) if im is not None]
    without = [i for i, im in enumerate(images) if im is None]
    return [g for g in (with_image, without) if g]

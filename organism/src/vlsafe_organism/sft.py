"""Supervised fine-tuning helpers shared by the organism's stages: chat-formatted examples with labels on
the reply only, padded batches, and a seeded epoch iterator."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vlsafe.methods.training.memory import IGNORE_INDEX
from vlsafe_organism.probe import chat_text

END = "<|im_end|>"


@dataclass(frozen=True)
class SFTExample:
    """A user prompt and the assistant reply to learn; ``complete`` appends the end-of-turn token."""

    prompt: str
    reply: str
    complete: bool = True
    with_image: bool = False
    image_key: int | None = None  # index into an image-feature table (VL training)


def encode(tokenizer: object, ex: SFTExample, max_len: int = 256) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: labels are ``-100`` on the prompt and the reply's ids elsewhere."""
    head = chat_text(tokenizer, ex.prompt, ex.with_image)
    reply = ex.reply + (END if ex.complete else "")
    h = tokenizer(head, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    r = tokenizer(reply, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    ids = (h + r)[:max_len]
    labels = ([IGNORE_INDEX] * len(h) + r)[:max_len]
    return ids, labels


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` tensors."""
    width = max(len(ids) for ids, _ in encoded)
    ids_t = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(encoded):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        lab_t[i, : len(labels)] = torch.tensor(labels)
        mask[i, : len(ids)] = 1
    return {"input_ids": ids_t, "attention_mask": mask, "labels": lab_t}


def batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of example indices: seeded reshuffles of ``range(n)``, epoch after epoch."""
    rng = random.Random(f"vlsafe-sft:{seed}")
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        yield order[:batch_size]
        order = order[batch_size:]

"""Safety SFT and DPO data for TRL's trainers: ``datasets.Dataset`` builders and the collators that encode
their rows with vlsafe's own encoder.

**Why vlsafe encodes, not TRL.** TRL tokenises VLM data with the processor's chat template and finds the
completion where the tokenised prompt and prompt + completion diverge. vlsafe's seven model families (LLaVA,
LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM, Gemma 3, plus causal LMs) differ in image placement,
image-token expansion and end-of-turn text, and vlsafe must train on exactly the prompt its evaluations
render. So the datasets hold the records' text and an index into the in-memory records (images stay paths
or PIL images, never serialised), ``skip_prepare_dataset`` keeps TRL from tokenising, and the collators
encode each batch with :func:`vlsafe.methods.training.encoding.encode_batch`: the prompt as
:func:`vlsafe.models.build_inputs` renders it at evaluation time, the reply plus the template's end-of-turn
text, labels on the reply only. TRL then runs its own losses (fused LM head, DPO / IPO / robust DPO / SFT
terms, reference handling) on these batches.

**Batch layout.** A collated batch is one flat batch in TRL's format, rows in the dataset's order:

* SFT: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` off the reply) and the image tensors;
* DPO: ``2n`` rows, the ``n`` chosen replies first, then the ``n`` rejected ones (same prompts and images),
  with ``completion_mask`` (1 on reply tokens) instead of ``labels``, and ``ref_chosen_logps`` /
  ``ref_rejected_logps`` when the dataset carries TRL's precomputed reference log-probabilities.

vlsafe's encoder takes rows of one modality at a time (prompts with an image, prompts without), so a batch
with both is encoded per modality and merged (:func:`merge_rows`): sequence tensors right-padded to one width
(text rows get zero ``token_type_ids`` / ``mm_token_type_ids``), per-image tensors kept in the order of the
image rows, and per-row image tensors (Idefics3 / SmolVLM ``pixel_values``, ``pixel_attention_mask``) zero for
text rows, which those models skip. Every batch is then one forward pass, as data-parallel backends (DDP,
FSDP, DeepSpeed) need.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset

from vlsafe.core.errors import InputError
from vlsafe.data.vl_safety import PreferenceRecord, SFTRecord
from vlsafe.methods.training.encoding import IGNORE_INDEX, EncodedBatch, encode_batch, modality_groups
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.families import get_family

__all__ = [
    "DPOCollator",
    "SFTCollator",
    "grouped_to_trl",
    "merge_rows",
    "on_disk",
    "preference_dataset",
    "sft_dataset",
]


def sft_dataset(records: Sequence[SFTRecord]) -> Dataset:
    """One row per SFT record: ``index`` (into ``records``), ``id``, ``prompt``, ``completion``, ``has_image``."""
    if not records:
        raise InputError("the SFT data holds no records")
    return Dataset.from_dict(
        {
            "index": list(range(len(records))),
            "id": [r.id for r in records],
            "prompt": [r.prompt for r in records],
            "completion": [r.response for r in records],
            "has_image": [r.image is not None for r in records],
        }
    )


def preference_dataset(records: Sequence[PreferenceRecord]) -> Dataset:
    """One row per preference pair: ``index``, ``id``, ``prompt``, ``chosen``, ``rejected``, ``has_image``."""
    if not records:
        raise InputError("the preference data holds no records")
    return Dataset.from_dict(
        {
            "index": list(range(len(records))),
            "id": [r.id for r in records],
            "prompt": [r.prompt for r in records],
            "chosen": [r.chosen for r in records],
            "rejected": [r.rejected for r in records],
            "has_image": [r.image is not None for r in records],
        }
    )


def on_disk(dataset: Dataset, folder: str | Path) -> Dataset:
    """``dataset`` written to ``folder`` (by the main process, replacing what was there) and read back by every
    process: caches TRL derives from it (the precomputed reference log-probabilities) then live beside it, where
    all processes of a launch find them."""
    state = PartialState()
    folder = Path(folder)
    with state.main_process_first():
        if state.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            dataset.save_to_disk(str(folder))
    return Dataset.load_from_disk(str(folder))


def grouped_to_trl(batch: EncodedBatch, kind: str) -> dict[str, Any]:
    """An :class:`EncodedBatch` as TRL's flat batch: model inputs plus ``labels`` (``kind="sft"``) or
    ``completion_mask`` (``kind="dpo"``, 1 where the labels score a token)."""
    out = dict(batch.inputs)
    if kind == "sft":
        out["labels"] = batch.labels
    else:
        out["completion_mask"] = (batch.labels != IGNORE_INDEX).long()
    return out


def merge_rows(
    parts: Sequence[tuple[Sequence[int], dict[str, Any]]], n_rows: int, pad_id: int, per_row_images: bool
) -> dict[str, Any]:
    """Merge flat batches of disjoint rows into one batch of ``n_rows`` rows (see the module docstring).

    Args:
        parts: ``(rows, batch)``: the batch's rows go to these positions of the result.
        n_rows: rows of the result (every position filled by exactly one part).
        pad_id: ``input_ids`` padding.
        per_row_images: image tensors have one entry per row (Idefics3 / SmolVLM) rather than one per image.

    Raises:
        InputError: positions that do not cover ``0 .. n_rows - 1`` once, or image tensors in two parts.
    """
    placed = sorted(i for rows, _ in parts for i in rows)
    if placed != list(range(n_rows)):
        raise InputError(f"merge_rows: the parts' rows {placed} do not cover 0..{n_rows - 1} once")
    width = max(int(batch["input_ids"].shape[1]) for _, batch in parts)
    seq: dict[str, torch.dtype] = {}
    for _, batch in parts:
        shape = tuple(batch["input_ids"].shape)
        for key, value in batch.items():
            if torch.is_tensor(value) and tuple(value.shape) == shape:
                seq.setdefault(key, value.dtype)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    out: dict[str, Any] = {
        key: torch.full((n_rows, width), fill.get(key, 0), dtype=dtype) for key, dtype in seq.items()
    }
    image_part = None
    for k, (rows, batch) in enumerate(parts):
        index = torch.tensor(list(rows), dtype=torch.long)
        for key, value in batch.items():
            if key in seq:
                out[key][index, : value.shape[1]] = value
                continue
            if image_part is not None and image_part != k:
                raise InputError(f"merge_rows: image tensors ({key}) in two parts")
            image_part = k
            if per_row_images and torch.is_tensor(value) and value.shape[0] == len(rows):
                out[key] = value.new_zeros((n_rows, *value.shape[1:]))
                out[key][index] = value
            else:
                out[key] = value
    return out


@dataclass
class SFTCollator:
    """Encode rows of :func:`sft_dataset` into one TRL batch (see the module docstring).

    Attributes:
        bundle: the model being trained (its processor / tokenizer and chat template).
        records: the records the dataset's ``index`` column points into.
        max_length: cap on tokens per row (replies are cut; prompts never).
    """

    bundle: ModelBundle
    records: Sequence[SFTRecord]
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        records = [self.records[int(row["index"])] for row in rows]
        parts = []
        for positions in modality_groups([r.image for r in records]):
            picked = [records[i] for i in positions]
            images = [r.image for r in picked] if picked[0].image is not None else None
            batch = encode_batch(self.bundle, [r.prompt for r in picked], [r.response for r in picked], images,
                                 max_length=self.max_length)  # fmt: skip
            parts.append((positions, grouped_to_trl(batch, "sft")))
        return merge_rows(parts, len(records), _pad_id(self.bundle), _per_row_images(self.bundle))


@dataclass
class DPOCollator:
    """Encode rows of :func:`preference_dataset` into one TRL batch (see the module docstring); rows with
    ``ref_chosen_logps`` / ``ref_rejected_logps`` (TRL's precomputed reference) pass them on."""

    bundle: ModelBundle
    records: Sequence[PreferenceRecord]
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        records = [self.records[int(row["index"])] for row in rows]
        n = len(records)
        parts = []
        for positions in modality_groups([r.image for r in records]):
            picked = [records[i] for i in positions]
            prompts = [r.prompt for r in picked] * 2
            replies = [r.chosen for r in picked] + [r.rejected for r in picked]
            images = [r.image for r in picked] * 2 if picked[0].image is not None else None
            batch = encode_batch(self.bundle, prompts, replies, images, max_length=self.max_length)
            parts.append(([*positions, *(n + p for p in positions)], grouped_to_trl(batch, "dpo")))
        out = merge_rows(parts, 2 * n, _pad_id(self.bundle), _per_row_images(self.bundle))
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in rows[0]:
                out[key] = torch.tensor([float(row[key]) for row in rows], dtype=torch.float32)
        return out


def _pad_id(bundle: ModelBundle) -> int:
    pad = bundle.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def _per_row_images(bundle: ModelBundle) -> bool:
    return bool(bundle.is_vlm and get_family(bundle.family).nested_images)

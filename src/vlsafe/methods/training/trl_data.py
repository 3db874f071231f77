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

**Batch layout.** A collated batch is ``{"groups": [group, ...]}``, one group per modality (rows with an
image, rows without; encoders refuse mixed batches), each group a flat batch in TRL's format plus ``rows``
(the group's positions in the batch):

* SFT: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` off the reply) and the image tensors;
* DPO: ``2n`` rows, the ``n`` chosen replies first, then the ``n`` rejected ones (same prompts and images),
  with ``completion_mask`` (1 on reply tokens) instead of ``labels``, and ``ref_chosen_logps`` /
  ``ref_rejected_logps`` when the dataset carries precomputed reference log-probabilities.

The trainers in :mod:`vlsafe.methods.training.trl_trainers` combine the groups' losses into the loss of the
whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from vlsafe.core.errors import InputError
from vlsafe.data.vl_safety import PreferenceRecord, SFTRecord
from vlsafe.methods.training.encoding import IGNORE_INDEX, EncodedBatch, encode_batch, modality_groups
from vlsafe.models.bundle import ModelBundle

__all__ = [
    "DPOCollator",
    "SFTCollator",
    "grouped_to_trl",
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


def grouped_to_trl(batch: EncodedBatch, kind: str) -> dict[str, Any]:
    """An :class:`EncodedBatch` as TRL's flat batch: model inputs plus ``labels`` (``kind="sft"``) or
    ``completion_mask`` (``kind="dpo"``, 1 where the labels score a token)."""
    out = dict(batch.inputs)
    if kind == "sft":
        out["labels"] = batch.labels
    else:
        out["completion_mask"] = (batch.labels != IGNORE_INDEX).long()
    return out


@dataclass
class SFTCollator:
    """Encode rows of :func:`sft_dataset` (see the module docstring for the batch layout).

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
        groups = []
        for positions in modality_groups([r.image for r in records]):
            picked = [records[i] for i in positions]
            images = [r.image for r in picked] if picked[0].image is not None else None
            batch = encode_batch(self.bundle, [r.prompt for r in picked], [r.response for r in picked], images,
                                 max_length=self.max_length)  # fmt: skip
            group = grouped_to_trl(batch, "sft")
            group["rows"] = torch.tensor(positions, dtype=torch.long)
            groups.append(group)
        return {"groups": groups}


@dataclass
class DPOCollator:
    """Encode rows of :func:`preference_dataset` (see the module docstring for the batch layout); rows with
    ``ref_chosen_logps`` / ``ref_rejected_logps`` (TRL's precomputed reference) pass them on per group."""

    bundle: ModelBundle
    records: Sequence[PreferenceRecord]
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        records = [self.records[int(row["index"])] for row in rows]
        groups = []
        for positions in modality_groups([r.image for r in records]):
            picked = [records[i] for i in positions]
            prompts = [r.prompt for r in picked] * 2
            replies = [r.chosen for r in picked] + [r.rejected for r in picked]
            images = [r.image for r in picked] * 2 if picked[0].image is not None else None
            batch = encode_batch(self.bundle, prompts, replies, images, max_length=self.max_length)
            group = grouped_to_trl(batch, "dpo")
            group["rows"] = torch.tensor(positions, dtype=torch.long)
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                if key in rows[0]:
                    group[key] = torch.tensor([float(rows[i][key]) for i in positions], dtype=torch.float32)
            groups.append(group)
        return {"groups": groups}

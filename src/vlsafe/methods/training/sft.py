"""Safety supervised fine-tuning (SFT) of a VLM or LLM on VL safety data (VLGuard format or generated),
alone or mixed into VL-adaptation data (joint training).

Typical use::

    from vlsafe.methods.training import SFTConfig, run_sft
    run_sft(SFTConfig(model="organism:vl", output_dir="runs/sft",
                      data=[{"format": "vlguard", "path": "data/vlguard/train.json"}], max_steps=200))

The loss is the token-mean cross-entropy over the reply tokens only (prompt, image and padding tokens
carry label ``-100``; see :mod:`vlsafe.methods.training.encoding`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from vlsafe.methods.training.baseline import BaselineConfig, load_bundle, load_config, run_baseline
from vlsafe.methods.training.encoding import GroupedBatch, encode_batch, modality_groups
from vlsafe.methods.training.losses import sequence_logps
from vlsafe.methods.training.mixing import load_sources, mix_records
from vlsafe.methods.training.trainer import LossOutput
from vlsafe.models.bundle import ModelBundle

logger = logging.getLogger(__name__)

__all__ = ["SFTConfig", "run_sft", "sft_collate", "sft_loss", "sft_records"]


class SFTConfig(BaselineConfig):
    """Safety SFT options: :class:`~vlsafe.methods.training.baseline.BaselineConfig` (data sources, mixing, probe,
    export) and the trainer's fields (steps, batch size, LoRA, learning rate, checkpoints)."""


def sft_collate(bundle: ModelBundle, records: list[Any], max_length: int | None = None) -> GroupedBatch:
    """Encode SFT records into one sub-batch per modality (rows with an image, rows without)."""
    out = GroupedBatch()
    for group in modality_groups([r.image for r in records]):
        rows = [records[i] for i in group]
        images = [r.image for r in rows] if rows[0].image is not None else None
        batch = encode_batch(bundle, [r.prompt for r in rows], [r.response for r in rows], images,
                             max_length=max_length)  # fmt: skip
        batch.ids = [r.id for r in rows]
        out.append(batch)
    return out


def sft_loss(model: Any, batch: GroupedBatch, step: int = 0) -> LossOutput:
    """Token-mean cross-entropy of the replies over all sub-batches."""
    total: torch.Tensor | None = None
    count = 0
    for sub in batch:
        logps, counts = sequence_logps(model, sub.inputs, sub.labels)
        total = -logps.sum() if total is None else total - logps.sum()
        count += int(counts.sum())
    assert total is not None
    loss = total / count
    return LossOutput(loss, {"reply_tokens": float(count), "tokens": float(batch.n_tokens)})


def sft_records(config: SFTConfig) -> list[Any]:
    """The training records: the safety sources, mixed into ``config.mix.vl_data`` when ``mix`` is set."""
    safety = load_sources(config.data, "sft")
    if config.mix is None:
        return safety
    vl = load_sources(config.mix.vl_data, "sft")
    mixed = mix_records(vl, safety, config.mix.ratio, config.mix.seed)
    logger.info("joint training: %d VL records + %d safety records", len(vl), len(mixed) - len(vl))
    return mixed


def run_sft(
    config: SFTConfig | dict[str, Any] | str | Path, *, bundle: ModelBundle | None = None, **overrides: Any
) -> dict[str, Any]:
    """Run safety SFT (resuming from ``output_dir`` when it holds a checkpoint).

    Args:
        config: an :class:`SFTConfig`, a dict of its fields or a YAML path.
        bundle: an already loaded model to train (default: load ``config.model``).
        overrides: config fields that win over ``config`` (e.g. ``output_dir``, ``max_steps``).

    Returns:
        The run summary (also in ``output_dir/summary.json``): steps, final metrics, checkpoint,
        ``adapter`` / ``model`` paths and the safety curve file.
    """
    if not isinstance(config, SFTConfig):
        config = load_config(SFTConfig, config, **overrides)
    elif overrides:
        config = load_config(SFTConfig, config.model_dump(), **overrides)
    records = sft_records(config)
    bundle = bundle or load_bundle(config)
    max_length = config.max_length

    def collate(rows: list[Any]) -> GroupedBatch:
        return sft_collate(bundle, rows, max_length)

    return run_baseline(config, records, collate, sft_loss, bundle)

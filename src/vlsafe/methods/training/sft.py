"""Safety supervised fine-tuning (SFT) of a VLM or LLM on VL safety data (VLGuard format or generated),
alone or mixed into VL-adaptation data (joint training).

Typical use::

    from vlsafe.methods.training import SFTConfig, run_sft
    run_sft(SFTConfig(model="organism:vl", output_dir="runs/sft",
                      data=[{"format": "vlguard", "path": "data/vlguard/train.json"}], max_steps=200))

Training runs on TRL's ``SFTTrainer`` (:class:`~vlsafe.methods.training.trl_trainers.SafetySFTTrainer`, with
vlsafe's engine for data order, checkpoints and resume); vlsafe's collator encodes the batches
(:mod:`vlsafe.methods.training.trl_data`). The loss is TRL's token-mean cross-entropy over the reply tokens
only (prompt, image and padding tokens carry label ``-100``; see :mod:`vlsafe.methods.training.encoding`),
computed by its fused LM head. :func:`sft_loss` is the same loss written out on vlsafe's
:func:`~vlsafe.methods.training.losses.sequence_logps`; the tests hold TRL's loss to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTConfig as TRLSFTConfig

from vlsafe.methods.training.baseline import (
    BaselineConfig,
    finish_run,
    load_bundle,
    load_config,
    prepare_model,
    record_config,
    start_run,
)
from vlsafe.methods.training.encoding import GroupedBatch, encode_batch, modality_groups
from vlsafe.methods.training.engine import trainer_args
from vlsafe.methods.training.losses import sequence_logps
from vlsafe.methods.training.mixing import load_sources, mix_records
from vlsafe.methods.training.trainer import LossOutput
from vlsafe.methods.training.trl_data import SFTCollator, sft_dataset
from vlsafe.methods.training.trl_trainers import SafetySFTTrainer
from vlsafe.models.bundle import ModelBundle

logger = logging.getLogger(__name__)

__all__ = ["SFTConfig", "run_sft", "sft_collate", "sft_loss", "sft_records", "sft_trainer"]


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
    """Token-mean cross-entropy of the replies over all sub-batches (the reference TRL's loss is tested
    against; also a loss function for :class:`~vlsafe.methods.training.trainer.Trainer`)."""
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


def sft_trainer(
    config: SFTConfig, bundle: ModelBundle, records: Sequence[Any], callbacks: Sequence[Any] = ()
) -> SafetySFTTrainer:
    """TRL's SFT trainer for ``config`` on ``records``: applies the stage to ``bundle`` (``bundle.model``
    becomes the model to train) and builds :class:`~vlsafe.methods.training.trl_trainers.SafetySFTTrainer`.

    Args:
        config: the run's options.
        bundle: the model to train.
        records: ``SFTRecord`` objects.
        callbacks: vlsafe callbacks (``on_step`` objects or ``(step, metrics)`` callables) and
            ``transformers.TrainerCallback`` instances.
    """
    model = prepare_model(bundle, config)
    args = trainer_args(
        config,
        args_class=TRLSFTConfig,
        activation_checkpointing=config.gradient_checkpointing,  # TRL's configs default it on
        average_tokens_across_devices=False,  # each process's loss is its own token mean, as before TRL
        dataset_kwargs={"skip_prepare_dataset": True},  # vlsafe's collator encodes
        max_length=None,  # the collator cuts replies at config.max_length
        packing=False,
    )
    hf_callbacks = [cb for cb in callbacks if isinstance(cb, TrainerCallback)]
    own = [cb for cb in callbacks if not isinstance(cb, TrainerCallback)]
    return SafetySFTTrainer(
        model=model,
        args=args,
        data_collator=SFTCollator(bundle, records, config.max_length),
        train_dataset=sft_dataset(records),
        processing_class=bundle.processor if bundle.processor is not None else bundle.tokenizer,
        callbacks=hf_callbacks,
        vlsafe_config=config,
        vlsafe_callbacks=own,
    )


def run_sft(
    config: SFTConfig | dict[str, Any] | str | Path, *, bundle: ModelBundle | None = None, **overrides: Any
) -> dict[str, Any]:
    """Run safety SFT on TRL's ``SFTTrainer`` (resuming from ``output_dir`` when it holds a checkpoint).

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
    parts = start_run(config, bundle)
    trainer = sft_trainer(config, bundle, records, parts.callbacks)
    record_config(config, trainer)
    result = trainer.run()
    return finish_run(config, bundle, parts, result, len(records))

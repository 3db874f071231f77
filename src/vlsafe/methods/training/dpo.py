"""Direct preference optimisation (DPO) of a VLM or LLM on VL safety preference pairs (SPA-VL format or
generated), with peft LoRA or full fine-tuning, on TRL's ``DPOTrainer``
(:class:`~vlsafe.methods.training.trl_trainers.SafetyDPOTrainer`, with vlsafe's engine for data order,
checkpoints and resume; vlsafe's collator encodes the batches, :mod:`vlsafe.methods.training.trl_data`).

The reference model is the starting model:

* ``reference: adapter`` (default for LoRA stages): the same network with TRL's frozen copy of the starting
  adapters (``ref``; for fresh adapters that is the base model) - no second model in memory; the exported
  adapter is the trained one only;
* ``reference: precompute`` (default otherwise): TRL computes the reference log-probabilities of every pair
  once, before the first step (``precompute_ref_log_probs``), and caches them in ``output_dir/pairs`` beside
  the table of pairs.

The loss is TRL's: ``loss_type`` ``sigmoid`` (DPO), ``ipo`` (IPO on length-averaged log-probabilities) or
``robust`` (robust DPO with ``label_smoothing``); ``sft_weight`` adds TRL's ``sft`` term, the chosen replies'
token-mean negative log-likelihood (keeps the chosen replies likely, as in RPO). :class:`DPOObjective`
(on :func:`vlsafe.methods.training.losses.dpo_loss`) writes the same loss out for ``sigmoid`` / ``ipo``; the
tests hold TRL's loss to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from tqdm import tqdm
from transformers import TrainerCallback
from trl import DPOConfig as TRLDPOConfig

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.baseline import (
    BaselineConfig,
    finish_run,
    load_bundle,
    load_config,
    prepare_model,
    record_config,
    start_run,
)
from vlsafe.methods.training.encoding import EncodedBatch, GroupedBatch, encode_batch, modality_groups
from vlsafe.methods.training.engine import trainer_args
from vlsafe.methods.training.losses import dpo_loss, sequence_logps
from vlsafe.methods.training.mixing import load_sources
from vlsafe.methods.training.trainer import LossOutput
from vlsafe.methods.training.trl_data import DPOCollator, on_disk, preference_dataset
from vlsafe.methods.training.trl_trainers import SafetyDPOTrainer
from vlsafe.models.bundle import ModelBundle

__all__ = ["DPOConfig", "DPOObjective", "dpo_collate", "dpo_reference", "dpo_trainer", "run_dpo"]


class DPOConfig(BaselineConfig):
    """DPO options on top of :class:`~vlsafe.methods.training.baseline.BaselineConfig`.

    Attributes:
        beta: inverse temperature of the preference loss.
        loss_type: ``sigmoid`` (DPO), ``ipo`` (IPO, on length-averaged log-probabilities) or ``robust``
            (robust DPO, Chowdhury et al. 2024: unbiased under ``label_smoothing`` label noise); TRL's losses.
        label_smoothing: assumed share of flipped preference labels (``robust`` only).
        reference: ``auto`` (``adapter`` for LoRA stages, else ``precompute``), ``adapter`` or ``precompute``.
        sft_weight: weight of the chosen replies' NLL added to the loss.
    """

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "robust"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    reference: Literal["auto", "adapter", "precompute"] = "auto"
    sft_weight: float = Field(0.0, ge=0)
    lr: float = Field(5e-5, gt=0)

    @model_validator(mode="after")
    def _smoothing_needs_robust(self) -> DPOConfig:
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError(
                f"label_smoothing={self.label_smoothing} applies to loss_type 'robust' only (TRL's "
                f"{self.loss_type!r} loss has no label smoothing); set loss_type: robust or label_smoothing: 0"
            )
        return self


def dpo_reference(config: DPOConfig) -> Literal["adapter", "precompute"]:
    """The reference ``config`` resolves to (``auto``: ``adapter`` for LoRA stages, else ``precompute``).

    Raises:
        ConfigError: ``reference: adapter`` on a stage without LoRA.
    """
    if config.reference == "auto":
        return "adapter" if config.stage.endswith("_lora") else "precompute"
    if config.reference == "adapter" and not config.stage.endswith("_lora"):
        raise ConfigError(f"reference 'adapter' needs a LoRA stage; stage is {config.stage!r}")
    return config.reference


def dpo_collate(bundle: ModelBundle, records: list[Any], max_length: int | None = None) -> GroupedBatch:
    """Encode preference records: per modality one sub-batch of ``2n`` rows, the ``n`` chosen replies
    first, then the ``n`` rejected ones (same prompts and images); ``ids`` hold the ``n`` record ids."""
    out = GroupedBatch()
    for group in modality_groups([r.image for r in records]):
        rows = [records[i] for i in group]
        prompts = [r.prompt for r in rows] * 2
        replies = [r.chosen for r in rows] + [r.rejected for r in rows]
        images = [r.image for r in rows] * 2 if rows[0].image is not None else None
        batch = encode_batch(bundle, prompts, replies, images, max_length=max_length)
        batch.ids = [r.id for r in rows]
        out.append(batch)
    return out


class DPOObjective:
    """The DPO loss written out on vlsafe's :func:`~vlsafe.methods.training.losses.dpo_loss`, as a loss function
    for :class:`~vlsafe.methods.training.trainer.Trainer` (``(model, batch, step) -> LossOutput``): the reference
    TRL's loss is tested against (``sigmoid`` / ``ipo``; ``adapter`` references switch the adapters off)."""

    def __init__(self, config: DPOConfig) -> None:
        if config.loss_type == "robust":
            raise ConfigError("DPOObjective computes loss_type 'sigmoid' or 'ipo'; 'robust' is TRL's only")
        self.config = config
        self.reference = dpo_reference(config)
        self.table: dict[str, tuple[float, float]] = {}

    def _logps(self, model: Any, sub: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logps, counts = sequence_logps(model, sub.inputs, sub.labels)
        if self.config.loss_type == "ipo":
            logps = logps / counts
        return logps, counts

    def _reference(self, model: Any, sub: EncodedBatch) -> torch.Tensor:
        n = len(sub.ids)
        if self.reference == "precompute":
            missing = [i for i in sub.ids if i not in self.table]
            if missing:
                raise ConfigError(f"no precomputed reference log-probabilities for records {missing[:3]}")
            pairs = [self.table[i] for i in sub.ids]
            values = [c for c, _ in pairs] + [r for _, r in pairs]
            return torch.tensor(values, dtype=torch.float32, device=sub.labels.device)
        adapter_off = (
            model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        )
        with torch.no_grad(), adapter_off:
            ref, _ = self._logps(model, sub)
        assert ref.shape[0] == 2 * n
        return ref

    def precompute(self, model: Any, dataset: list[Any], collate: Any, batch_size: int, device: Any) -> None:
        """Fill the reference table with the (untrained) model's log-probabilities of every pair."""
        was = model.training
        model.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(dataset), batch_size), desc="reference log-probs", leave=False):
                for sub in collate(dataset[start : start + batch_size]).to(device):
                    ref, _ = self._logps(model, sub)
                    n = len(sub.ids)
                    for k, rid in enumerate(sub.ids):
                        self.table[rid] = (float(ref[k]), float(ref[n + k]))
        model.train(was)

    def __call__(self, model: Any, batch: GroupedBatch, step: int = 0) -> LossOutput:
        cfg = self.config
        chosen, rejected, ref_c, ref_r, nll = [], [], [], [], []
        for sub in batch:
            n = len(sub.ids)
            ref = self._reference(model, sub)
            logps, counts = self._logps(model, sub)
            chosen.append(logps[:n])
            rejected.append(logps[n:])
            ref_c.append(ref[:n])
            ref_r.append(ref[n:])
            if cfg.sft_weight:
                raw = logps[:n] * counts[:n] if cfg.loss_type == "ipo" else logps[:n]
                nll.append((-raw.sum(), counts[:n].sum()))
        loss_type: Any = cfg.loss_type
        out = dpo_loss(torch.cat(chosen), torch.cat(rejected), torch.cat(ref_c), torch.cat(ref_r), cfg.beta,
                       loss_type=loss_type, label_smoothing=cfg.label_smoothing)  # fmt: skip
        loss = out.loss
        metrics = {
            "dpo_loss": float(out.loss.detach()),
            "reward_chosen": float(out.chosen_rewards.mean()),
            "reward_rejected": float(out.rejected_rewards.mean()),
            "reward_margin": float(out.margins.mean()),
            "reward_accuracy": out.accuracy,
            "logp_chosen": float(torch.cat(chosen).detach().mean()),
            "logp_rejected": float(torch.cat(rejected).detach().mean()),
        }
        if nll:
            sft = torch.stack([t for t, _ in nll]).sum() / sum(int(c) for _, c in nll)
            loss = loss + cfg.sft_weight * sft
            metrics["sft_nll"] = float(sft.detach())
        return LossOutput(loss, metrics)


def dpo_trainer(
    config: DPOConfig, bundle: ModelBundle, records: Sequence[Any], callbacks: Sequence[Any] = ()
) -> SafetyDPOTrainer:
    """TRL's DPO trainer for ``config`` on preference ``records``: applies the stage to ``bundle``
    (``bundle.model`` becomes the model to train) and builds
    :class:`~vlsafe.methods.training.trl_trainers.SafetyDPOTrainer`; with ``reference: precompute`` the
    reference log-probabilities are computed here, before any step. ``callbacks`` as for
    :func:`~vlsafe.methods.training.sft.sft_trainer`."""
    reference = dpo_reference(config)
    model = prepare_model(bundle, config)
    loss_types: list[str] = [config.loss_type]
    weights = [1.0]
    if config.sft_weight:
        loss_types.append("sft")
        weights.append(config.sft_weight)
    args = trainer_args(
        config,
        args_class=TRLDPOConfig,
        activation_checkpointing=config.gradient_checkpointing,  # TRL's configs default it on
        beta=config.beta,
        loss_type=loss_types,
        loss_weights=weights,
        label_smoothing=config.label_smoothing,
        precompute_ref_log_probs=reference == "precompute",
        disable_dropout=False,  # the model trains as configured (LoRA dropout included)
        max_length=None,  # the collator cuts replies at config.max_length
    )
    dataset = preference_dataset(records)
    if reference == "precompute":  # TRL caches the reference log-probs beside the table, for every process
        dataset = on_disk(dataset, Path(config.output_dir) / "pairs")
    hf_callbacks = [cb for cb in callbacks if isinstance(cb, TrainerCallback)]
    own = [cb for cb in callbacks if not isinstance(cb, TrainerCallback)]
    return SafetyDPOTrainer(
        model=model,
        args=args,
        data_collator=DPOCollator(bundle, records, config.max_length),
        train_dataset=dataset,
        processing_class=bundle.processor if bundle.processor is not None else bundle.tokenizer,
        callbacks=hf_callbacks,
        vlsafe_config=config,
        vlsafe_callbacks=own,
    )


def run_dpo(
    config: DPOConfig | dict[str, Any] | str | Path, *, bundle: ModelBundle | None = None, **overrides: Any
) -> dict[str, Any]:
    """Run DPO on TRL's ``DPOTrainer`` (resuming from ``output_dir`` when it holds a checkpoint); see
    :func:`vlsafe.methods.training.run_sft` for the arguments and the returned summary."""
    if not isinstance(config, DPOConfig):
        config = load_config(DPOConfig, config, **overrides)
    elif overrides:
        config = load_config(DPOConfig, config.model_dump(), **overrides)
    if config.mix is not None:
        raise ConfigError("mix (joint training) applies to SFT; DPO trains on preference pairs only")
    records = load_sources(config.data, "preference")
    bundle = bundle or load_bundle(config)
    parts = start_run(config, bundle)
    trainer = dpo_trainer(config, bundle, records, parts.callbacks)
    record_config(config, trainer)
    result = trainer.run()
    model: Any = bundle.model
    if hasattr(model, "peft_config") and "ref" in model.peft_config:
        model.delete_adapter("ref")  # TRL's frozen reference copy; the trained adapter is the result
    return finish_run(config, bundle, parts, result, len(records))

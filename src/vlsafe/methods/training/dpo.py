"""Direct preference optimisation (DPO) of a VLM or LLM on VL safety preference pairs (SPA-VL format or
generated), with peft LoRA or full fine-tuning.

The reference model is the starting model:

* ``reference: adapter`` (default for LoRA stages): the same network with the adapters switched off
  (``peft``'s ``disable_adapter``) - no second copy in memory;
* ``reference: precompute`` (default otherwise): the reference log-probabilities of every pair are
  computed once before the first step and looked up by record id.

The loss is :func:`vlsafe.methods.training.losses.dpo_loss`; ``sft_weight`` adds the chosen replies' token-mean
negative log-likelihood (keeps the chosen replies likely, as in RPO).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from tqdm import tqdm

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.baseline import BaselineConfig, load_bundle, load_config, run_baseline
from vlsafe.methods.training.encoding import EncodedBatch, GroupedBatch, encode_batch, modality_groups
from vlsafe.methods.training.losses import dpo_loss, sequence_logps
from vlsafe.methods.training.mixing import load_sources
from vlsafe.methods.training.trainer import LossOutput, Trainer
from vlsafe.models.bundle import ModelBundle

__all__ = ["DPOConfig", "DPOObjective", "dpo_collate", "run_dpo"]


class DPOConfig(BaselineConfig):
    """DPO options on top of :class:`~vlsafe.methods.training.baseline.BaselineConfig`.

    Attributes:
        beta: inverse temperature of the preference loss.
        loss_type: ``sigmoid`` (DPO) or ``ipo`` (IPO, on length-averaged log-probabilities).
        label_smoothing: conservative DPO's assumed label-noise share.
        reference: ``auto`` (``adapter`` for LoRA stages, else ``precompute``), ``adapter`` or ``precompute``.
        sft_weight: weight of the chosen replies' NLL added to the loss.
    """

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    reference: Literal["auto", "adapter", "precompute"] = "auto"
    sft_weight: float = Field(0.0, ge=0)
    lr: float = Field(5e-5, gt=0)


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
    """The DPO loss function for :class:`Trainer` (``(model, batch, step) -> LossOutput``)."""

    def __init__(self, config: DPOConfig) -> None:
        self.config = config
        self.reference = config.reference
        if self.reference == "auto":
            self.reference = "adapter" if config.stage.endswith("_lora") else "precompute"
        if self.reference == "adapter" and not config.stage.endswith("_lora"):
            raise ConfigError(f"reference 'adapter' needs a LoRA stage; stage is {config.stage!r}")
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
        out = dpo_loss(torch.cat(chosen), torch.cat(rejected), torch.cat(ref_c), torch.cat(ref_r), cfg.beta,
                       loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)  # fmt: skip
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


def run_dpo(
    config: DPOConfig | dict[str, Any] | str | Path, *, bundle: ModelBundle | None = None, **overrides: Any
) -> dict[str, Any]:
    """Run DPO (resuming from ``output_dir`` when it holds a checkpoint); see :func:`vlsafe.methods.training.run_sft`
    for the arguments and the returned summary."""
    if not isinstance(config, DPOConfig):
        config = load_config(DPOConfig, config, **overrides)
    elif overrides:
        config = load_config(DPOConfig, config.model_dump(), **overrides)
    if config.mix is not None:
        raise ConfigError("mix (joint training) applies to SFT; DPO trains on preference pairs only")
    records = load_sources(config.data, "preference")
    bundle = bundle or load_bundle(config)
    objective = DPOObjective(config)
    max_length = config.max_length

    def collate(rows: list[Any]) -> GroupedBatch:
        return dpo_collate(bundle, rows, max_length)

    def before(trainer: Trainer) -> None:
        if objective.reference == "precompute":
            objective.precompute(
                trainer.model, records, collate, config.batch_size, trainer.device
            )

    return run_baseline(config, records, collate, objective, bundle, before_train=before)

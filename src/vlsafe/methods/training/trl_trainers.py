"""TRL's ``SFTTrainer`` and ``DPOTrainer`` on vlsafe's batches (see :mod:`vlsafe.methods.training.trl_data`)
and vlsafe's training engine (:class:`~vlsafe.methods.training.engine.EngineMixin`: seeded data order,
warm-up schedule, whole-or-absent safetensors checkpoints, resume checks, ``log.jsonl``, vlsafe callbacks).

The subclasses keep TRL's losses and only adapt the batch layout: a batch is a list of modality groups, and
the loss of the batch is the exact combination of TRL's loss on each group. TRL's per-batch metrics
(``rewards/margins``, ``logps/chosen``, ``mean_token_accuracy``...) go to ``log.jsonl`` under TRL's names.

* :class:`SafetySFTTrainer`: TRL's fused-head negative log-likelihood of each group, divided by the reply
  tokens of the *whole* micro-batch (``num_items_in_batch``), summed over groups: the token mean over the
  micro-batch. With gradient accumulation, ``transformers.Trainer`` averages the micro-batches' losses.
* :class:`SafetyDPOTrainer`: TRL's DPO loss (``loss_type`` list, ``loss_weights``) on each group, each pair
  term weighted by the group's share of the pairs and the ``sft`` term by its share of the chosen reply
  tokens, summed: the loss of the whole batch. Reference log-probabilities come from TRL: the adapters'
  frozen starting copy (LoRA; TRL's ``ref`` adapter) or, with ``precompute_ref_log_probs``, one pass of
  the starting model over the data before training (kept in the dataset's ``ref_*_logps`` columns).

Neither trainer tokenises the dataset (vlsafe's collator does, per batch) or sends TRL's usage telemetry.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import DPOTrainer, SFTTrainer

from vlsafe.methods.training.encoding import IGNORE_INDEX
from vlsafe.methods.training.engine import EngineMixin

__all__ = ["SafetyDPOTrainer", "SafetySFTTrainer", "model_group"]


def model_group(group: dict[str, Any]) -> dict[str, Any]:
    """A collated group without vlsafe's bookkeeping keys: the flat batch TRL's losses take."""
    return {k: v for k, v in group.items() if k != "rows"}


class _TRLMetrics:
    """Hands the metrics TRL appended during one ``compute_loss`` to the engine's per-step log."""

    _metrics: Any  # TRL's {"train" | "eval": {name: [values]}}
    model: Any

    def _metric_marks(self) -> dict[str, int]:
        mode = "train" if self.model.training else "eval"
        return {k: len(v) for k, v in self._metrics[mode].items()}

    def _record_new_metrics(self, marks: dict[str, int]) -> None:
        if not self.model.training or not hasattr(self, "record_metrics"):
            return
        new: dict[str, float] = {}
        for key, values in self._metrics["train"].items():
            added = values[marks.get(key, 0) :]
            if added and key != "num_tokens":
                new[key] = float(sum(added) / len(added))
        self.record_metrics(new)  # type: ignore[attr-defined]


class SafetySFTTrainer(_TRLMetrics, EngineMixin, SFTTrainer):
    """``trl.SFTTrainer`` (with vlsafe's engine) whose loss is the token mean of the reply tokens over all
    modality groups. Construct with ``vlsafe_config=`` and ``args=trainer_args(config, args_class=trl.SFTConfig,
    ...)`` (see :func:`vlsafe.methods.training.sft.sft_trainer`)."""

    #: compute_loss returns the micro-batch's token mean; ``Trainer`` divides it by the accumulation steps.
    loss_is_scaled_for_ga: bool | None = False  # type: ignore[assignment]  # TRL types it None

    def _send_telemetry(self) -> None:  # vlsafe trains offline and reports nothing
        return None

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        groups = inputs["groups"]
        total = sum(int((g["labels"][:, 1:] != IGNORE_INDEX).sum()) for g in groups)
        marks = self._metric_marks()
        loss: torch.Tensor | None = None
        for group in groups:
            part = super().compute_loss(model, model_group(group), num_items_in_batch=total)
            loss = part if loss is None else loss + part
        assert loss is not None
        self._record_new_metrics(marks)
        return (loss, None) if return_outputs else loss


class SafetyDPOTrainer(_TRLMetrics, EngineMixin, DPOTrainer):
    """``trl.DPOTrainer`` (with vlsafe's engine) over the modality groups of vlsafe's preference batches.
    Construct as :class:`SafetySFTTrainer` with TRL's ``DPOConfig`` (see :func:`vlsafe.methods.training.dpo.dpo_trainer`)."""

    loss_is_scaled_for_ga: bool | None = False  # type: ignore[assignment]  # a mean over pairs per micro-batch

    def _send_telemetry(self) -> None:
        return None

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # rows are encoded per batch by vlsafe's DPOCollator

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        groups = inputs["groups"]
        pairs = [len(g["rows"]) for g in groups]
        chosen = [int(g["completion_mask"][:n, 1:].sum()) for g, n in zip(groups, pairs, strict=True)]
        weights = list(self.loss_weights)
        marks = self._metric_marks()
        loss: torch.Tensor | None = None
        try:
            for group, n, c in zip(groups, pairs, chosen, strict=True):
                self.loss_weights = [
                    w * (c / sum(chosen) if kind == "sft" else n / sum(pairs))
                    for kind, w in zip(self.loss_types, weights, strict=True)
                ]
                part = super().compute_loss(model, model_group(group))
                loss = part if loss is None else loss + part
        finally:
            self.loss_weights = weights
        assert loss is not None
        self._record_new_metrics(marks)
        return (loss, None) if return_outputs else loss

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        groups = inputs["groups"]
        n = sum(len(g["rows"]) for g in groups)
        out_c: torch.Tensor | None = None
        out_r: torch.Tensor | None = None
        for group in groups:
            ref_c, ref_r = super().compute_ref_log_probs(model, model_group(group))
            if out_c is None or out_r is None:
                out_c, out_r = ref_c.new_zeros(n), ref_r.new_zeros(n)
            rows = group["rows"].to(ref_c.device)
            out_c[rows], out_r[rows] = ref_c, ref_r
        assert out_c is not None and out_r is not None
        return out_c, out_r

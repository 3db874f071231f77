"""TRL's ``SFTTrainer`` and ``DPOTrainer`` on vlsafe's batches (see :mod:`vlsafe.methods.training.trl_data`)
and vlsafe's training engine (:class:`~vlsafe.methods.training.engine.EngineMixin`: seeded data order,
warm-up schedule, whole-or-absent safetensors checkpoints, resume checks, ``log.jsonl``, vlsafe callbacks).

The losses are TRL's, unchanged, on one forward pass per micro-batch:

* :class:`SafetySFTTrainer`: the fused-head negative log-likelihood, a token mean over the micro-batch's reply
  tokens; with gradient accumulation ``transformers.Trainer`` averages the micro-batches' losses (each process
  its own, then the backend averages the gradients).
* :class:`SafetyDPOTrainer`: TRL's DPO loss (``loss_type`` list, ``loss_weights``), a mean over the pairs.
  Reference log-probabilities come from TRL: the adapters' frozen starting copy (LoRA; TRL's ``ref`` adapter) or,
  with ``precompute_ref_log_probs``, one pass of the starting model over the data before training (kept in the
  dataset's ``ref_*_logps`` columns).

TRL's per-batch metrics (``rewards/margins``, ``logps/chosen``, ``mean_token_accuracy``...) go to ``log.jsonl``
under TRL's names. Neither trainer tokenises the dataset (vlsafe's collator encodes each batch) or sends TRL's
usage telemetry.
"""

from __future__ import annotations

from typing import Any

from trl import DPOTrainer, SFTTrainer

from vlsafe.methods.training.engine import EngineMixin

__all__ = ["SafetyDPOTrainer", "SafetySFTTrainer"]


class _TRLMetrics:
    """What vlsafe's TRL trainers share: TRL's loss, with the metrics TRL appended during one ``compute_loss``
    handed to the engine's per-step log, and no usage telemetry (vlsafe trains offline and reports nothing)."""

    _metrics: Any  # TRL's {"train" | "eval": {name: [values]}}
    model: Any

    def _send_telemetry(self) -> None:
        return None

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        marks = self._metric_marks()
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        self._record_new_metrics(marks)
        return out

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
    """``trl.SFTTrainer`` with vlsafe's engine. Construct with ``vlsafe_config=`` and
    ``args=trainer_args(config, args_class=trl.SFTConfig, ...)`` (see :func:`vlsafe.methods.training.sft.sft_trainer`)."""

    #: compute_loss returns the micro-batch's token mean; ``Trainer`` divides it by the accumulation steps
    #: (``EngineMixin`` sets the same on the instance).
    loss_is_scaled_for_ga: bool | None = False  # type: ignore[assignment]  # TRL types it None


class SafetyDPOTrainer(_TRLMetrics, EngineMixin, DPOTrainer):
    """``trl.DPOTrainer`` with vlsafe's engine. Construct as :class:`SafetySFTTrainer` with TRL's ``DPOConfig``
    (see :func:`vlsafe.methods.training.dpo.dpo_trainer`)."""

    loss_is_scaled_for_ga: bool | None = False  # type: ignore[assignment]  # a mean over pairs per micro-batch

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # rows are encoded per batch by vlsafe's DPOCollator

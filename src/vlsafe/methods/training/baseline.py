"""What safety SFT and DPO share: the config base, YAML loading, the run wrapper around
:class:`~vlsafe.methods.training.trainer.Trainer`, and the export of the trained model (LoRA adapter in safetensors
and/or the merged full model as a regular HF directory).

Output directory of a run::

    config.yaml            the resolved config
    log.jsonl              per-step metrics (trainer)
    checkpoint-<step>/     resumable checkpoints (trainer)
    safety_curve.jsonl     the safety probe's curve (when ``probe`` is set)
    probe/                 the probe's data and per-step evaluation runs
    adapter/               peft adapter (LoRA stages): adapter_model.safetensors + adapter_config.json
    model/                 the merged model + processor/tokenizer (when ``merge`` is true): load_model() it
    summary.json           steps, final metrics, paths
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field

from vlsafe.core.config import read_yaml_mapping, validate_config
from vlsafe.methods.training.callbacks import ProbeSettings, SafetyTracker
from vlsafe.methods.training.checkpoint import save_trained_model
from vlsafe.methods.training.mixing import DataSource, MixSettings
from vlsafe.methods.training.stages import Stage, unwrap
from vlsafe.methods.training.trainer import LossFn, TrainConfig, Trainer, TrainResult
from vlsafe.models import load_model
from vlsafe.models.bundle import ModelBundle

__all__ = ["BaselineConfig", "export_model", "load_config", "run_baseline"]

C = TypeVar("C", bound="BaselineConfig")


class BaselineConfig(TrainConfig):
    """Options shared by safety SFT and DPO (plus every :class:`TrainConfig` field).

    Attributes:
        model: HF id, local directory or ``organism:<system>``.
        dtype: model dtype (``float32``, ``bfloat16``...).
        trust_remote_code: allow the checkpoint's own code.
        data: the safety training data sources.
        mix: joint training: mix the safety data into VL-adaptation data at ``mix.ratio``.
        max_length: cap on tokens per row (replies are cut; prompts never).
        probe: run the safety probe during training (see :class:`ProbeSettings`).
        merge: write the merged model to ``output_dir/model`` at the end.
    """

    model: str = Field(min_length=1)
    stage: Stage = "llm_lora"
    dtype: str | None = "float32"
    trust_remote_code: bool = False
    data: list[DataSource] = Field(min_length=1)
    mix: MixSettings | None = None
    max_length: int | None = Field(512, gt=8)
    probe: ProbeSettings | None = None
    merge: bool = True
    lr: float = Field(2e-4, gt=0)


def load_config(cls: type[C], source: str | Path | dict[str, Any], **overrides: Any) -> C:
    """Validate a YAML file or a dict as ``cls``; ``overrides`` (non-``None``) win over the file.

    Raises:
        ConfigError: unreadable file or invalid fields (each broken field and rule named).
    """
    data = dict(source) if isinstance(source, dict) else read_yaml_mapping(source)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(cls, data)


def export_model(bundle: ModelBundle, out_dir: str | Path, *, merge: bool = True) -> dict[str, str]:
    """Save the trained model: the peft adapter (if any) to ``out_dir/adapter`` and, when ``merge`` (or
    without adapters), the full model with its processor / tokenizer to ``out_dir/model``.

    Merging folds the adapters into the weights of ``bundle.model`` (it becomes the plain HF model).

    Returns:
        ``{"adapter": path, "model": path}`` for what was written.
    """
    out = Path(out_dir)
    written: dict[str, str] = {}
    model: Any = bundle.model
    if hasattr(model, "get_base_model"):
        model.save_pretrained(out / "adapter", safe_serialization=True)
        written["adapter"] = str(out / "adapter")
        if not merge:
            return written
    config = unwrap(model).config  # shared with the merged model
    if hasattr(config, "use_cache"):
        config.use_cache = True
    save_trained_model(bundle, out / "model", merge_lora=True)
    written["model"] = str(out / "model")
    return written


def load_bundle(config: BaselineConfig) -> ModelBundle:
    """Load ``config.model`` for training (``organism:<system>`` names resolve through the organism)."""

    return load_model(config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code)


def run_baseline(
    config: BaselineConfig,
    dataset: Sequence[Any],
    collate_fn: Callable[[list[Any]], Any],
    loss_fn: LossFn,
    bundle: ModelBundle,
    *,
    before_train: Callable[[Trainer], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train with :class:`Trainer`, probe safety along the way, export, and write ``summary.json``."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    tracker = None
    all_callbacks = list(callbacks)
    if config.probe is not None:
        tracker = SafetyTracker(bundle, config.probe, out / "safety_curve.jsonl", out / "probe")
        all_callbacks.append(tracker)
    trainer = Trainer(bundle, config, loss_fn, dataset, collate_fn, callbacks=all_callbacks)
    if before_train is not None:
        before_train(trainer)
    if tracker is not None:
        tracker.start()
    result: TrainResult = trainer.train()
    written = (
        export_model(bundle, out, merge=config.merge)
        if (config.merge or config.stage.endswith("_lora"))
        else {}
    )
    summary = {
        "steps": result.step,
        "n_records": len(dataset),
        "final": result.history[-1] if result.history else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "curve": str(out / "safety_curve.jsonl") if tracker is not None else None,
        **written,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary

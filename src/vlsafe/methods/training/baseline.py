"""What safety SFT and DPO share: the config base, YAML loading, the run bookkeeping (config file, safety
probe, export, summary) around a trainer, and the export of the trained model (LoRA adapter in safetensors
and/or the merged full model as a regular HF directory).

:func:`vlsafe.methods.training.run_sft` and :func:`~vlsafe.methods.training.run_dpo` train with TRL's trainers
(:mod:`vlsafe.methods.training.trl_trainers`); :func:`run_baseline` trains any vlsafe loss function with
:class:`~vlsafe.methods.training.trainer.Trainer`. Both go through :func:`start_run`, :func:`record_config`
and :func:`finish_run`.

Output directory of a run::

    config.yaml            the resolved config
    log.jsonl              per-step metrics (the engine; TRL's metric names for SFT / DPO)
    checkpoint-<step>/     resumable checkpoints (the engine)
    safety_curve.jsonl     the safety probe's curve (when ``probe`` is set)
    probe/                 the probe's data and per-step evaluation runs
    adapter/               peft adapter (LoRA stages): adapter_model.safetensors + adapter_config.json
    model/                 the merged model + processor/tokenizer (when ``merge`` is true): load_model() it
    pairs/                 DPO with ``reference: precompute``: the pairs table and TRL's cached reference log-probs
    summary.json           steps, final metrics, paths
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import Field
from transformers import set_seed

from vlsafe.core.config import read_yaml_mapping, validate_config
from vlsafe.methods.training.callbacks import ProbeSettings, SafetyTracker
from vlsafe.methods.training.checkpoint import save_trained_model
from vlsafe.methods.training.mixing import DataSource, MixSettings
from vlsafe.methods.training.stages import Stage, apply_stage, unwrap
from vlsafe.methods.training.trainer import LossFn, TrainConfig, Trainer, TrainResult
from vlsafe.models import load_model
from vlsafe.models.bundle import ModelBundle

__all__ = [
    "BaselineConfig",
    "RunParts",
    "export_model",
    "finish_run",
    "load_config",
    "prepare_model",
    "record_config",
    "run_baseline",
    "start_run",
]

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

    #: the probe and the export may change when a run resumes (they do not change its trajectory)
    resume_free_fields: ClassVar[frozenset[str]] = frozenset({"probe", "merge"})

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
        adapters = [model.active_adapter] if isinstance(getattr(model, "active_adapter", None), str) else None
        model.save_pretrained(out / "adapter", safe_serialization=True, selected_adapters=adapters)
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


def prepare_model(bundle: ModelBundle, config: BaselineConfig) -> Any:
    """Seed (``config.seed``; LoRA weights start from it), apply ``config.stage`` (which parameters train;
    LoRA through peft) and turn the KV cache off. ``bundle.model`` becomes the model to train; returns it."""
    set_seed(config.seed)
    model = apply_stage(bundle.model, config.stage, config.lora)
    hf_config: Any = getattr(unwrap(model), "config", None)
    if hasattr(hf_config, "use_cache"):
        hf_config.use_cache = False
    bundle.model = model
    return model


@dataclass
class RunParts:
    """What :func:`start_run` prepares: the output folder, the safety tracker (when ``probe`` is set) and the
    callbacks to hand to the trainer (the caller's plus the tracker)."""

    out: Path
    tracker: SafetyTracker | None
    callbacks: list[Any] = field(default_factory=list)


def start_run(config: BaselineConfig, bundle: ModelBundle, callbacks: Sequence[Any] = ()) -> RunParts:
    """Create ``output_dir`` and set up the safety probe (see the module docstring); ``config.yaml`` is written
    by :func:`record_config` once the trainer has accepted the run."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = None
    all_callbacks = list(callbacks)
    if config.probe is not None:
        tracker = SafetyTracker(bundle, config.probe, out / "safety_curve.jsonl", out / "probe")
        all_callbacks.append(tracker)
    return RunParts(out, tracker, all_callbacks)


def record_config(config: BaselineConfig, trainer: Any) -> None:
    """Check that ``trainer`` may start or resume the run (its ``resume_target()`` refuses a checkpoint written
    under other settings, before anything is overwritten), then write ``output_dir/config.yaml``."""
    trainer.resume_target()
    out = Path(config.output_dir)
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def finish_run(
    config: BaselineConfig, bundle: ModelBundle, parts: RunParts, result: TrainResult, n_records: int
) -> dict[str, Any]:
    """Export the trained model (:func:`export_model`) and write ``summary.json``; returns the summary."""
    written = (
        export_model(bundle, parts.out, merge=config.merge)
        if (config.merge or config.stage.endswith("_lora"))
        else {}
    )
    summary = {
        "steps": result.step,
        "n_records": n_records,
        "final": result.history[-1] if result.history else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "curve": str(parts.out / "safety_curve.jsonl") if parts.tracker is not None else None,
        **written,
    }
    (parts.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


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
    """Train ``loss_fn`` with :class:`Trainer`, probe safety along the way, export, and write ``summary.json``."""
    parts = start_run(config, bundle, callbacks)
    trainer = Trainer(bundle, config, loss_fn, dataset, collate_fn, callbacks=parts.callbacks)
    record_config(config, trainer)
    if before_train is not None:
        before_train(trainer)
    result: TrainResult = trainer.train()
    return finish_run(config, bundle, parts, result, len(dataset))

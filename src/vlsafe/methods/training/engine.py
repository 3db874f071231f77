"""vlsafe's training engine on :class:`transformers.Trainer`.

What comes from transformers / accelerate: the training loop, device placement, every accelerate backend
(single process, DDP, FSDP, DeepSpeed ZeRO with or without CPU offload; chosen by ``accelerate launch
--config_file ...``), gradient accumulation, gradient clipping, ``bf16``, activation (gradient) checkpointing,
PEFT models, the optimizer (AdamW over the trainable parameters; biases and norm weights without weight decay)
and ``resume_from_checkpoint`` (model, optimizer, scheduler, RNG and trainer state, skipping the batches seen).

What vlsafe keeps, in :class:`EngineMixin` (a mixin for any ``transformers.Trainer`` subclass, TRL's included):

* :class:`SeededSampler`: each epoch a permutation of the records (``torch.randperm`` seeded with
  ``seed * 1_000_003 + epoch``) cut into global micro-batches of ``batch_size x processes`` records, the
  incomplete rest dropped (a dataset smaller than one global batch wraps around); process ``k`` takes the
  ``k``-th share of each. The order depends on nothing but the seed, so a resumed run sees exactly the batches
  the uninterrupted run would have seen (and a run on two processes the same global batches as one process with
  twice the batch).
* the learning-rate schedule (:func:`lr_lambda`): linear warm-up ``lr * (step + 1) / warmup_steps`` at 0-based
  step ``step``, then constant, linear or cosine decay.
* checkpoints written whole or not at all: ``checkpoint-<step>.partial`` is written, then renamed to
  ``checkpoint-<step>``; a start removes ``*.partial`` folders a killed run left. Outside FSDP / DeepSpeed the
  files are safetensors + JSON (no pickles): ``trainable.safetensors`` (the parameters that train, by name),
  ``optimizer.safetensors``, ``rng_<process>.safetensors``, ``engine_state.json`` (optimizer groups, scheduler,
  RNG positions, the run's :class:`TrainConfig` and its per-step log) and transformers' ``trainer_state.json``.
  Under FSDP / DeepSpeed the backend's own sharded files are written beside ``trainable.safetensors``.
* resume semantics (:meth:`EngineMixin.resume_target`): ``resume: auto`` continues from the newest complete
  checkpoint of ``output_dir``; a checkpoint written under other settings is refused with a one-line
  :class:`~vlsafe.core.errors.ConfigError` naming the first differing field (``max_steps`` and the
  bookkeeping fields in :data:`RESUME_FREE_FIELDS` may change).
* per-step metrics: ``output_dir/log.jsonl`` gets one JSON line per optimizer step (``step``, ``loss``, the
  loss components a ``compute_loss`` reports with :meth:`EngineMixin.record_metrics`, each the mean over the
  micro-batches and processes, ``grad_norm``, ``lr``);
  each line also goes to ``Trainer.log`` (so every ``TrainerCallback.on_log`` sees it), and a tqdm bar shows it.
* vlsafe callbacks: objects with ``on_step(step, metrics)`` (returning ``True`` stops training after that
  step; the final checkpoint is still written), ``on_train_begin(step)``, ``on_train_end(step)``, or plain
  callables ``(step, metrics)``; ``transformers.TrainerCallback`` instances are passed to transformers as they are.

:func:`trainer_args` maps a :class:`TrainConfig` to ``transformers.TrainingArguments`` (or a subclass such as
TRL's ``SFTConfig``); a config's ``trainer:`` mapping passes further arguments through by their upstream names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.torch import load_file, save_file
from torch.utils.data import Sampler
from tqdm import tqdm
from transformers import Trainer as HFTrainer
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import fsync_dir, read_json, write_json_atomic
from vlsafe.methods.training.checkpoint import (
    OPTIMIZER_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    latest_checkpoint,
    load_trainable,
    optimizer_join,
    optimizer_split,
    rng_tensors,
    set_rng,
    trainable_state,
)
from vlsafe.methods.training.stages import LoraSettings, Stage, projector_params

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINE_STATE_FILE",
    "PARTIAL_SUFFIX",
    "RESUME_FREE_FIELDS",
    "EngineMixin",
    "LossFn",
    "LossFnTrainer",
    "LossOutput",
    "SeededSampler",
    "TrainConfig",
    "TrainResult",
    "check_resume_config",
    "clean_partial_checkpoints",
    "config_difference",
    "resume_checkpoint",
    "lr_lambda",
    "trainer_args",
]

ENGINE_STATE_FILE = "engine_state.json"
PARTIAL_SUFFIX = ".partial"
LOG_FILE = "log.jsonl"
RUN_CONFIG_FILE = "train_config.json"

#: TrainingArguments that vlsafe sets from its own fields (the TrainConfig field to use instead).
_MAPPED_ARGS: dict[str, str] = {
    "output_dir": "output_dir",
    "max_steps": "max_steps",
    "num_train_epochs": "max_steps",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "learning_rate": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "lr_scheduler_type": "schedule",
    "lr_scheduler_kwargs": "schedule",
    "max_grad_norm": "max_grad_norm",
    "bf16": "mixed_precision",
    "fp16": "mixed_precision",
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing",
    "seed": "seed",
    "data_seed": "seed",
    "save_steps": "save_every",
    "save_strategy": "save_every",
    "save_total_limit": "keep_checkpoints",
    "use_cpu": "use_cpu",
    "disable_tqdm": "progress",
    "resume_from_checkpoint": "resume",
    "train_sampling_strategy": "shuffle",
}
#: TrainingArguments the engine needs as it sets them.
_FIXED_ARGS = ("logging_strategy", "logging_steps", "remove_unused_columns", "logging_nan_inf_filter",
               "save_only_model", "load_best_model_at_end", "push_to_hub")  # fmt: skip
_TRAINING_ARG_NAMES = frozenset(f.name for f in dataclasses.fields(TrainingArguments))

#: TrainConfig fields that may differ between a run and its resume (they do not change the trajectory).
RESUME_FREE_FIELDS: frozenset[str] = frozenset(
    {
        "output_dir",
        "max_steps",
        "save_every",
        "keep_checkpoints",
        "save_final",
        "resume",
        "progress",
        "use_cpu",
    }
)


class TrainConfig(BaseModel):
    """Options of one training stage (subclass it for method-specific fields).

    ``trainer`` passes further ``transformers.TrainingArguments`` through by their upstream names (for example
    ``{dataloader_num_workers: 2, optim: adamw_torch_fused, report_to: [tensorboard]}``); names vlsafe sets
    from its own fields (``learning_rate`` is ``lr``...) and unknown names are refused.
    """

    model_config = ConfigDict(extra="forbid")
    #: Fields that may change between a run and its resume (besides :data:`RESUME_FREE_FIELDS`).
    resume_free_fields: ClassVar[frozenset[str]] = frozenset()

    output_dir: Path
    stage: Stage = "projector"
    lora: LoraSettings | None = None
    max_steps: int = Field(100, gt=0, description="optimizer steps")
    batch_size: int = Field(4, gt=0, description="records per micro-batch per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
    projector_lr: float | None = Field(
        None,
        gt=0,
        description="learning rate of the vision-language projector when the stage trains it with the LLM "
        "(LLaVA's mm_projector_lr); unset: lr",
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    shuffle: bool = True
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: none before the end)")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints kept in output_dir (the newest)")
    save_final: bool = Field(True, description="checkpoint after the last step (a resumable run needs it)")
    resume: Literal["auto", "never"] | Path = "auto"
    use_cpu: bool = Field(False, description="train on the CPU even when an accelerator is visible")
    progress: bool = True
    trainer: dict[str, Any] = Field(
        default_factory=dict, description="further transformers.TrainingArguments, by their upstream names"
    )

    @model_validator(mode="after")
    def _projector_lr_needs_projector(self) -> TrainConfig:
        if self.projector_lr is not None and not self.stage.startswith("projector_"):
            raise ValueError(
                f"projector_lr={self.projector_lr} needs a stage that trains the projector beside the LLM "
                f"(projector_llm, projector_lora), not {self.stage!r}; the projector stage trains at lr"
            )
        return self

    @field_validator("trainer")
    @classmethod
    def _known_trainer_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _MAPPED_ARGS:
                raise ValueError(
                    f"trainer.{key} is set from vlsafe's field {_MAPPED_ARGS[key]!r}; give {_MAPPED_ARGS[key]} instead"
                )
            if key in _FIXED_ARGS:
                raise ValueError(f"trainer.{key} is fixed by vlsafe's training engine")
            if key not in _TRAINING_ARG_NAMES:
                raise ValueError(f"trainer.{key} is not an argument of transformers.TrainingArguments")
        return value


@dataclass
class LossOutput:
    """What a loss function returns: the scalar to minimise and float components to log."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[Any, Any, int], LossOutput]


@dataclass
class TrainResult:
    """Outcome of a training run."""

    step: int
    history: list[dict[str, float]]
    checkpoint: Path | None  # the newest complete checkpoint at the final step (None when none was written)
    resumed_from: Path | None = None


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor at 0-based optimizer step ``step`` (warm-up, then ``config.schedule``)."""
    warm, total, kind = config.warmup_steps, config.max_steps, config.schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def trainer_args(
    config: TrainConfig,
    output_dir: str | Path | None = None,
    args_class: type[TrainingArguments] = TrainingArguments,
    **extra: Any,
) -> TrainingArguments:
    """The ``TrainingArguments`` (or ``args_class``, e.g. TRL's ``SFTConfig``) of ``config``.

    Args:
        config: the vlsafe config.
        output_dir: overrides ``config.output_dir``.
        args_class: a ``TrainingArguments`` subclass.
        extra: further arguments of ``args_class`` (after ``config.trainer``; e.g. TRL's own fields).

    Raises:
        ConfigError: transformers refuses a value (its message names it).
    """
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir or config.output_dir),
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.lr,
        "weight_decay": config.weight_decay,
        "warmup_steps": config.warmup_steps,
        "lr_scheduler_type": "constant",  # the engine builds its own schedule (lr_lambda)
        "max_grad_norm": config.max_grad_norm or 0.0,
        "bf16": config.mixed_precision == "bf16",
        "seed": config.seed,
        "save_strategy": "no",  # the engine decides when to save (save_every, save_final)
        "save_total_limit": config.keep_checkpoints,
        # bf16 on a machine without an accelerator trains on the CPU (transformers asks for use_cpu there)
        "use_cpu": config.use_cpu or (config.mixed_precision == "bf16" and not _has_accelerator()),
        "disable_tqdm": True,  # the engine's own bar
        "logging_strategy": "no",  # the engine logs every step itself
        "logging_nan_inf_filter": False,
        "remove_unused_columns": False,
        "report_to": "none",
        "dataloader_pin_memory": False,
    }
    # explicit either way: TRL's argument classes default activation checkpointing on
    kwargs["activation_checkpointing"] = config.gradient_checkpointing
    if config.gradient_checkpointing:
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    kwargs.update(config.trainer)
    kwargs.update(extra)
    try:
        return args_class(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"transformers refused the training arguments: {exc}") from None


def _has_accelerator() -> bool:
    return bool(torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())  # fmt: skip


class SeededSampler(Sampler[int]):
    """Record indices of ``total`` global micro-batches (see the module docstring); the prepared dataloader cuts
    them into per-process batches of ``batch_size`` (process ``k`` takes the ``k``-th of each global batch)."""

    def __init__(self, n: int, batch_size: int, processes: int, seed: int, shuffle: bool, total: int) -> None:
        if n <= 0:
            raise ConfigError("the training dataset is empty")
        self.n, self.per_step, self.seed, self.shuffle, self.total = (
            n,
            batch_size * processes,
            seed,
            shuffle,
            total,
        )
        self.per_epoch = max(1, n // self.per_step) if n >= self.per_step else 1

    def __len__(self) -> int:
        return self.total * self.per_step

    def order(self, epoch: int) -> list[int]:
        """The record order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.n))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, order = -1, list(range(self.n))
        for index in range(self.total):
            e, pos = divmod(index, self.per_epoch)
            if e != epoch:
                epoch, order = e, self.order(e)
            start = pos * self.per_step
            for k in range(self.per_step):
                yield order[(start + k) % self.n]


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


def config_difference(old: Mapping[str, Any], new: Mapping[str, Any], ignore: frozenset[str] = frozenset()) -> str | None:
    """The first field (dotted path, sorted order) whose value differs between two config dumps, as
    ``"key: old -> new"`` text, or ``None``; top-level fields in ``ignore`` are skipped."""
    a = _flat("", {k: v for k, v in dict(old).items() if k not in ignore})
    b = _flat("", {k: v for k, v in dict(new).items() if k not in ignore})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"it was trained with {key}={a.get(key)!r}, this config has {key}={b.get(key)!r}"
    return None


def check_resume_config(saved: Mapping[str, Any], config: TrainConfig, where: str | Path) -> None:
    """Refuse to resume a run written under other settings.

    Args:
        saved: the config stored with the checkpoint (``model_dump(mode="json")``).
        config: the config of the run that would resume it.
        where: the checkpoint, for the message.

    Raises:
        ConfigError: a field other than :data:`RESUME_FREE_FIELDS` (and the config class's
            ``resume_free_fields``) differs; the one-line message names the first such field and both values.
    """
    free = RESUME_FREE_FIELDS | type(config).resume_free_fields
    diff = config_difference(saved, config.model_dump(mode="json"), free)
    if diff is not None:
        raise ConfigError(
            f"cannot resume {where}: {diff}; give another output_dir, or resume: never to start over"
        )


def resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint a run of ``config`` would continue from (``None``: it starts at step 0), checked with
    :func:`check_resume_config`; ``checkpoint-*.partial`` folders are never chosen. Reads only.

    Raises:
        ConfigError: the checkpoint was written under other settings, or not by this engine.
        InputError: an explicit ``resume`` path is not a complete checkpoint.
    """
    if config.resume == "never":
        return None
    target = latest_checkpoint(config.output_dir) if config.resume == "auto" else Path(config.resume)
    if target is None:
        return None
    if not (target / STATE_FILE).is_file():
        raise InputError(f"{target} is not a complete checkpoint (no {STATE_FILE})")
    check_resume_config(_checkpoint_config(target), config, target)
    return target


def clean_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Remove the ``checkpoint-*.partial`` folders a killed run left in ``output_dir``; returns them."""
    root = Path(output_dir)
    found = sorted(root.glob(f"checkpoint-*{PARTIAL_SUFFIX}")) if root.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed the incomplete checkpoint %s", path)
    return found


def _checkpoint_config(path: Path) -> dict[str, Any]:
    file = path / ENGINE_STATE_FILE
    if not file.is_file():
        raise ConfigError(
            f"cannot resume {path}: it was not written by vlsafe's training engine (no {ENGINE_STATE_FILE}); "
            "give another output_dir, or resume: never to start over"
        )
    state = read_json(file, "engine state")
    return dict(state.get("config") or {})


class EngineMixin:
    """vlsafe's engine pieces for any ``transformers.Trainer`` subclass (see the module docstring).

    Use it first in the bases: ``class MyTrainer(EngineMixin, transformers.Trainer)`` (or TRL's
    ``SFTTrainer`` / ``DPOTrainer``), and construct with ``vlsafe_config=`` (a :class:`TrainConfig`) and
    ``args=trainer_args(vlsafe_config)``. Call :meth:`run` (or ``train(resume_from_checkpoint=...)`` with
    :meth:`resume_target`). A ``compute_loss`` may report loss components with :meth:`record_metrics`.

    Keyword args (besides the base class's):
        vlsafe_config: the run's :class:`TrainConfig`.
        vlsafe_callbacks: vlsafe-style callbacks (``on_step`` / ``on_train_begin`` / ``on_train_end`` objects or
            ``(step, metrics)`` callables).
    """

    # attributes of transformers.Trainer the mixin uses (typed for mypy)
    args: TrainingArguments
    state: Any
    control: Any
    accelerator: Any
    model: Any
    optimizer: Any
    lr_scheduler: Any
    train_dataset: Any
    current_gradient_accumulation_steps: int
    is_fsdp_enabled: bool
    is_deepspeed_enabled: bool
    loss_is_scaled_for_ga: bool | None = None

    def __init__(
        self,
        *args: Any,
        vlsafe_config: TrainConfig,
        vlsafe_callbacks: Sequence[Any] = (),
        **kwargs: Any,
    ) -> None:
        self.vlsafe_config = vlsafe_config
        self.vlsafe_callbacks = list(vlsafe_callbacks)
        #: one dict of metrics per optimizer step of the whole run (restored on resume)
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._grad_norm: float | None = None
        self._logged_step = -1
        self._bar: Any = None
        self.resumed_from: Path | None = None
        super().__init__(*args, **kwargs)
        for cb in (PrinterCallback, ProgressCallback):
            self.remove_callback(cb)  # type: ignore[attr-defined]
        self.add_callback(_EngineEvents(self))  # type: ignore[attr-defined]
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    # -- configuration ---------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir or ".")

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def record_metrics(self, metrics: Mapping[str, float]) -> None:
        """Add one micro-batch's loss components to the step's metrics (averaged over the micro-batches)."""
        ga = max(1, int(getattr(self, "current_gradient_accumulation_steps", 1) or 1))
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value) / ga

    # -- data ---------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler[int]:
        cfg = self.vlsafe_config
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return SeededSampler(len(dataset), cfg.batch_size, self.args.world_size, cfg.seed, cfg.shuffle,
                             self.args.max_steps * cfg.grad_accum)  # fmt: skip

    def _prepare_input(self, data: Any) -> Any:
        if hasattr(data, "to") and not isinstance(data, (torch.Tensor, Mapping, list, tuple)):
            return data.to(self.args.device)
        return super()._prepare_input(data)  # type: ignore[misc]

    def _prepare_inputs(self, inputs: Any) -> Any:
        if isinstance(inputs, Mapping):
            return super()._prepare_inputs(inputs)  # type: ignore[misc]
        return self._prepare_input(inputs)

    def _get_num_items_in_batch(self, batch_samples: list[Any], device: torch.device) -> Any:
        if batch_samples and isinstance(batch_samples[0], Mapping):
            return super()._get_num_items_in_batch(batch_samples, device)  # type: ignore[misc]
        return None

    def floating_point_ops(self, inputs: Any) -> int:
        if isinstance(inputs, Mapping):
            return int(super().floating_point_ops(inputs))  # type: ignore[misc]
        return 0

    # -- optimizer and schedule ---------------------------------------------------------------------------
    def create_optimizer(self, model: Any = None) -> Any:
        """The upstream optimizer; with ``projector_lr`` set, the projector's parameters move to groups of
        their own at that rate (the schedule scales every group alike)."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)  # type: ignore[misc]
        rate = self.vlsafe_config.projector_lr
        if fresh and rate is not None:
            ids = {id(p) for _, p in projector_params(self.model if model is None else model)}
            moved = []
            for group in list(optimizer.param_groups):
                mine = [p for p in group["params"] if id(p) in ids]
                if mine:
                    group["params"] = [p for p in group["params"] if id(p) not in ids]
                    moved.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "lr": rate})
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
            for group in moved:
                optimizer.add_param_group(group)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer if optimizer is not None else self.optimizer, lr_lambda(self.vlsafe_config)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        value = super()._get_grad_norm(model, grad_norm)  # type: ignore[misc]
        self._grad_norm = None if value is None else float(value)
        return value

    # -- per-step bookkeeping --------------------------------------------------------------------------------
    def _step_metrics(self, tr_loss: torch.Tensor, learning_rate: float | None) -> dict[str, float]:
        keys = sorted(k for k in self._sums if k != "loss")
        values = torch.stack([tr_loss.detach().float().reshape(()).cpu(),
                              *(torch.tensor(self._sums[k], dtype=torch.float32) for k in keys)])  # fmt: skip
        tr_loss -= tr_loss  # transformers keeps it on the device; the engine reads it every step
        if self.args.world_size > 1:  # the mean over processes (each averaged its share of the batch)
            values = self.accelerator.reduce(values.to(self.args.device), reduction="mean").cpu()
        metrics: dict[str, float] = {"step": float(self.state.global_step), "loss": float(values[0])}
        metrics.update({k: float(v) for k, v in zip(keys, values[1:].tolist(), strict=True)})
        if self.vlsafe_config.max_grad_norm is not None and self._grad_norm is not None:
            metrics["grad_norm"] = self._grad_norm
        lr = learning_rate if learning_rate is not None else float(self.lr_scheduler.get_last_lr()[0])
        metrics["lr"] = float(lr)
        self._sums = {}
        return metrics

    def _maybe_log_save_evaluate(self, tr_loss: torch.Tensor, grad_norm: Any, model: Any, trial: Any, epoch: Any,
                                 ignore_keys_for_eval: Any, start_time: float,
                                 learning_rate: float | None = None) -> None:  # fmt: skip
        step = int(self.state.global_step)
        if step > self._logged_step:
            self._logged_step = step
            metrics = self._step_metrics(tr_loss, learning_rate)
            self.history.append(metrics)
            if self.is_main:
                with (self.output_dir / LOG_FILE).open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(metrics) + "\n")
            self.log({k: v for k, v in metrics.items() if k != "step"})  # type: ignore[attr-defined]
            if self._bar is not None:
                self._bar.update(step - self._bar.n)
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k not in ("step", "lr")})
            stop = False
            for cb in self.vlsafe_callbacks:
                hook = getattr(cb, "on_step", cb)
                stop = bool(hook(step, metrics)) or stop
            cfg = self.vlsafe_config
            if stop:
                self.control.should_training_stop = True
            last = self.control.should_training_stop or step >= self.args.max_steps
            self.control.should_save = bool(
                (cfg.save_every and step % cfg.save_every == 0) or (cfg.save_final and last)
            )
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch,  # type: ignore[misc]
                                         ignore_keys_for_eval, start_time, learning_rate=learning_rate)  # fmt: skip

    # -- checkpoints: whole or absent --------------------------------------------------------------------
    def _backend_checkpoint(self) -> bool:
        return bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = int(self.state.global_step)
        final = self.output_dir / f"checkpoint-{step}"
        partial = self.output_dir / f"checkpoint-{step}{PARTIAL_SUFFIX}"
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.store_flos()  # type: ignore[attr-defined]
        self.save_model(str(partial), _internal_call=True)  # type: ignore[attr-defined]
        self._save_optimizer_and_scheduler(str(partial))
        self._save_scaler(str(partial))  # type: ignore[attr-defined]
        self._save_rng_state(str(partial))
        if self.args.should_save:
            self.state.save_to_json(str(partial / STATE_FILE))
            engine = {
                "format": "vlsafe-engine-checkpoint/1",
                "step": step,
                "config": self.vlsafe_config.model_dump(mode="json"),
                "history": self.history,
            }
            if not self._backend_checkpoint():
                engine["optimizer"] = self._optimizer_meta
                sched = self.lr_scheduler.state_dict()
                if "lr_lambdas" in sched:  # rebuilt from the config
                    sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])
                engine["scheduler"] = sched
            write_json_atomic(partial / ENGINE_STATE_FILE, engine, indent=1)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            old = self.output_dir / f"checkpoint-{step}.old"
            if final.exists():  # the same step saved again (a resumed, finished run): swap whole folders
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
            fsync_dir(self.output_dir)
            self._prune()
        self.accelerator.wait_for_everyone()

    def _prune(self) -> None:
        found = sorted(
            (int(p.name.split("-", 1)[1]), p)
            for p in self.output_dir.glob("checkpoint-*")
            if p.name.split("-", 1)[1].isdigit()
        )
        for _, old in found[: -self.vlsafe_config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir or ".")
        out.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            tensors = trainable_state(model)
        else:
            names = {n for n, p in model.named_parameters() if p.requires_grad}
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in names}
        save_file(tensors, str(out / TRAINABLE_FILE))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self._backend_checkpoint():
            super()._save_optimizer_and_scheduler(output_dir)  # type: ignore[misc]
            return
        if self.args.should_save:
            tensors, meta = optimizer_split(self.optimizer)
            save_file(tensors, str(Path(output_dir) / OPTIMIZER_FILE))
            self._optimizer_meta = meta

    def _save_rng_state(self, output_dir: str) -> None:
        tensors, meta = rng_tensors()
        k = self.args.process_index
        save_file(tensors, str(Path(output_dir) / f"rng_{k}.safetensors"))
        write_json_atomic(Path(output_dir) / f"rng_{k}.json", meta)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        root = Path(resume_from_checkpoint)
        if self._backend_checkpoint() and model is not None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
            return
        load_trainable(self.accelerator.unwrap_model(model if model is not None else self.model), root)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        root = Path(checkpoint)
        if self._backend_checkpoint() or not (root / OPTIMIZER_FILE).is_file():
            super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
            return
        state = read_json(root / ENGINE_STATE_FILE, "engine state")
        self.optimizer.load_state_dict(
            optimizer_join(load_file(str(root / OPTIMIZER_FILE)), state["optimizer"])
        )
        self.lr_scheduler.load_state_dict(state["scheduler"])

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        root, k = Path(checkpoint), self.args.process_index
        file = root / f"rng_{k}.safetensors"
        if not file.is_file():
            logger.warning("%s has no RNG state of process %d; the random streams start afresh", root, k)
            return
        set_rng(load_file(str(file)), read_json(root / f"rng_{k}.json", "rng state"))

    # -- resume ---------------------------------------------------------------------------------------------
    def resume_target(self) -> Path | None:
        """The checkpoint this run continues from (``None``: start at step 0), after removing partial checkpoints
        (main process) and checking that the checkpoint's config matches (:func:`check_resume_config`)."""
        if self.is_main:
            clean_partial_checkpoints(self.output_dir)
        self.accelerator.wait_for_everyone()
        return resume_checkpoint(self.vlsafe_config)

    def run(self) -> TrainResult:
        """Resume or start (:meth:`resume_target`), train to ``max_steps`` (or a callback's stop), and return the
        summary. The newest checkpoint in ``TrainResult.checkpoint`` is the one at the final step, if written."""
        target = self.resume_target()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.history = []
        if target is not None:
            self.history = list(read_json(target / ENGINE_STATE_FILE, "engine state").get("history", []))
        if self.is_main:
            lines = "".join(json.dumps(m) + "\n" for m in self.history)
            (self.output_dir / LOG_FILE).write_text(lines, encoding="utf-8")
            write_json_atomic(self.output_dir / RUN_CONFIG_FILE, self.vlsafe_config.model_dump(mode="json"),
                              indent=1)  # fmt: skip
        self.resumed_from = target
        self._logged_step = -1
        self.train(resume_from_checkpoint=str(target) if target is not None else None)  # type: ignore[attr-defined]
        step = int(self.state.global_step)
        last = self.output_dir / f"checkpoint-{step}"
        return TrainResult(step, list(self.history), last if (last / STATE_FILE).is_file() else None, target)


class _EngineEvents(TrainerCallback):
    """Bridges transformers' events to vlsafe callbacks and the progress bar."""

    def __init__(self, engine: EngineMixin) -> None:
        self.engine = engine

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        eng = self.engine
        eng._logged_step = int(state.global_step)
        if eng.vlsafe_config.progress and eng.is_main:
            eng._bar = tqdm(total=int(state.max_steps), initial=int(state.global_step),
                            desc=f"train {eng.vlsafe_config.stage}")  # fmt: skip
        for cb in eng.vlsafe_callbacks:
            hook = getattr(cb, "on_train_begin", None)
            if hook is not None:
                hook(int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        eng = self.engine
        if eng._bar is not None:
            eng._bar.close()
            eng._bar = None
        for cb in eng.vlsafe_callbacks:
            hook = getattr(cb, "on_train_end", None)
            if hook is not None:
                hook(int(state.global_step))


class LossFnTrainer(EngineMixin, HFTrainer):
    """The engine around a vlsafe loss function ``(model, batch, step) -> LossOutput``.

    ``model`` is the model as transformers wrapped it (DDP, FSDP, DeepSpeed engine or the model itself): a loss
    function must call it (not a submodule) for its forward pass, so that the backend synchronises gradients;
    under DDP a loss function that does not is refused (:class:`~vlsafe.core.errors.ConfigError`).
    ``step`` is the 0-based optimizer step.
    """

    def __init__(self, *args: Any, loss_fn: LossFn, **kwargs: Any) -> None:
        self.loss_fn = loss_fn
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:  # fmt: skip
        called: list[bool] = []
        handle = None
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            handle = model.register_forward_pre_hook(lambda *_: called.append(True))
        try:
            out = self.loss_fn(model, inputs, int(self.state.global_step))
        finally:
            if handle is not None:
                handle.remove()
        if handle is not None and not called:
            raise ConfigError(
                f"the loss function {getattr(self.loss_fn, '__name__', type(self.loss_fn).__name__)} did not call "
                "the model it was given (it called a part of it): under DDP its gradients would not be averaged "
                "across processes; call model(...) for the forward pass"
            )
        self.record_metrics({"loss": float(out.loss.detach()), **out.metrics})
        return (out.loss, None) if return_outputs else out.loss


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

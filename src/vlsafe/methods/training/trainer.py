"""The shared trainer of TGA, safety SFT / DPO and the organism: :class:`Trainer`, a thin front end of the
engine (:mod:`vlsafe.methods.training.engine`, on ``transformers.Trainer``).

Usage::

    def loss_fn(model, batch, step) -> LossOutput:          # batch = collate_fn([records...]) moved to device
        loss = ...                                            # call `model` itself (it may be a DDP/FSDP wrapper)
        return LossOutput(loss, {"ce": float(ce)})           # components are logged beside "loss"

    trainer = Trainer(bundle, TrainConfig(output_dir="runs/x", stage="projector", max_steps=100),
                      loss_fn, dataset, collate_fn, callbacks=[my_callback])
    result = trainer.train()                                  # resumes from output_dir when resume="auto"

:class:`Trainer` seeds, applies the stage (which parameters train; LoRA through peft), turns the KV cache off,
and builds the engine: by default :class:`~vlsafe.methods.training.engine.LossFnTrainer` around ``loss_fn``;
``engine_class`` picks another ``EngineMixin`` + ``transformers.Trainer`` subclass (TGA's
:class:`~vlsafe.methods.training.tga_loss.TGATrainer`). Data order, schedule, checkpoints, resume, logging and
callbacks are the engine's (see its module docstring). Launch several processes with ``accelerate launch``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.engine import (
    EngineMixin,
    LossFn,
    LossFnTrainer,
    LossOutput,
    TrainConfig,
    TrainResult,
    lr_lambda,
    seed_everything,
    trainer_args,
)
from vlsafe.methods.training.stages import apply_stage, unwrap
from vlsafe.models.bundle import ModelBundle

logger = logging.getLogger(__name__)

__all__ = ["LossFn", "LossOutput", "TrainConfig", "TrainResult", "Trainer"]

_lr_lambda = lr_lambda  # the name earlier releases had


class Trainer:
    """Train ``bundle.model`` on ``loss_fn`` over ``dataset`` (see the module docstring).

    Args:
        bundle: the model; after construction ``bundle.model`` is the model being trained (a peft wrapper
            for LoRA stages; decoder-layer modules in ``bundle.layers`` stay the same objects).
        config: a :class:`TrainConfig` (or subclass).
        loss_fn: ``(model, batch, step) -> LossOutput``; ``step`` is the 0-based optimizer step (unused when
            ``engine_class`` computes its own loss).
        dataset: records (any objects); ``collate_fn`` turns a list of them into a batch.
        collate_fn: ``list[record] -> batch``; a batch with ``.to(device)`` or a dict of tensors is moved
            to the device.
        callbacks: ``transformers.TrainerCallback`` instances, objects with ``on_step(step, metrics)`` (and
            optionally ``on_train_begin(step)`` / ``on_train_end(step)``), or callables ``(step, metrics)``.
        engine_class: the engine (an :class:`EngineMixin` + ``transformers.Trainer`` subclass).
        engine_kwargs: further keyword arguments of ``engine_class``.

    Raises:
        ConfigError: an empty dataset, or training arguments transformers refuses.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        config: TrainConfig,
        loss_fn: LossFn | None,
        dataset: Sequence[Any],
        collate_fn: Callable[[list[Any]], Any],
        callbacks: Sequence[Any] = (),
        *,
        engine_class: type[EngineMixin] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise ConfigError("the training dataset is empty")
        self.bundle, self.config = bundle, config
        seed_everything(config.seed)
        model = apply_stage(bundle.model, config.stage, config.lora)
        hf_config: Any = getattr(unwrap(model), "config", None)
        if hasattr(hf_config, "use_cache"):
            hf_config.use_cache = False
        bundle.model = model
        self.model = model
        hf_callbacks = [cb for cb in callbacks if isinstance(cb, TrainerCallback)]
        own = [cb for cb in callbacks if not isinstance(cb, TrainerCallback)]
        kwargs: dict[str, Any] = dict(engine_kwargs or {})
        if engine_class is None:
            if loss_fn is None:
                raise ConfigError("give a loss function or an engine class that computes the loss")
            engine_class = LossFnTrainer
            kwargs["loss_fn"] = loss_fn
        #: the transformers.Trainer that trains
        self.engine: Any = engine_class(
            model=model,
            args=trainer_args(config),
            data_collator=collate_fn,
            train_dataset=dataset,
            callbacks=hf_callbacks,
            vlsafe_config=config,
            vlsafe_callbacks=own,
            **kwargs,
        )
        #: Where the model and every batch live.
        self.device = torch.device(self.engine.args.device)

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return int(self.engine.state.global_step)

    @property
    def history(self) -> list[dict[str, float]]:
        """Per-step metrics of the run so far."""
        return list(self.engine.history)

    @property
    def optimizer(self) -> Any:
        """The optimizer (``None`` before :meth:`train` builds it)."""
        return self.engine.optimizer

    def train(self) -> TrainResult:
        """Run (or resume) until ``max_steps`` (or a callback's stop); saves the final checkpoint unless
        ``save_final`` is off, and returns a summary."""
        return self.engine.run()

    def resume_target(self) -> Path | None:
        """The checkpoint :meth:`train` would continue from (checks it; see ``EngineMixin.resume_target``)."""
        return self.engine.resume_target()

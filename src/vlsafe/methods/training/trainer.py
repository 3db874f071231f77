"""A small, resumable training loop shared by TGA, safety SFT and DPO.

Usage::

    def loss_fn(model, batch, step) -> LossOutput:          # batch = collate_fn([records...]) moved to device
        loss = ...
        return LossOutput(loss, {"ce": float(ce)})           # components are logged beside "loss"

    trainer = Trainer(bundle, TrainConfig(output_dir="runs/x", stage="projector", max_steps=100),
                      loss_fn, dataset, collate_fn, callbacks=[my_callback])
    result = trainer.train()                                  # resumes from output_dir when resume="auto"

* The data is a map-style sequence of records; the trainer draws batches itself, so a resumed run sees
  exactly the batches the uninterrupted run would have seen and skipping costs nothing. With ``shuffle``, each
  epoch is a permutation of the records (``torch.randperm`` seeded with ``seed * 1_000_003 + epoch``), cut
  into consecutive global batches of ``batch_size`` records per process, the incomplete rest of the epoch
  dropped (a dataset smaller than one global batch wraps around); process ``k`` takes the ``k``-th share of
  each global batch. Without ``shuffle`` the records keep their order.
* Device and process group come from ``accelerate`` (``accelerate launch`` for several GPUs: each rank takes
  its share of every batch and gradients are averaged across ranks before the optimizer step); ``use_cpu``
  trains on the CPU of a single process even when an accelerator is visible. Gradient accumulation, ``bf16``
  autocast, gradient checkpointing and the stage (which parameters train) are options.
* The optimizer is AdamW over the stage's trainable parameters; the learning rate rises linearly over
  ``warmup_steps`` (``lr * (step + 1) / warmup_steps`` at 0-based step ``step``), then follows ``schedule``;
  the gradient norm is clipped to ``max_grad_norm`` before each optimizer step.
* A callback is any object with ``on_step(step, metrics)`` or a plain callable ``(step, metrics)``; it runs on
  every process after each optimizer step; returning ``True`` stops training after that step. An object may
  also have ``on_train_begin(step)`` (called once before the first step of :meth:`Trainer.train`, with the
  step training starts from: 0, or the step of the checkpoint resumed) and ``on_train_end(step)`` (called
  once after the last step and the final checkpoint, whether ``max_steps`` was reached or a callback stopped
  training).
* Checkpoints (``output_dir/checkpoint-<step>``) are safetensors + JSON (:mod:`vlsafe.methods.training.checkpoint`):
  every ``save_every`` steps and after the last step unless ``save_final`` is off; ``output_dir/log.jsonl``
  gets one line of metrics per step.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vlsafe.methods.training.stages import LoraSettings, Stage, apply_stage, unwrap
from vlsafe.models.bundle import ModelBundle

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Options of one training stage (subclass it for method-specific fields)."""

    model_config = ConfigDict(extra="forbid")
    output_dir: Path
    stage: Stage = "projector"
    lora: LoraSettings | None = None
    max_steps: int = Field(100, gt=0, description="optimizer steps")
    batch_size: int = Field(4, gt=0, description="records per micro-batch per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
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


@dataclass
class LossOutput:
    """What a loss function returns: the scalar to minimise and float components to log."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[Any, Any, int], LossOutput]


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.train`."""

    step: int
    history: list[dict[str, float]]
    checkpoint: Path | None  # the last checkpoint written (None when none was)
    resumed_from: Path | None = None


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    warm, total, kind = config.warmup_steps, config.max_steps, config.schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _move(batch: Any, device: torch.device) -> Any:
    if hasattr(batch, "to") and not isinstance(batch, dict):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Train ``bundle.model`` on ``loss_fn`` over ``dataset`` (see the module docstring).

    Args:
        bundle: the model; after construction ``bundle.model`` is the model being trained (a peft wrapper
            for LoRA stages; decoder-layer modules in ``bundle.layers`` stay the same objects).
        config: a :class:`TrainConfig` (or subclass).
        loss_fn: ``(model, batch, step) -> LossOutput``; ``step`` is the 0-based optimizer step.
        dataset: records (any objects); ``collate_fn`` turns a list of them into a batch.
        collate_fn: ``list[record] -> batch``; a batch with ``.to(device)`` or a dict of tensors is moved
            to the device.
        callbacks: objects with ``on_step(step, metrics)`` (and optionally ``on_train_begin(step)`` /
            ``on_train_end(step)``) or callables ``(step, metrics)``.

    Raises:
        ConfigError: an empty dataset, or ``use_cpu`` in a launch of several processes on accelerators.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        config: TrainConfig,
        loss_fn: LossFn,
        dataset: Sequence[Any],
        collate_fn: Callable[[list[Any]], Any],
        callbacks: Sequence[Any] = (),
    ) -> None:
        if len(dataset) == 0:
            raise ConfigError("the training dataset is empty")
        self.accelerator = Accelerator()
        if config.use_cpu and self.accelerator.num_processes > 1 and self.accelerator.device.type != "cpu":
            raise ConfigError(
                f"use_cpu=True needs a single process or a CPU launch; this launch runs "
                f"{self.accelerator.num_processes} processes on {self.accelerator.device.type}"
            )
        #: Where the model and every batch live.
        self.device = torch.device("cpu") if config.use_cpu else self.accelerator.device
        self.bundle, self.config, self.loss_fn = bundle, config, loss_fn
        self.dataset, self.collate_fn, self.callbacks = dataset, collate_fn, list(callbacks)
        _seed_all(config.seed)
        model = apply_stage(bundle.model, config.stage, config.lora)
        model.to(self.device)
        if config.gradient_checkpointing:
            unwrap(model).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        hf_config: Any = getattr(unwrap(model), "config", None)
        if hasattr(hf_config, "use_cache"):
            hf_config.use_cache = False
        bundle.model = model
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.step = 0
        self.history: list[dict[str, float]] = []

    # -- data ---------------------------------------------------------------------------------
    def _micro_batch(self, index: int) -> list[Any]:
        """Records of global micro-batch ``index`` for this process (deterministic in ``index``)."""
        cfg, acc = self.config, self.accelerator
        per_step = cfg.batch_size * acc.num_processes
        n = len(self.dataset)
        per_epoch = max(1, n // per_step) if n >= per_step else 1
        epoch, pos = divmod(index, per_epoch)
        if cfg.shuffle:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        start = pos * per_step + acc.process_index * cfg.batch_size
        return [self.dataset[order[(start + k) % n]] for k in range(cfg.batch_size)]

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write a resumable checkpoint (default ``output_dir/checkpoint-<step>``) on the main process."""
        out = Path(path) if path else self.config.output_dir / f"checkpoint-{self.step}"
        if self.accelerator.is_main_process:
            extra = {"config": self.config.model_dump(mode="json"), "history": self.history}
            save_checkpoint(out, self.model, self.optimizer, self.scheduler, self.step, extra)
            self._prune()
        self.accelerator.wait_for_everyone()
        return out

    def _prune(self) -> None:
        found = sorted(
            (int(p.name.split("-", 1)[1]), p)
            for p in self.config.output_dir.glob("checkpoint-*")
            if p.name.split("-", 1)[1].isdigit()
        )
        for _, old in found[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, RNG, step and history from a checkpoint."""
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.step = int(state["step"])
        self.history = list(state.get("extra", {}).get("history", []))
        if self.accelerator.is_main_process:  # drop log lines of steps after the checkpoint
            lines = "".join(json.dumps(m) + "\n" for m in self.history)
            (self.config.output_dir / "log.jsonl").write_text(lines)
        logger.info("resumed from %s at step %d", path, self.step)

    def _resume_target(self) -> Path | None:
        resume = self.config.resume
        if resume == "never":
            return None
        if resume == "auto":
            return latest_checkpoint(self.config.output_dir)
        return Path(resume)

    # -- loop -----------------------------------------------------------------------------------
    def _sync_gradients(self) -> None:
        if self.accelerator.num_processes > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad.copy_(self.accelerator.reduce(p.grad, reduction="mean"))

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches); returns the step's metrics."""
        cfg, device = self.config, self.device
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = _move(self.collate_fn(self._micro_batch(self.step * cfg.grad_accum + micro)), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                out = self.loss_fn(self.model, batch, self.step)
            (out.loss / cfg.grad_accum).backward()
            for key, value in {"loss": float(out.loss.detach()), **out.metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / cfg.grad_accum
        self._sync_gradients()
        if cfg.max_grad_norm is not None:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        sums["lr"] = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"step": float(self.step), **sums}

    def _notify(self, metrics: dict[str, float]) -> bool:
        stop = False
        for cb in self.callbacks:
            hook = getattr(cb, "on_step", cb)
            stop = bool(hook(self.step, metrics)) or stop
        return stop

    def _notify_event(self, event: str) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self.step)

    def train(self) -> TrainResult:
        """Run (or resume) until ``max_steps`` (or a callback's stop); saves the final checkpoint unless
        ``save_final`` is off, and returns a summary."""
        cfg = self.config
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        target = self._resume_target()
        log = cfg.output_dir / "log.jsonl"
        if target is not None:
            self.resume(target)
        elif self.step == 0 and self.accelerator.is_main_process:  # a run from step 0 starts a fresh log
            log.write_text("")
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc=f"train {cfg.stage}",
            disable=not (cfg.progress and self.accelerator.is_main_process) or None,
        )
        last: Path | None = None
        stopped = False
        self._notify_event("on_train_begin")
        while self.step < cfg.max_steps and not stopped:
            metrics = self.train_step()
            self.history.append(metrics)
            if self.accelerator.is_main_process:
                with log.open("a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k not in ("step", "lr")})
            stopped = self._notify(metrics)
            if cfg.save_every and self.step % cfg.save_every == 0:
                last = self.save()
        bar.close()
        if cfg.save_final and (last is None or not last.name.endswith(f"-{self.step}")):
            last = self.save()
        self._notify_event("on_train_end")
        return TrainResult(self.step, self.history, last, target)

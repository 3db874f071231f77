"""A training run in its own process, for the engine's kill / resume and multi-process tests.

``python train_worker.py SPEC.json`` trains as SPEC says and writes the trained parameters to
``<out>/final.safetensors`` (main process). SPEC keys:

* ``kind``: ``toy`` (a two-layer MLP regression, :func:`toy_bundle`) or ``tga`` (TGA on a tiny VLM in
  ``model_dir`` over ``records``, through :class:`~vlsafe.methods.training.TGATrainer`);
* ``config``: :class:`~vlsafe.methods.training.TrainConfig` fields (``output_dir`` included);
* ``sleep``: seconds to sleep after each optimizer step (gives an outside ``kill -9`` a run to interrupt);
* ``fail_in_save``: the step whose checkpoint write fails (an exception after the weights and optimizer files,
  before the RNG state, so a ``checkpoint-N.partial`` folder is left).

The module is also imported by the tests, for the same models and data in process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlsafe.methods.training import (
    LossFnTrainer,
    LossOutput,
    TGALoss,
    TGARecord,
    TGATrainer,
    TrainConfig,
    Trainer,
    encode_tga_batch,
    trainable_state,
)
from vlsafe.models import load_model
from vlsafe.models.bundle import ModelBundle


class ToyNet(torch.nn.Module):
    """A two-layer MLP laid out as the stages expect (``model.layers``), seeded weights."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([torch.nn.Linear(6, 8), torch.nn.Linear(8, 1)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def get_input_embeddings(self) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.model.layers
        return second(torch.tanh(first(x))).squeeze(-1)


def toy_bundle() -> ModelBundle:
    net = ToyNet()
    return ModelBundle(model=net, tokenizer=None, processor=None, family="causal_lm", layers=net.model.layers)


def toy_data(n: int = 20) -> list[torch.Tensor]:
    """Rows ``[x (6 values), y]``; ``y`` a fixed nonlinear function of ``x``."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=gen)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    return list(torch.cat([x, y[:, None]], dim=1))


def toy_loss(model: Any, batch: torch.Tensor, step: int) -> LossOutput:
    pred = model(batch[:, :6])
    return LossOutput((pred - batch[:, 6]).pow(2).mean())


class SaveFailure(RuntimeError):
    """The failure :class:`FailInSave` raises."""


class FailInSave(LossFnTrainer):
    """The toy engine, whose checkpoint write of step ``fail_at`` fails half-way."""

    fail_at = -1

    def _save_rng_state(self, output_dir: str) -> None:
        if int(self.state.global_step) == self.fail_at:
            raise SaveFailure(f"failed while writing {output_dir}")
        super()._save_rng_state(output_dir)


def make_trainer(spec: dict[str, Any]) -> Trainer:
    """The :class:`Trainer` of ``spec`` (see the module docstring)."""
    cfg = TrainConfig.model_validate(spec["config"])
    callbacks: list[Any] = []
    if spec.get("sleep"):
        callbacks.append(lambda step, metrics: time.sleep(float(spec["sleep"])))
    if spec["kind"] == "toy":
        bundle = toy_bundle()
        engine: Any = None
        kwargs: dict[str, Any] = {}
        if spec.get("fail_in_save") is not None:
            engine = type("FailAt", (FailInSave,), {"fail_at": int(spec["fail_in_save"])})
            kwargs = {"loss_fn": toy_loss}
        return Trainer(bundle, cfg, toy_loss, toy_data(), torch.stack, callbacks, engine_class=engine,
                       engine_kwargs=kwargs)  # fmt: skip
    bundle = load_model(spec["model_dir"], dtype="float32")
    records = [TGARecord.model_validate(r) for r in spec["records"]]
    tga = TGALoss(bundle, [0, 1], weight=0.5, schedule="linear", max_steps=cfg.max_steps)
    return Trainer(bundle, cfg, None, records, lambda rows: encode_tga_batch(bundle, rows), callbacks,
                   engine_class=TGATrainer, engine_kwargs={"tga": tga})  # fmt: skip


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainable_state(trainer.model)


def main(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    torch.set_num_threads(1)
    trainer = make_trainer(spec)
    trainer.train()
    if trainer.engine.is_main:
        save_file(final_weights(trainer), str(Path(spec["config"]["output_dir"]) / "final.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])

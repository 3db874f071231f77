"""The shared Trainer (on transformers.Trainer) on tiny models: exact resume, stages, callbacks, accumulation,
checkpoint pruning, the TrainingArguments mapping, the safety probe as a TrainerCallback, and a two-process
(gloo) run that equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file

from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError
from vlsafe.methods.training import (
    LossOutput,
    ProbeSettings,
    SafetyTracker,
    TGALoss,
    TGARecord,
    TGATrainer,
    TrainConfig,
    Trainer,
    apply_stage,
    encode_tga_batch,
    language_model,
    projector_params,
    trainable_state,
    trainer_args,
)
from vlsafe.models import VLM_FAMILIES, load_model
from vlsafe.models.bundle import ModelBundle


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[TGARecord]:
    root = tmp_path_factory.mktemp("trainer-data")
    out = []
    for i in range(4):
        rng = np.random.default_rng(i)
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), "RGB").save(path)
        out.append(
            TGARecord(
                image=str(path),
                instruction=f"What is shown in picture {i}?",
                answer=f"Picture {i} shows noise.",
                caption=f"random coloured noise number {i}",
                retrieved="noise is random" if i % 2 == 0 else None,
            )
        )
    return out


def _trainer(
    tiny_dir: Callable[[str], Path], records: list[TGARecord], out: Path, **overrides: object
) -> Trainer:
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    cfg = TrainConfig.model_validate(
        {
            "output_dir": out,
            "stage": "projector_lora",
            "max_steps": 3,
            "batch_size": 2,
            "lr": 5e-3,
            "save_every": 2,
            "lora": {"rank": 4},
            "progress": False,
            **overrides,
        }  # fmt: skip
    )
    loss = TGALoss(bundle, [0], weight=0.5, schedule="linear", max_steps=cfg.max_steps)
    return Trainer(bundle, cfg, loss, records, lambda rows: encode_tga_batch(bundle, rows))


def test_resume_gives_the_same_next_step_losses(
    tiny_dir: Callable[[str], Path], records: list[TGARecord], tmp_path: Path
) -> None:
    full = _trainer(tiny_dir, records, tmp_path).train()
    assert [h["step"] for h in full.history] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    shutil.rmtree(tmp_path / "checkpoint-3")  # "interrupted" after step 2
    resumed = _trainer(tiny_dir, records, tmp_path).train()
    assert resumed.resumed_from == tmp_path / "checkpoint-2"
    for a, b in zip(full.history[2:], resumed.history[2:], strict=True):
        for key in ("loss", "ce", "guide", "lambda", "lr"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_stages_select_parameters(family: str, tiny_dir: Callable[[str], Path]) -> None:
    model = load_model(tiny_dir(family), dtype="float32").model
    proj = {id(p) for _, p in projector_params(model)}
    assert proj
    apply_stage(model, "projector")
    assert {id(p) for p in model.parameters() if p.requires_grad} == proj
    apply_stage(model, "projector_llm")
    _, llm = language_model(model)
    embed = {id(p) for p in model.get_input_embeddings().parameters()}
    train = {id(p) for p in model.parameters() if p.requires_grad}
    assert train == proj | ({id(p) for p in llm.parameters()} - embed)
    assert not any(id(p) in train for p in model.get_output_embeddings().parameters())
    lora = apply_stage(model, "projector_lora")
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or id(dict(lora.named_parameters())[n]) in proj for n in names)
    assert not any("vision" in n and "lora_" in n for n in names)  # adapters only on the LLM


def test_causal_lm_has_no_projector_stage(tiny_dir: Callable[[str], Path]) -> None:
    model = load_model(tiny_dir("causal_lm"), dtype="float32").model
    with pytest.raises(ConfigError, match="no vision-language projector"):
        apply_stage(model, "projector")
    apply_stage(model, "llm")
    assert any(p.requires_grad for p in model.parameters())


class _Toy(torch.nn.Module):
    """A model with the attribute layout the stages expect (``model.layers``), one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 1, bias=False)])
        self.model.layers[0].weight.data.zero_()

    def get_input_embeddings(self) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.layers[0](x).squeeze(-1)


def _toy_run(
    tmp_path: Path, batch_size: int, grad_accum: int, stop_at: int | None = None
) -> tuple[list[float], list[int]]:
    toy = _Toy()
    bundle = ModelBundle(
        model=toy, tokenizer=None, processor=None, family="causal_lm", layers=toy.model.layers
    )
    seen: list[int] = []

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor, step: int) -> LossOutput:
        return LossOutput((model(batch) - 1.0).pow(2).mean(), {"rows": float(batch.shape[0])})

    def cb(step: int, metrics: dict[str, float]) -> bool:
        seen.append(step)
        return step == stop_at

    data = [
        torch.tensor([1.0, 0.0]),
        torch.tensor([0.0, 2.0]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([3.0, 0.0]),
    ]
    cfg = TrainConfig(output_dir=tmp_path, stage="llm", max_steps=5, batch_size=batch_size, grad_accum=grad_accum,
                      lr=0.05, shuffle=False, max_grad_norm=None, progress=False, resume="never")  # fmt: skip
    Trainer(bundle, cfg, loss_fn, data, torch.stack, callbacks=[cb]).train()
    return toy.model.layers[0].weight.detach().flatten().tolist(), seen


def test_accumulation_equals_larger_batch_and_callback_stops(tmp_path: Path) -> None:
    big, _ = _toy_run(tmp_path / "a", batch_size=2, grad_accum=1)
    accum, _ = _toy_run(tmp_path / "b", batch_size=1, grad_accum=2)
    assert accum == pytest.approx(big, abs=1e-7)
    assert big != [0.0, 0.0]
    _, seen = _toy_run(tmp_path / "c", batch_size=1, grad_accum=1, stop_at=3)
    assert seen == [1, 2, 3]


class _Recorder:
    """A callback with every hook; stops after step ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def on_train_begin(self, step: int) -> None:
        self.events.append(("begin", step))

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        self.events.append(("step", step))
        return step == self.stop_at

    def on_train_end(self, step: int) -> None:
        self.events.append(("end", step))


def _toy_trainer(tmp_path: Path, callbacks: list[object], **overrides: object) -> tuple[Trainer, _Toy]:
    toy = _Toy()
    bundle = ModelBundle(
        model=toy, tokenizer=None, processor=None, family="causal_lm", layers=toy.model.layers
    )
    data = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])]

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor, step: int) -> LossOutput:
        return LossOutput((model(batch) - 1.0).pow(2).mean())

    cfg = TrainConfig.model_validate(
        {
            "output_dir": tmp_path,
            "stage": "llm",
            "max_steps": 4,
            "batch_size": 1,
            "lr": 0.1,
            "warmup_steps": 3,
            "progress": False,
            **overrides,
        }  # fmt: skip
    )
    return Trainer(bundle, cfg, loss_fn, data, torch.stack, callbacks=callbacks), toy


def test_callback_hooks_warmup_and_no_final_checkpoint(tmp_path: Path) -> None:
    rec = _Recorder()
    trainer, toy = _toy_trainer(tmp_path, [rec], save_final=False, use_cpu=True)
    assert trainer.device == torch.device("cpu") and toy.model.layers[0].weight.device.type == "cpu"
    result = trainer.train()
    assert rec.events == [("begin", 0), ("step", 1), ("step", 2), ("step", 3), ("step", 4), ("end", 4)]
    assert [h["lr"] for h in result.history] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])
    assert result.checkpoint is None and not list(tmp_path.glob("checkpoint-*"))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4
    again, _ = _toy_trainer(tmp_path, [], save_final=False, resume="never")
    again.train()  # a run from step 0 rewrites the log instead of appending to it
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4


def test_train_end_hook_runs_after_a_stop_and_the_final_checkpoint(tmp_path: Path) -> None:
    rec = _Recorder(stop_at=2)
    seen: list[bool] = []
    trainer, _ = _toy_trainer(tmp_path, [rec])
    rec.on_train_end = lambda step: seen.append((tmp_path / f"checkpoint-{step}").is_dir())  # type: ignore[method-assign]
    result = trainer.train()
    assert rec.events == [("begin", 0), ("step", 1), ("step", 2)] and seen == [True]
    assert result.step == 2 and result.checkpoint == tmp_path / "checkpoint-2"
    resumed = _Recorder()
    _toy_trainer(tmp_path, [resumed], max_steps=3)[0].train()
    assert resumed.events == [("begin", 2), ("step", 3), ("end", 3)]


def test_train_config_maps_to_training_arguments_and_passes_upstream_names(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(
        {"output_dir": tmp_path, "max_steps": 7, "batch_size": 3, "grad_accum": 2, "lr": 3e-4, "weight_decay": 0.1,
         "max_grad_norm": None, "mixed_precision": "bf16", "gradient_checkpointing": True, "seed": 11,
         "keep_checkpoints": 4, "use_cpu": True, "trainer": {"optim": "sgd", "dataloader_num_workers": 0, "adam_beta2": 0.95}}
    )  # fmt: skip
    args = trainer_args(cfg)
    assert (args.output_dir, args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (
        str(tmp_path), 7, 3, 2)  # fmt: skip
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm, args.bf16, args.seed) == (3e-4, 0.1, 0.0, True, 11)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.optim, args.adam_beta2, args.save_total_limit, args.remove_unused_columns) == ("sgd", 0.95, 4, False)
    with pytest.raises(ConfigError, match=r"trainer\.learning_rat\b.*not an argument of transformers"):
        validate_config(TrainConfig, {"output_dir": "x", "trainer": {"learning_rat": 1}}, what="cfg")
    with pytest.raises(ConfigError, match=r"trainer\.learning_rate is set from vlsafe's field 'lr'"):
        validate_config(TrainConfig, {"output_dir": "x", "trainer": {"learning_rate": 1}}, what="cfg")
    with pytest.raises(ConfigError, match="optim"):
        trainer_args(TrainConfig(output_dir=tmp_path, trainer={"optim": "no-such-optimizer"}))


def test_safety_tracker_is_a_trainer_callback(tmp_path: Path) -> None:
    bundle = ModelBundle(model=_Toy(), tokenizer=None, processor=None, family="causal_lm", layers=None)
    tracker = SafetyTracker(bundle, ProbeSettings(every=2), tmp_path / "curve.jsonl", tmp_path / "probe")
    probed: list[tuple[int, float | None]] = []
    tracker.probe = lambda step, metrics=None: probed.append(  # type: ignore[method-assign]
        (step, None if metrics is None else metrics["loss"]))  # fmt: skip
    data = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor, step: int) -> LossOutput:
        return LossOutput((model(batch) - 1.0).pow(2).mean())

    cfg = TrainConfig(output_dir=tmp_path, stage="llm", max_steps=5, batch_size=1, lr=0.1, progress=False)
    result = Trainer(bundle, cfg, loss_fn, data, torch.stack, callbacks=[tracker]).train()
    assert probed == [(0, None), (2, result.history[1]["loss"]), (4, result.history[3]["loss"])]


def test_two_processes_equal_one_process_with_the_same_global_batch(
    tiny_dir: Callable[[str], Path], records: list[TGARecord], tmp_path: Path
) -> None:
    """TGA on a tiny LLaVA: 2 CPU processes (torchrun, gloo; DDP through accelerate) x 1 record per step give the
    weights of 1 process x 2 records (the same records per step; gradients averaged by DDP)."""
    config: dict[str, Any] = {"stage": "projector_lora", "lora": {"rank": 4}, "max_steps": 2, "lr": 1e-2,
                              "progress": False, "use_cpu": True, "save_final": False}  # fmt: skip
    spec = {"kind": "tga", "model_dir": str(tiny_dir("llava")), "records": [r.model_dump() for r in records],
            "config": {**config, "output_dir": str(tmp_path / "two"), "batch_size": 1}}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    worker = Path(__file__).resolve().parents[1] / "reliability" / "train_worker.py"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path / "spec.json")], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_file(str(tmp_path / "two" / "final.safetensors"))
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    one_cfg = TrainConfig.model_validate({**config, "output_dir": tmp_path / "one", "batch_size": 2})
    tga = TGALoss(bundle, [0, 1], weight=0.5, schedule="linear", max_steps=2)
    one = Trainer(bundle, one_cfg, None, records, lambda rows: encode_tga_batch(bundle, rows),
                  engine_class=TGATrainer, engine_kwargs={"tga": tga})  # fmt: skip
    history = one.train().history
    weights = trainable_state(one.model)
    assert two.keys() == weights.keys()
    base = trainable_state(apply_stage(load_model(tiny_dir("llava"), dtype="float32").model, "projector_lora",
                                       one_cfg.lora))  # fmt: skip
    assert any(not torch.equal(weights[k], base[k]) for k in weights)  # training moved the weights
    for key in weights:
        torch.testing.assert_close(two[key], weights[key], rtol=1e-4, atol=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged] == pytest.approx([h["loss"] for h in history], rel=1e-4)


def test_a_loss_function_that_bypasses_ddp_is_refused(tmp_path: Path) -> None:
    """Under DDP only a forward pass of the wrapper averages gradients: a loss function that calls a submodule
    is refused instead of training each process on its own gradients."""
    toy = _Toy()
    bundle = ModelBundle(model=toy, tokenizer=None, processor=None, family="causal_lm", layers=toy.model.layers)

    def bypass(model: Any, batch: torch.Tensor, step: int) -> LossOutput:
        return LossOutput(model.module(batch).pow(2).mean())

    def through(model: Any, batch: torch.Tensor, step: int) -> LossOutput:
        return LossOutput(model(batch).pow(2).mean())

    cfg = TrainConfig(output_dir=tmp_path, stage="llm", max_steps=1, batch_size=1, progress=False)
    batch = torch.ones(1, 2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(toy)
        engine = Trainer(bundle, cfg, bypass, [batch[0]], torch.stack).engine
        with pytest.raises(ConfigError, match="did not call the model it was given"):
            engine.compute_loss(wrapped, batch)
        engine.loss_fn = through
        assert float(engine.compute_loss(wrapped, batch).detach()) == 0.0  # the toy's weights start at zero
    finally:
        dist.destroy_process_group()


def test_projector_lr_moves_the_projector_at_its_own_rate(
    tiny_dir: Callable[[str], Path], records: list[TGARecord], tmp_path: Path
) -> None:
    def moved(out: Path, **overrides: object) -> tuple[float, float]:
        trainer = _trainer(tiny_dir, records, out, save_every=0, save_final=False, max_steps=2, **overrides)
        model = trainer.bundle.model
        before = {n: p.detach().clone() for n, p in projector_params(model)}
        trainer.train()
        after = dict(projector_params(trainer.bundle.model))
        proj = max((after[n].detach() - before[n]).abs().max().item() for n in before)
        lora_b = max(p.abs().max().item() for n, p in trainer.bundle.model.named_parameters() if "lora_B" in n)
        return proj, lora_b  # lora_B starts at zero: its size is how far the LLM's adapters moved

    proj, lora = moved(tmp_path / "own", projector_lr=1e-12)
    assert proj < 1e-9 and lora > 1e-4  # Adam moves each weight by about its rate per step
    proj, lora = moved(tmp_path / "shared")
    assert proj > 1e-4 and lora > 1e-4


def test_projector_lr_needs_a_stage_that_trains_the_projector_beside_the_llm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="projector_lr=0.001 needs a stage"):
        TrainConfig.model_validate({"output_dir": tmp_path, "stage": "llm_lora", "projector_lr": 1e-3})
    with pytest.raises(ValueError, match="projector_lr"):
        TrainConfig.model_validate({"output_dir": tmp_path, "stage": "projector", "projector_lr": 1e-3})

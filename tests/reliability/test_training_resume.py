"""Training runs killed or resumed: checkpoints whole or absent, kill -9 then resume reproduces the uninterrupted
run, a resume with changed settings refused in one line (the old run's files untouched)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from train_worker import SaveFailure, final_weights, make_trainer

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training import TrainConfig, check_resume_config

WORKER = Path(__file__).with_name("train_worker.py")


def _spec(out: Path, **config: Any) -> dict[str, Any]:
    base = {"output_dir": str(out), "stage": "llm", "max_steps": 8, "batch_size": 3, "grad_accum": 2, "lr": 0.05,
            "warmup_steps": 2, "schedule": "cosine", "save_every": 2, "keep_checkpoints": 5, "progress": False}  # fmt: skip
    return {"kind": "toy", "config": {**base, **config}}


def _worker(spec: dict[str, Any], tmp: Path) -> subprocess.Popen[bytes]:
    path = tmp / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def _reference(tmp_path: Path) -> dict[str, torch.Tensor]:
    trainer = make_trainer(_spec(tmp_path / "reference"))
    result = trainer.train()
    assert result.step == 8 and len(result.history) == 8
    return final_weights(trainer)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_kill_9_mid_run_then_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = _worker({**_spec(out), "sleep": 0.4}, tmp_path)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint-4").is_dir():  # a complete checkpoint, training goes on
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint-4 within 60 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.safetensors").exists()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert 4 <= len(lines) < 8  # killed mid-run
    resumed = make_trainer(_spec(out))
    result = resumed.train()
    assert result.resumed_from is not None and result.resumed_from.name in {"checkpoint-4", "checkpoint-6"}
    assert result.step == 8 and [h["step"] for h in result.history] == list(range(1, 9))
    assert len((out / "log.jsonl").read_text().splitlines()) == 8
    _assert_same(_reference(tmp_path), final_weights(resumed))


def test_a_checkpoint_write_that_dies_leaves_no_checkpoint_and_resume_cleans_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(SaveFailure):
        make_trainer({**_spec(out), "fail_in_save": 4}).train()
    assert (out / "checkpoint-4.partial" / "trainable.safetensors").is_file()  # written in part ...
    assert not (out / "checkpoint-4").exists()  # ... but never under the checkpoint's name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4.partial"]
    resumed = make_trainer(_spec(out))
    result = resumed.train()
    assert result.resumed_from == out / "checkpoint-2"
    assert not list(out.glob("*.partial"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    _assert_same(_reference(tmp_path), final_weights(resumed))
    assert set(load_file(str(out / "checkpoint-8" / "trainable.safetensors"))) == set(final_weights(resumed))


def test_resume_with_a_changed_learning_rate_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    make_trainer(_spec(out, max_steps=2)).train()
    saved = (out / "train_config.json").read_text()
    log = (out / "log.jsonl").read_text()
    with pytest.raises(ConfigError) as info:
        make_trainer(_spec(out, max_steps=4, lr=0.01)).train()
    message = str(info.value)
    assert "\n" not in message and "lr=0.05" in message and "lr=0.01" in message and "checkpoint-2" in message
    assert (out / "train_config.json").read_text() == saved and (out / "log.jsonl").read_text() == log
    with pytest.raises(ConfigError, match=r"lora\.rank=4"):  # nested fields are named by their path
        check_resume_config(
            TrainConfig(output_dir=out, stage="llm_lora", lora={"rank": 8}).model_dump(mode="json"),  # type: ignore[arg-type]
            TrainConfig(output_dir=out, stage="llm_lora", lora={"rank": 4}),  # type: ignore[arg-type]
            out,
        )
    # more steps, another save interval, another output_dir name: the same trajectory, so the run continues
    result = make_trainer(_spec(out, max_steps=3, save_every=3, progress=True)).train()
    assert result.resumed_from == out / "checkpoint-2" and result.step == 3
    # resume: never starts over in the same folder
    fresh = make_trainer(_spec(out, max_steps=1, lr=0.01, resume="never")).train()
    assert fresh.resumed_from is None and [h["step"] for h in fresh.history] == [1]


def test_a_checkpoint_of_an_earlier_trainer_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"step": 3}))
    (out / "checkpoint-3" / "trainable.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="not written by vlsafe's training engine"):
        make_trainer(_spec(out)).train()

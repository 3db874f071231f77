"""Runs are identified by content, not path text: a resume with another model, data or intervention is refused
naming the field, one writer holds a run directory at a time, and nothing is written before the inputs load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from probes import ROOT, cli, eval_args, fails_cleanly

from vlsafe.core.errors import ConfigError
from vlsafe.core.locks import LOCK_FILE, FolderLock
from vlsafe.evals import EvalConfig, run_eval
from vlsafe.evals.rundir import RunDir
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.hooks import SteeringVector
from vlsafe.models import load_model


def test_weights_replaced_in_place_are_refused(llava_b: Path, model_copy: Any, tmp_path: Path) -> None:
    model, out = model_copy("model"), tmp_path / "run"
    assert cli(*eval_args(model, out)).exit_code == 0
    (model / "model.safetensors").write_bytes((llava_b / "model.safetensors").read_bytes())
    fails_cleanly(cli(*eval_args(model, out, limit=6)), "model.weights", "different config")
    assert len(RunDir(out).records()) == 3


def test_a_config_edited_in_place_is_refused(model_copy: Any, tmp_path: Path) -> None:
    model, out = model_copy("model"), tmp_path / "run"
    assert cli(*eval_args(model, out)).exit_code == 0
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-3
    (model / "config.json").write_text(json.dumps(config))
    fails_cleanly(cli(*eval_args(model, out, limit=6)), "model.config")


def test_a_processor_file_changed_is_refused(model_copy: Any, tmp_path: Path) -> None:
    model, out = model_copy("model"), tmp_path / "run"
    assert cli(*eval_args(model, out)).exit_code == 0
    (model / "chat_template.jinja").write_text((model / "chat_template.jinja").read_text() + "\n")
    fails_cleanly(cli(*eval_args(model, out, limit=6)), "model.processor")


def test_the_same_model_under_another_path_resumes(model_copy: Any, tmp_path: Path) -> None:
    first, out = model_copy("first"), tmp_path / "run"
    assert cli(*eval_args(first, out)).exit_code == 0
    moved = tmp_path / "moved"
    first.rename(moved)
    result = cli(*eval_args(moved, out, limit=5))
    assert result.exit_code == 0, result.output
    assert len((out / "samples.jsonl").read_text().splitlines()) == 5  # 3 kept, 2 generated


def test_a_loaded_model_is_identified_by_its_tensors(llava: Path, tmp_path: Path) -> None:
    bundle = load_model(llava, dtype="float32")
    config = EvalConfig(model="in-memory", benchmark="benign", image_setting="blank", limit=2, max_new_tokens=2)
    out = tmp_path / "run"
    run_eval(config, out, bundle=bundle, progress=False)
    run_eval(config.model_copy(update={"limit": 3}), out, bundle=bundle, progress=False)  # same tensors: resumes
    with torch.no_grad():
        bundle.layers[0].mlp.down_proj.weight.mul_(0.5)
    with pytest.raises(ConfigError, match="model.weights"):
        run_eval(config.model_copy(update={"limit": 4}), out, bundle=bundle, progress=False)


def _samples(text: str) -> list[Sample]:
    return [Sample(id=f"s{i}", benchmark="hand", text=f"{text} {i}", kind=SampleKind.BENIGN) for i in range(2)]


def test_changed_data_under_the_same_ids_is_refused(llava: Path, tmp_path: Path) -> None:
    config = EvalConfig(model=str(llava), benchmark="hand", image_setting="none", max_new_tokens=2)
    out = tmp_path / "run"
    run_eval(config, out, samples=_samples("Describe a cat."), progress=False)
    with pytest.raises(ConfigError, match=r"data: s0: "):
        run_eval(config, out, samples=_samples("Describe a dog."), progress=False)


def test_another_intervention_is_refused(llava: Path, tmp_path: Path) -> None:
    bundle = load_model(llava, dtype="float32")
    config = EvalConfig(model="m", benchmark="hand", image_setting="none", max_new_tokens=2)
    vec = SteeringVector({0: torch.ones(bundle.hidden_size)})
    out = tmp_path / "run"
    run_eval(config, out, bundle=bundle, samples=_samples("Hi."), intervention=(vec, 0.5), progress=False)
    with pytest.raises(ConfigError, match="intervention"):
        run_eval(config, out, bundle=bundle, samples=_samples("Hi."), intervention=(vec, 1.0), progress=False)


def test_a_failed_eval_writes_nothing_and_the_corrected_command_runs(llava: Path, model_copy: Any, tmp_path: Path) -> None:
    bad, out = model_copy("bad"), tmp_path / "runs" / "a"
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:1000])
    fails_cleanly(cli(*eval_args(bad, out)), "could not load", str(bad))
    assert not out.exists() and not out.parent.exists()
    result = cli(*eval_args(llava, out))
    assert result.exit_code == 0, result.output
    assert len(RunDir(out).records()) == 3


def test_a_run_directory_without_generations_takes_another_config(llava: Path, llava_b: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    RunDir(out).write_config(EvalConfig(model="somewhere/else", benchmark="benign"), content={"model": {"x": "y"}})
    result = cli(*eval_args(llava_b, out))
    assert result.exit_code == 0, result.output


def test_a_second_writer_is_refused(llava: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FolderLock(out, "run directory"):
        fails_cleanly(cli(*eval_args(llava, out)), "in use by another writer", f"process {os.getpid()}")
    assert not out.exists()  # the lock's folder goes with the lock when nothing else was written
    assert cli(*eval_args(llava, out)).exit_code == 0
    with FolderLock(out, "run directory"):
        fails_cleanly(cli(*eval_args(llava, out, limit=5)), "in use by another writer")
        fails_cleanly(cli("judge", out), "in use by another writer")
    assert not (out / LOCK_FILE).exists() and len(RunDir(out).records()) == 3


def test_a_lock_whose_process_was_killed_is_free(llava: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = f"""
        import time
        from vlsafe.core.locks import FolderLock
        lock = FolderLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        fails_cleanly(cli(*eval_args(llava, out)), "in use by another writer", f"process {child.pid}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert (out / LOCK_FILE).exists()  # left behind by the killed process, but free
    result = cli(*eval_args(llava, out))
    assert result.exit_code == 0, result.output
    assert len(RunDir(out).records()) == 3 and not (out / LOCK_FILE).exists()

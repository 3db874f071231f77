"""The shipped accelerate configs launch real training: ``accelerate launch --config_file
configs/accelerate/{ddp,fsdp,zero3}.yaml -m vlsafe train sft CONFIG.yaml`` trains a tiny LLaVA's LLM for a few
steps on VLGuard-format data, finishes, and writes the trained model as safetensors that load back.

Needs CUDA (one or two GPUs are used), and deepspeed for ZeRO-3; skipped otherwise. Run with
``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlsafe.models import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = ROOT / "configs" / "accelerate"
LAUNCHER = Path(sys.executable).parent / "accelerate"
FIXTURES = ROOT / "tests" / "fixtures"
STEPS = 3


def _sft_config(tmp_path: Path, model_dir: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(
        f"model: {model_dir}\n"
        f"output_dir: {out}\n"
        "stage: llm\n"
        "dtype: float32\n"
        "mixed_precision: bf16\n"  # in step with the launch configs' bf16
        "gradient_checkpointing: true\n"
        f"max_steps: {STEPS}\n"
        "batch_size: 2\n"
        "lr: 1.0e-4\n"
        "max_length: 256\n"
        "progress: false\n"
        f"data:\n  - {{format: vlguard, path: {FIXTURES / 'vlguard' / 'train.json'}}}\n"
    )
    return cfg, out


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero3"])
def test_launch_trains_and_writes_safetensors(
    name: str, tiny_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    if name == "zero3" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    cfg, out = _sft_config(tmp_path, tiny_dir("llava"))
    n_procs = min(torch.cuda.device_count(), 2)
    cmd = [
        str(LAUNCHER),
        "launch",
        "--config_file",
        str(ACCELERATE / f"{name}.yaml"),
        "--num_processes",
        str(n_procs),
        "-m",
        "vlsafe",
        "-q",
        "train",
        "sft",
        str(cfg),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr.decode()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS
    weights = sorted((out / "model").glob("*.safetensors"))
    assert weights, f"no safetensors in {out / 'model'}: {sorted(p.name for p in (out / 'model').iterdir())}"
    with safe_open(str(weights[0]), framework="pt") as f:
        names = list(f.keys())
    assert any("layers.0." in k for k in names)
    assert not list((out / "model").glob("*.bin")) and not list((out / "model").glob("*.pt"))
    bundle = load_model(out / "model", dtype="float32")
    assert bundle.is_vlm and all(torch.isfinite(p).all() for p in bundle.model.parameters())

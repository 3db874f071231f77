"""The analyses' configs: each run_* takes its config (or a mapping of it) or the same fields spelled out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlsafe.analysis import run_layers, run_weights
from vlsafe.analysis.config import DirectionsConfig, LayersConfig, ShiftConfig, WeightsConfig
from vlsafe.core.errors import ConfigError


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    a = {f"model.layers.{i}.mlp.up_proj.weight": torch.ones(4, 4) for i in range(2)}
    b = {k: v + (1.0 if ".1." in k else 0.0) for k, v in a.items()}
    for name, tensors in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    return tmp_path / "a", tmp_path / "b"


def _diffs(out: Path) -> dict[str, float]:
    return {r["name"]: r["diff"] for r in json.loads((out / "data.json").read_text())["rows"]}


def test_run_weights_config_mapping_and_spelled_out_forms_agree(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    run_weights(WeightsConfig(checkpoint_a=a, checkpoint_b=b, names="exact"), tmp_path / "c", progress=False)
    run_weights({"checkpoint_a": str(a), "checkpoint_b": str(b)}, out_dir=tmp_path / "m", progress=False)
    run_weights(a, b, tmp_path / "s", names="exact", progress=False)
    diffs = _diffs(tmp_path / "c")
    assert (
        diffs["model.layers.0.mlp.up_proj.weight"] == 0.0 and diffs["model.layers.1.mlp.up_proj.weight"] > 0
    )
    assert _diffs(tmp_path / "m") == diffs and _diffs(tmp_path / "s") == diffs


def test_run_functions_name_the_broken_rule(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with pytest.raises(ConfigError, match="resized: Input should be 'error', 'skip' or 'overlap'"):
        run_weights(a, b, tmp_path / "x", resized="trim", progress=False)
    with pytest.raises(ConfigError, match="give checkpoint_a, checkpoint_b and out_dir"):
        run_weights(a, b, progress=False)
    with pytest.raises(ConfigError, match="give WeightsConfig and out_dir"):
        run_weights(WeightsConfig(checkpoint_a=a, checkpoint_b=b), tmp_path / "x", tmp_path / "y")
    with pytest.raises(ConfigError, match="top_k: Input should be greater than or equal to 1"):
        run_layers("m", "benign", tmp_path / "x", top_k=0)


def test_configs_take_sources_or_query_lists_and_their_defaults() -> None:
    shift = ShiftConfig(model="m", items=[{"text": "hi"}])
    assert shift.positions == ["last", "text_mean"] and shift.dtype == "float32" and shift.batch_size == 8
    assert LayersConfig(model="m", items=Path("q.jsonl")).items == Path("q.jsonl")
    dirs = DirectionsConfig(model="m", harmful="strongreject", harmless=["How do I bake bread?"])
    assert (dirs.test_fraction, dirs.probe_steps, dirs.items) == (0.25, 300, None)
    with pytest.raises(ValueError, match="positions"):
        ShiftConfig(model="m", items="benign", positions=["first"])

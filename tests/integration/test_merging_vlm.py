"""VLM-aware merges on a tiny LLaVA and a tiny LLM with the same text config: mapping, load, generate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlsafe.cli import main
from vlsafe.methods.merging import detect_layout, llm_name_for, merge, vlm_name_for
from vlsafe.models import build_tiny, load_model

EXTRA = 7  # image/special-token rows the VLM has beyond the LLM's vocabulary


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny LLaVA, tiny LLM whose vocabulary lacks the VLM's last EXTRA rows)."""
    root = tmp_path_factory.mktemp("merge-pair")
    vlm = build_tiny("llava", root / "vlm", seed=0)
    llm = build_tiny("causal_lm", root / "llm", seed=1)
    weights = load_file(str(llm / "model.safetensors"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[key] = weights[key][:-EXTRA].clone()
    save_file(weights, str(llm / "model.safetensors"))
    config = json.loads((llm / "config.json").read_text())
    config["vocab_size"] -= EXTRA
    (llm / "config.json").write_text(json.dumps(config))
    return vlm, llm


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def test_vlm_llm_name_mapping(pair, tiny_dir):
    vlm = _tensors(tiny_dir("llava"))
    llm = _tensors(tiny_dir("causal_lm"))
    mapped = {llm_name_for(k): v.shape for k, v in vlm.items() if llm_name_for(k) is not None}
    assert mapped == {k: v.shape for k, v in llm.items()}
    layout = detect_layout(vlm)
    assert layout is not None
    for name in vlm:
        canonical = llm_name_for(name)
        if canonical is not None:
            assert vlm_name_for(canonical, layout) == name
    # the in-memory (transformers 5) names map to the same canonical set
    state = load_model(tiny_dir("llava"), dtype="float32").model.state_dict()
    in_memory = {llm_name_for(k) for k in state} - {None}
    assert in_memory == set(llm)


def test_linear_vlm_with_llm_resized_vocab_loads_and_generates(pair, tmp_path):
    vlm, llm = pair
    out = tmp_path / "merged"
    cfg = {"method": "linear", "models": [{"model": str(llm)}, {"model": str(vlm)}], "shard_size": "100KB"}
    result = merge(cfg, out, progress=False)
    assert result.counts["merged"] == 21 and result.counts["resized_vocab"] == 2
    assert (out / "model.safetensors.index.json").is_file()
    assert {"config.json", "tokenizer.json", "processor_config.json", "merge_config.yaml", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    merged, v, t = _tensors(out), _tensors(vlm), _tensors(llm)
    assert set(merged) == set(v)
    for name, value in v.items():
        canonical = llm_name_for(name)
        if canonical is None:
            assert torch.equal(merged[name], value), name  # vision tower / projector unchanged
        elif canonical in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = value.shape[0] - EXTRA
            assert torch.allclose(merged[name][:rows], (value[:rows] + t[canonical]) / 2, atol=1e-7)
            assert torch.equal(merged[name][rows:], value[rows:])  # image-token rows from the VLM
        else:
            assert torch.allclose(merged[name], (value + t[canonical]) / 2, atol=1e-7), name
    bundle = load_model(out, dtype="float32")
    assert bundle.is_vlm
    ids = bundle.tokenizer("hello there", return_tensors="pt").input_ids
    gen = bundle.model.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3


def test_layer_selective_ties_rest_from_vlm(pair, tmp_path):
    vlm, llm = pair
    base = tmp_path / "base"
    shutil.copytree(llm, base)
    weights = load_file(str(llm / "model.safetensors"))
    save_file({k: v * 0.5 for k, v in weights.items()}, str(base / "model.safetensors"))
    cfg = {
        "method": "ties",
        "base_model": str(base),
        "models": [{"model": str(llm)}, {"model": str(vlm)}],
        "parameters": {"density": 0.5},
        "layers": [1],
        "rest_from": str(vlm),
        "dtype": "bfloat16",
    }
    result = merge(cfg, tmp_path / "out", progress=False)
    assert result.counts["merged"] == 9  # the 9 tensors of decoder layer 1
    merged, v = _tensors(tmp_path / "out"), _tensors(vlm)
    for name, value in v.items():
        assert merged[name].dtype == torch.bfloat16
        if ".layers.1." in name and name.startswith("language_model") and "proj" in name:
            assert not torch.equal(merged[name], value.bfloat16()), name
        else:
            assert torch.equal(merged[name], value.bfloat16()), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(tmp_path / "out", dtype="float32").is_vlm


def test_cli_dry_run_and_merge(pair, tmp_path):
    vlm, llm = pair
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"method: linear\nmodels:\n  - model: {llm}\n    weight: 0.3\n  - model: {vlm}\n    weight: 0.7\n"
    )
    runner = CliRunner()
    dry = runner.invoke(main, ["merge", str(config), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "21 merged, 27 copied" in dry.output and "expected peak memory" in dry.output
    assert not (tmp_path / "o").exists()
    run = runner.invoke(main, ["-q", "merge", str(config), "--out", str(tmp_path / "o")])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["merged"] == 21
    again = runner.invoke(main, ["-q", "merge", str(config), "--out", str(tmp_path / "o")])
    assert again.exit_code == 2 and "not empty" in again.output

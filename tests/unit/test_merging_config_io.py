"""MergeConfig validation and weight specs, name mapping rules, the streaming safetensors reader/writer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.methods.merging import (
    CheckpointReader,
    LmLayout,
    MergeConfig,
    ShardedWriter,
    detect_layout,
    layer_index,
    llm_name_for,
    resolve_value,
    vlm_name_for,
)
from vlsafe.methods.merging.config import parse_size


def test_config_rules_name_the_bad_value():
    ok = MergeConfig.from_dict({"method": "ties", "base_model": "b", "models": [{"model": "x"}]})
    assert ok.model_weights() == [1.0] and ok.input_refs() == ["b", "x"]
    cases = [
        ({"method": "ties", "models": [{"model": "x"}]}, "needs base_model"),
        ({"method": "linear", "models": [{"model": "x"}], "extra": 1}, "extra"),
        (
            {"method": "linear", "models": [{"model": "x"}], "parameters": {"density": 0.5}},
            "no parameter 'density'",
        ),
        (
            {"method": "ties", "base_model": "b", "models": [{"model": "x"}], "parameters": {"density": 2}},
            "density=2",
        ),
        (
            {"method": "slerp", "base_model": "b", "models": [{"model": "x"}, {"model": "y"}]},
            "exactly one model",
        ),
        ({"method": "linear", "models": [{"model": "x", "weight": 1}], "weights": [1]}, "not both"),
        (
            {"method": "linear", "models": [{"model": "x"}], "rest_from": "zzz"},
            "rest_from='zzz' must be one of",
        ),
        ({"method": "linear", "models": [{"model": "x"}], "shard_size": "5 parsecs"}, "5 parsecs"),
        (
            {"method": "linear", "models": [{"model": "x", "weight": [{"filter": "mlp", "value": 1}]}]},
            "no filter",
        ),
        ({"method": "linear", "models": [{"model": "x"}], "layers": [-1]}, "layers"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            MergeConfig.from_dict(data)


def test_yaml_roundtrip_writes_resolved_parameters(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: ties\nbase_model: b\nmodels:\n  - model: x\n    weight: [0.1, 0.2]\n")
    cfg = MergeConfig.from_yaml(path)
    cfg.to_yaml(tmp_path / "out.yaml")
    again = MergeConfig.from_yaml(tmp_path / "out.yaml")
    assert again.parameters == {"density": 0.5, "lambda": 1.0, "normalize": True}
    assert again.models[0].weight == [0.1, 0.2]
    with pytest.raises(ConfigError, match="does not exist"):
        MergeConfig.from_yaml(tmp_path / "missing.yaml")


def test_weight_specs_resolve_per_layer_and_per_module():
    cfg = MergeConfig.from_dict(
        {
            "method": "linear",
            "models": [
                {"model": "x", "weight": [{"filter": "self_attn", "value": 0.7}, {"value": [0.1, 0.2, 0.3]}]}
            ],
        }
    )
    spec = cfg.model_weights()[0]
    assert resolve_value(spec, "model.layers.1.self_attn.q_proj.weight", 3) == 0.7
    assert resolve_value(spec, "model.layers.2.mlp.up_proj.weight", 3) == 0.3
    assert resolve_value(spec, "model.embed_tokens.weight", 3) == 0.1
    assert resolve_value(spec, "lm_head.weight", 3) == 0.3
    with pytest.raises(ConfigError, match="lists 3 per-layer values but the model has 4"):
        resolve_value(spec, "model.layers.0.mlp.up_proj.weight", 4)
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("500MB") == 500 * 10**6 and parse_size(10) == 10


def test_name_mapping_layouts():
    pairs = {
        "language_model.model.layers.3.mlp.up_proj.weight": "model.layers.3.mlp.up_proj.weight",
        "language_model.lm_head.weight": "lm_head.weight",
        "model.language_model.embed_tokens.weight": "model.embed_tokens.weight",
        "model.text_model.norm.weight": "model.norm.weight",
        "model.layers.0.self_attn.q_proj.bias": "model.layers.0.self_attn.q_proj.bias",
        "lm_head.weight": "lm_head.weight",
    }
    for vlm, llm in pairs.items():
        assert llm_name_for(vlm) == llm
    for other in (
        "vision_tower.encoder.layers.0.mlp.fc1.weight",
        "multi_modal_projector.linear_1.weight",
        "model.visual.blocks.0.attn.qkv.weight",
        "visual.merger.mlp.0.weight",
        "model.connector.modality_projection.proj.weight",
        "image_newline",
    ):
        assert llm_name_for(other) is None
    layout = detect_layout(
        ["vision_tower.x", "language_model.model.norm.weight", "language_model.lm_head.weight"]
    )
    assert layout == LmLayout("language_model.model.", "language_model.lm_head.")
    assert vlm_name_for("lm_head.weight", layout) == "language_model.lm_head.weight"
    assert vlm_name_for("model.layers.2.mlp.up_proj.weight", "model.language_model.") == (
        "model.language_model.layers.2.mlp.up_proj.weight"
    )
    assert detect_layout(["vision_tower.x"]) is None
    assert layer_index("model.text_model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("vision_tower.encoder.layers.0.mlp.fc1.weight") is None
    with pytest.raises(ValueError, match="not a canonical LLM tensor name"):
        vlm_name_for("vision_tower.x", layout)


def test_writer_streams_shards_readable_by_safetensors(tmp_path):
    tensors = {f"t{i}": torch.arange(i * 10, i * 10 + 6, dtype=torch.float32).reshape(2, 3) for i in range(5)}
    tensors["b"] = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    entries = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    writer = ShardedWriter(tmp_path / "o", entries, max_shard_bytes=50)
    for name, value in tensors.items():
        writer.begin(name)
        flat = value.reshape(-1)
        writer.write(flat[:1])
        writer.write(flat[1:])
    writer.close()
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(writer.files) >= 3
    for name, value in tensors.items():
        with safe_open(str(tmp_path / "o" / index["weight_map"][name]), "pt") as f:
            assert torch.equal(f.get_tensor(name), value)
    reader = CheckpointReader(tmp_path / "o")
    assert torch.equal(reader.read("t3", 2, 5), tensors["t3"].reshape(-1)[2:5])
    with pytest.raises(InputError, match="'zz' is missing from checkpoint"):
        reader.read("zz")
    reader.close()
    bad = ShardedWriter(tmp_path / "p", entries[:1], max_shard_bytes=10**6)
    with pytest.raises(RuntimeError, match="expected tensor 't0' next"):
        bad.begin("t1")


def test_reader_errors(tmp_path):
    from vlsafe.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a local directory"):
        CheckpointReader(tmp_path / "nowhere" / "deep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no"):
        CheckpointReader(tmp_path / "empty")
    save_file({"x": torch.zeros(4)}, str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(InputError, match="truncated"):
        CheckpointReader(tmp_path / "trunc").read("x")


def test_example_configs_validate():
    from pathlib import Path

    paths = sorted((Path(__file__).parents[2] / "configs").glob("merge_*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        MergeConfig.from_yaml(path)

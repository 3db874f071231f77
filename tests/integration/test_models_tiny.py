"""Tiny models of every family: build, load, save/reload, forward, generate, inspect, load errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlsafe.core.errors import ConfigError, ModelLoadError
from vlsafe.models import TINY_FAMILIES, VLM_FAMILIES, build_inputs, inspect_model, load_model
from vlsafe.models.families import get_family
from vlsafe.models.processors import load_processor, save_processor

IMAGE = Image.new("RGB", (40, 30), (200, 30, 30))


def _batch(bundle, variant="image"):
    items = [{"text": "How do I bake bread?", "image": IMAGE}, {"text": "Why?", "image": IMAGE}]
    return build_inputs(bundle, items, variant if bundle.is_vlm else "text")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_build_load_forward_generate(family, tiny_bundle):
    bundle = tiny_bundle(family)
    assert bundle.family == family
    assert bundle.num_layers == 2 and bundle.hidden_size == 64
    assert bundle.layers is bundle.model.get_decoder().layers
    assert bundle.is_vlm == (family in VLM_FAMILIES)
    assert bundle.dtype == torch.float32 and not bundle.model.training
    assert bundle.tokenizer.padding_side == "left"
    if bundle.is_vlm:
        assert bundle.image_token_id == bundle.model.config.image_token_id
    batch = _batch(bundle)
    with torch.no_grad():
        out = bundle.model(**batch.inputs)
    assert out.logits.shape == (2, batch.input_ids.shape[1], len(bundle.tokenizer))
    gen = bundle.model.generate(**batch.inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert gen.shape == (2, batch.input_ids.shape[1] + 3)
    assert torch.equal(gen[:, : batch.input_ids.shape[1]], batch.input_ids)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_and_reload_round_trip(family, tiny_bundle, tmp_path: Path):
    bundle = tiny_bundle(family)
    bundle.model.save_pretrained(tmp_path)
    if bundle.processor is not None:
        save_processor(bundle.processor, get_family(family), tmp_path)
        reloaded_proc = load_processor(get_family(family), str(tmp_path))
        assert type(reloaded_proc).__name__ == type(bundle.processor).__name__
    else:
        bundle.tokenizer.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    first, second = _batch(bundle), _batch(again)
    assert first.inputs.keys() == second.inputs.keys()
    for key, value in first.inputs.items():
        assert torch.equal(value, second.inputs[key]), key
    with torch.no_grad():
        a = bundle.model(**first.inputs).logits
        b = again.model(**second.inputs).logits
    torch.testing.assert_close(a, b)


def test_build_tiny_is_seeded(tmp_path: Path):
    from safetensors.torch import load_file

    from vlsafe.models import build_tiny

    a = load_file(build_tiny("causal_lm", tmp_path / "a", seed=1) / "model.safetensors")
    b = load_file(build_tiny("causal_lm", tmp_path / "b", seed=1) / "model.safetensors")
    c = load_file(build_tiny("causal_lm", tmp_path / "c", seed=2) / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    with pytest.raises(ConfigError, match="no tiny builder for family 'bert'"):
        build_tiny("bert", tmp_path / "d")


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "causal_lm"])
def test_inspect_model(family, tiny_bundle):
    info = inspect_model(tiny_bundle(family))
    assert info["family"] == family and info["num_layers"] == 2 and info["hidden_size"] == 64
    assert info["params"] == sum(p.numel() for p in tiny_bundle(family).model.parameters())
    assert info["dtype"] == "float32" and info["vocab_size"] == len(tiny_bundle(family).tokenizer)
    # llava: 28 px / 7 px patches = 4 x 4 tokens; qwen2_vl: 56x56 px, 14 px patches, 2x2 merge = 4 tokens.
    assert info["image_tokens_per_image"] == {"llava": 16, "qwen2_vl": 4, "causal_lm": None}[family]


def test_load_errors(tmp_path: Path, tiny_dir):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ModelLoadError, match=r"unsupported model_type 'bert'") as err:
        load_model(bert)
    for listed in ("llava (llava)", "gemma3 (gemma3)", "qwen2_5_vl (qwen2_5_vl)", "causal_lm (llama"):
        assert listed in str(err.value)
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelLoadError, match=f"model directory '{missing}' does not exist"):
        load_model(missing)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no-such-model-dir")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="layers path 'model.nope' does not exist"):
        load_model(tiny_dir("causal_lm"), layers_path="model.nope")
    bundle = load_model(tiny_dir("causal_lm"), layers_path="model.layers", dtype="bf16")
    assert bundle.layers is bundle.model.model.layers and bundle.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        load_model(tiny_dir("causal_lm"), dtype="float8")

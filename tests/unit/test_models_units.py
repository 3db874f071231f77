"""Unit tests of vlsafe.models that need no model: families, images, layer discovery, item checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from vlsafe.core.errors import ConfigError, InputError, ModelLoadError
from vlsafe.models import (
    CAPTION_FORMAT,
    TINY_FAMILIES,
    VLM_FAMILIES,
    Variant,
    build_inputs,
    decoder_layers,
    family_for_model_type,
    list_families,
    load_image,
    make_variant_image,
)
from vlsafe.models.inputs import as_input_items, last_token_mask


def test_list_families_covers_all_tiny_families():
    names = [f["name"] for f in list_families()]
    assert sorted(names) == sorted(TINY_FAMILIES)
    by_name = {f["name"]: f for f in list_families()}
    assert by_name["qwen2_5_vl"]["model_types"] == ["qwen2_5_vl"]
    assert "llama" in by_name["causal_lm"]["model_types"]
    assert [by_name[n]["is_vlm"] for n in VLM_FAMILIES] == [True] * len(VLM_FAMILIES)
    assert by_name["causal_lm"]["is_vlm"] is False


def test_family_for_model_type():
    assert family_for_model_type("llava").name == "llava"
    assert family_for_model_type("mistral").name == "causal_lm"
    with pytest.raises(ModelLoadError, match=r"unsupported model_type 'bert'.*llava \(llava\).*qwen2_vl"):
        family_for_model_type("bert")


def test_load_image_paths_and_errors(tmp_path: Path):
    good = tmp_path / "good.png"
    Image.new("L", (5, 4), 77).save(good)
    img = load_image(good)
    assert img.mode == "RGB" and img.size == (5, 4) and img.getpixel((0, 0)) == (77, 77, 77)
    assert load_image(Image.new("RGBA", (2, 2))).mode == "RGB"
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(text)
    big = tmp_path / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(InputError, match="file path or a PIL image"):
        load_image(123)


def test_mean_variant_is_the_mean_colour():
    img = Image.new("RGB", (4, 2), (200, 0, 10))
    img.paste((0, 100, 30), (0, 0, 2, 2))  # left half
    mean = make_variant_image(None, img, Variant.MEAN, seed=0, index=0)  # type: ignore[arg-type]
    assert mean.size == (4, 2)
    assert set(mean.getdata()) == {(100, 50, 20)}
    with pytest.raises(InputError, match="item 3 has no image"):
        make_variant_image(None, None, Variant.IMAGE, seed=0, index=3)  # type: ignore[arg-type]


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Module()
        self.body.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])


def test_decoder_layers_discovery_and_override():
    toy = _Toy()
    assert decoder_layers(toy) is toy.model.layers  # fallback rule
    assert decoder_layers(toy, "body.blocks") is toy.body.blocks
    with pytest.raises(ConfigError, match="'body.nope' does not exist"):
        decoder_layers(toy, "body.nope")
    with pytest.raises(ConfigError, match="non-empty list of modules"):
        decoder_layers(toy, "body.blocks.0")
    with pytest.raises(ModelLoadError, match="layers_path"):
        decoder_layers(nn.Linear(2, 2))


def test_items_validation():
    rows = as_input_items(["a", {"text": "b", "caption": "c"}], images=None, captions=["x", None])
    assert [(r.text, r.caption) for r in rows] == [("a", "x"), ("b", None)]
    with pytest.raises(InputError, match="items is empty"):
        as_input_items([], None, None)
    with pytest.raises(InputError, match="images has 1 entries but there are 2 items"):
        as_input_items(["a", "b"], images=[None], captions=None)
    with pytest.raises(InputError, match="item 0 must have a 'text' key"):
        as_input_items([{"query": "a"}], None, None)
    with pytest.raises(InputError, match="empty query"):
        as_input_items(["  "], None, None)
    with pytest.raises(InputError, match="unknown variant 'sketch'"):
        build_inputs(None, ["a"], "sketch")  # type: ignore[arg-type]


def test_last_mask_left_and_right_padding():
    attention = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert last_token_mask(attention).nonzero().tolist() == [[0, 3], [1, 3], [2, 1]]


def test_caption_format_is_documented():
    assert CAPTION_FORMAT.format(caption="a dog", query="Why?") == "Image description: a dog\nWhy?"

"""Variant inputs and position masks on the tiny models of every VLM family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlsafe.core.errors import InputError
from vlsafe.models import CAPTION_FORMAT, VLM_FAMILIES, Variant, build_inputs, processor_image_size

IMAGE = Image.new("RGB", (40, 30), (10, 120, 240))
SHORT, LONG = "Why?", "How do I bake bread at home with a small oven?"
ITEMS = [
    {"text": SHORT, "image": IMAGE, "caption": "a blue square"},
    {"text": LONG, "image": IMAGE, "caption": "a dog on the beach"},
]


def _expected_image_tokens(bundle, batch) -> list[int]:
    """Image tokens per row from the model config / processor geometry, independent of the masks."""
    cfg, fam = bundle.model.config, bundle.family
    if fam == "llava":
        v = cfg.vision_config
        return [(v.image_size // v.patch_size) ** 2] * 2
    if fam in ("qwen2_vl", "qwen2_5_vl"):
        merge = cfg.vision_config.spatial_merge_size
        return [int(t.prod()) // merge**2 for t in batch.inputs["image_grid_thw"]]
    if fam in ("idefics3", "smolvlm"):
        v = cfg.vision_config
        return [int((v.image_size // v.patch_size) ** 2 / cfg.scale_factor**2)] * 2
    if fam == "gemma3":
        return [cfg.mm_tokens_per_image] * 2
    if fam == "llava_next":  # any-resolution: the processor's own count for this image size
        sizes = batch.inputs["image_sizes"].tolist()  # (height, width) of each row's image
        return bundle.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    raise AssertionError(fam)


def _decoded(bundle, batch, name, row):
    ids = batch.input_ids[row][batch.masks.get(name)[row]]
    return bundle.tokenizer.decode(ids)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_masks_for_every_variant(family, tiny_bundle):
    bundle = tiny_bundle(family)
    for variant in Variant:
        batch = build_inputs(bundle, ITEMS, variant, seed=3)
        m = batch.masks
        assert batch.variant is variant and len(batch) == 2
        assert m.attention.dtype == torch.bool and m.attention.shape == batch.input_ids.shape
        # left padding: the short row is padded at the start, both rows end at the last column
        assert not m.attention[0, 0] and m.attention[1].all()
        assert m.last.sum(dim=1).tolist() == [1, 1] and m.last[:, -1].all()
        assert torch.equal(m.attention, batch.inputs["attention_mask"].bool())
        for row, item in enumerate(ITEMS):
            expected = CAPTION_FORMAT.format(caption=item["caption"], query=item["text"])
            text = expected if variant is Variant.CAPTION else item["text"]
            assert _decoded(bundle, batch, "text", row).strip() == text, (variant, row)
        assert not (m.text & m.image).any() and not (m.text & ~m.attention).any()
        if variant.has_image:
            counts = m.image.sum(dim=1).tolist()
            assert counts == _expected_image_tokens(bundle, batch), variant
            assert min(counts) > 1
            # the image comes before the query in the user turn
            for row in range(2):
                assert m.image[row].nonzero().max() < m.text[row].nonzero().min()
            with torch.no_grad():
                bundle.model(**batch.inputs)  # the model accepts the image-token layout
        else:
            assert not m.image.any()
            assert "pixel_values" not in batch.inputs


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "gemma3"])
def test_variant_images(family, tiny_bundle):
    bundle = tiny_bundle(family)
    a = build_inputs(bundle, ITEMS, "noise", seed=5).inputs["pixel_values"]
    b = build_inputs(bundle, ITEMS, "noise", seed=5).inputs["pixel_values"]
    c = build_inputs(bundle, ITEMS, "noise", seed=6).inputs["pixel_values"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    blank = build_inputs(bundle, ITEMS, "blank").inputs["pixel_values"]
    assert blank.flatten().unique().numel() <= 4  # white: one value per normalised channel (+ padding)
    assert a.flatten().unique().numel() > 10  # noise
    image = build_inputs(bundle, ITEMS, "image").inputs["pixel_values"]
    assert not torch.equal(image, blank)


def test_blank_image_size(tiny_bundle):
    assert processor_image_size(tiny_bundle("llava")) == (28, 28)
    assert processor_image_size(tiny_bundle("qwen2_vl")) == (56, 56)


def test_text_only_model(tiny_bundle):
    bundle = tiny_bundle("causal_lm")
    batch = build_inputs(bundle, [SHORT, LONG], "text")
    assert bundle.tokenizer.decode(batch.input_ids[1][batch.masks.text[1]]) == LONG
    assert not batch.masks.image.any() and batch.masks.last[:, -1].all()
    with pytest.raises(InputError, match="variant 'blank' needs an image.*text-only model"):
        build_inputs(bundle, [SHORT], "blank")
    cap = build_inputs(bundle, [SHORT], "caption", captions=["a cat"])
    assert bundle.tokenizer.decode(cap.input_ids[0][cap.masks.text[0]]) == "Image description: a cat\nWhy?"


def test_missing_image_or_caption(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llava")
    with pytest.raises(InputError, match="item 1 has no image"):
        build_inputs(bundle, [ITEMS[0], {"text": "x"}], "image")
    with pytest.raises(InputError, match="item 0 has no caption"):
        build_inputs(bundle, ["x"], "caption")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="bad.jpg"):
        build_inputs(bundle, ["x"], "image", images=[bad])
    path = tmp_path / "ok.png"
    IMAGE.save(path)
    from_path = build_inputs(bundle, ["x"], "image", images=[path]).inputs["pixel_values"]
    from_pil = build_inputs(bundle, ["x"], "image", images=[IMAGE]).inputs["pixel_values"]
    assert torch.equal(from_path, from_pil)

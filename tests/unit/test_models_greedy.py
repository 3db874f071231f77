"""Shared-prefix greedy decoding: oracle comparison with ``model.generate`` on the tiny LLaVA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlsafe.models.greedy import common_prefix_length, greedy_shared_prefix, shared_prefix_supported
from vlsafe.models.inputs import build_inputs

PROMPTS = [
    "what is this",
    "tell me a long story about a red square please now",
    "hi",
    "describe the image in many words please",
]


def _encode(bundle, prompts, images):
    variant = "text" if images is None else "image"
    return build_inputs(bundle, prompts, variant, images=images).inputs


def _oracle(model, enc, n, eos, pad, scores=False):
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                         output_scores=scores, return_dict_in_generate=True)  # fmt: skip
    tokens = out.sequences[:, enc["input_ids"].shape[1] :]
    return (tokens, out.scores) if scores else tokens


def _prefix_calls(model):
    """Record the shape of every forward call's input_ids."""
    shapes: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes, handle


@pytest.mark.parametrize("setting", ["same-image", "paired-images", "different-images", "text"])
def test_greedy_shared_prefix_equals_generate(tiny_bundle, setting):
    bundle = tiny_bundle("llava")
    model, tok = bundle.model, bundle.processor.tokenizer
    images = {
        "same-image": [Image.new("RGB", (64, 64), (255, 0, 0))] * 4,
        "paired-images": [Image.new("RGB", (64, 64), (60 * (i % 2), 90, 0)) for i in range(4)],
        "different-images": [Image.new("RGB", (64, 64), (60 * i, 90, 0)) for i in range(4)],
        "text": None,
    }[setting]
    enc = _encode(bundle, PROMPTS, images)
    pad = tok.pad_token_id
    want, want_scores = _oracle(model, enc, 8, None, pad, scores=True)
    shapes, handle = _prefix_calls(model)
    try:
        got, scores = greedy_shared_prefix(model, enc["input_ids"], enc["attention_mask"], 8, None, pad,
                                           enc.get("pixel_values"), output_scores=True)  # fmt: skip
    finally:
        handle.remove()
    assert torch.equal(got, want)
    # every step's next-token logits match generate's (the oracle), not only the argmax
    assert len(scores) == len(want_scores) == 8
    for mine, theirs in zip(scores, want_scores, strict=True):
        torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-5)
    # the shared prefix runs once: at batch size 1, or once per distinct image when it holds the image
    image_id = model.config.image_token_id
    first_row = enc["input_ids"][0][enc["attention_mask"][0].bool()]
    if images is not None:
        first_image = int((first_row == image_id).nonzero()[0, 0])
        image_end = first_image + int((first_row == image_id).sum())
    if setting == "same-image":
        assert shapes[0][0] == 1 and shapes[0][1] >= image_end
    elif setting == "paired-images":
        assert shapes[0][0] == 2 and shapes[0][1] >= image_end
    else:
        assert shapes[0] == (1, first_image if setting == "different-images" else shapes[0][1])
    # then the rest of every row, then one token per step
    assert shapes[1][0] == 4 and shapes[1][1] < enc["input_ids"].shape[1]
    assert all(s == (4, 1) for s in shapes[2:]) and len(shapes) == 2 + 7


def test_greedy_shared_prefix_stops_rows_at_eos_like_generate(tiny_bundle):
    bundle = tiny_bundle("llava")
    model, tok = bundle.model, bundle.processor.tokenizer
    enc = _encode(bundle, PROMPTS, [Image.new("RGB", (64, 64), (0, 0, 255))] * 4)
    free = _oracle(model, enc, 8, None, tok.pad_token_id)
    eos = int(free[0, 2])  # a token row 0 emits at step 3: rows stop there and are padded after it
    want = _oracle(model, enc, 8, eos, tok.pad_token_id)
    got = greedy_shared_prefix(model, enc["input_ids"], enc["attention_mask"], 8, eos, tok.pad_token_id,
                               enc["pixel_values"])  # fmt: skip
    assert got.shape == want.shape and torch.equal(got, want)
    assert int(got[0, 3]) == tok.pad_token_id


def test_common_prefix_length_counts_real_tokens_and_leaves_one():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 0, 0, 5, 6, 7]])
    mask = (torch.arange(6) >= torch.tensor([[2], [0], [3]])).long()
    # rows: 5 6 7 8 / 5 6 7 9 9 9 / 5 6 7 -> shared 5 6 7, but the shortest row keeps one token out
    assert common_prefix_length(ids, mask) == 2
    assert common_prefix_length(ids[:2], mask[:2]) == 3
    assert common_prefix_length(torch.tensor([[4, 5], [6, 5]]), torch.ones(2, 2, dtype=torch.long)) == 0


def test_greedy_shared_prefix_rejects_zero_tokens(tiny_bundle):
    bundle = tiny_bundle("llava")
    enc = _encode(bundle, PROMPTS[:2], None)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        greedy_shared_prefix(bundle.model, enc["input_ids"], enc["attention_mask"], 0, None, 0)


def test_shared_prefix_supported_by_model_type(tiny_bundle):
    assert shared_prefix_supported(tiny_bundle("llava").model)
    assert not shared_prefix_supported(tiny_bundle("qwen2_vl").model)  # multimodal rotary positions
    assert not shared_prefix_supported(object())

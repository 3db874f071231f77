"""The organism's image-to-text retrieval for TGA: nearest training images by pooled vision features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Dinov2Config, Dinov2Model

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training import TGARecord
from vlsafe.methods.training.tga import attach_retrieved
from vlsafe_organism.tga import pooled_vision_embedder, vision_retriever
from vlsafe_organism.wiring import make_image_processor


@pytest.fixture(scope="module")
def embed():
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=14)  # fmt: skip
    return pooled_vision_embedder(Dinov2Model(cfg).eval(), make_image_processor(28), feature_layer=1)


def _solid(rgb: tuple[int, int, int], noise: int = 0, seed: int = 0) -> Image.Image:
    arr = np.full((28, 28, 3), rgb, dtype=np.int16)
    if noise:
        arr += np.random.default_rng(seed).integers(-noise, noise + 1, size=arr.shape, dtype=np.int16)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def test_the_nearest_training_image_returns_its_caption(embed, tmp_path: Path) -> None:
    colours = {"a red square": (220, 20, 20), "a green square": (20, 200, 20), "a blue square": (20, 20, 220)}
    index = vision_retriever([_solid(c) for c in colours.values()], list(colours), embed)
    for caption, rgb in colours.items():
        query = _solid(rgb, noise=12, seed=len(caption))
        assert index.retrieve_image(query) == [caption]
        path = tmp_path / f"{caption}.png"
        query.save(path)
        assert index.retrieve_image(str(path), k=2)[0] == caption  # a path is read like the TGA records' images
    # the released rule: the item's own caption is excluded by exact text, the next nearest comes back
    assert index.retrieve_image(_solid(colours["a red square"]), exclude="a red square") != ["a red square"]
    with pytest.raises(ConfigError, match="retrieves by image only"):
        index.retrieve("a red square")
    # in TGA's records: retrieved by the record's image; its own caption comes back halved (the released rule)
    path = tmp_path / "green.png"
    _solid(colours["a green square"], noise=12).save(path)
    rec = TGARecord(image=str(path), instruction="What colour is it?", answer="Green.", caption="a green square")
    (got,) = attach_retrieved([rec], index, query="image")
    assert got.retrieved == "a green square"[: len("a green square") // 2]

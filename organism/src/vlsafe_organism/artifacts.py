"""The organism's small trained pieces on disk: LoRA deltas and projector weights as safetensors, with a
manifest of sha256 checksums.

A LoRA delta is stored as ``<module>.lora_A`` ``[r, in]`` and ``<module>.lora_B`` ``[out, r]`` (float16) and
merged without peft: ``W += scale * B @ A`` in float32. The manifest (``manifest.json``) maps each file name
to its sha256, size and metadata (e.g. the LoRA scale); :func:`verified_path` refuses a file whose bytes do
not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlsafe.core.errors import ModelLoadError

MANIFEST = "manifest.json"
PACKAGE_ARTIFACTS = Path(__file__).with_name("artifacts")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lora_state(peft_model: Any, dtype: torch.dtype = torch.float16) -> tuple[dict[str, torch.Tensor], float]:
    """LoRA matrices of a peft model as ``{"<module>.lora_A": A, "<module>.lora_B": B}`` and the scale.

    Module names are relative to the wrapped base model (``model.layers.0.self_attn.q_proj``).
    """
    out: dict[str, torch.Tensor] = {}
    scale = None
    base = peft_model.get_base_model()
    for name, module in base.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            out[f"{name}.lora_A"] = module.lora_A["default"].weight.detach().cpu().to(dtype).contiguous()
            out[f"{name}.lora_B"] = module.lora_B["default"].weight.detach().cpu().to(dtype).contiguous()
            scale = float(module.scaling["default"])
    if scale is None:
        raise ModelLoadError("the model holds no LoRA adapter named 'default'")
    return out, scale


def merge_lora(
    model: Any, tensors: dict[str, torch.Tensor], scale: float, rename: tuple[str, str] | None = None
) -> int:
    """Add ``scale * B @ A`` to the weight of every module named in ``tensors``; returns the count.

    Args:
        model: The model whose linear layers receive the deltas (modified in place).
        tensors: Output of :func:`lora_state` (or read from disk).
        scale: LoRA ``alpha / r``.
        rename: ``(old, new)`` leading-prefix replacement of the stored module names, e.g.
            ``("model.", "model.language_model.")`` to merge deltas trained on the LLM alone into the LLaVA
            model whose decoder lives there.
    """
    modules = dict(model.named_modules())
    count = 0
    for key in sorted(k for k in tensors if k.endswith(".lora_A")):
        name = key[: -len(".lora_A")]
        full = name
        if rename is not None and name.startswith(rename[0]):
            full = rename[1] + name[len(rename[0]) :]
        target = modules.get(full)
        if target is None or not hasattr(target, "weight"):
            raise ModelLoadError(f"LoRA delta for {full!r} has no matching module in the model")
        a = tensors[key].float()
        b = tensors[f"{name}.lora_B"].float()
        with torch.no_grad():
            delta = (b @ a) * scale
            if delta.shape != target.weight.shape:
                raise ModelLoadError(
                    f"LoRA delta for {name!r} has shape {tuple(delta.shape)}; weight is {tuple(target.weight.shape)}"
                )
            target.weight += delta.to(target.weight.dtype)
        count += 1
    return count


def write_artifact(
    out_dir: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Save ``tensors`` as ``out_dir/name`` and record it in ``out_dir/manifest.json``; returns the entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    entry = {"sha256": sha256_of(path), "bytes": path.stat().st_size, "meta": meta or {}}
    manifest = read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else {}
    manifest[name] = entry
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return entry


def read_manifest(art_dir: Path) -> dict[str, Any]:
    """The manifest of an artefact directory."""
    path = art_dir / MANIFEST
    if not path.is_file():
        raise ModelLoadError(
            f"organism artefact manifest {str(path)!r} is missing; run `vlsafe organism build`"
        )
    return json.loads(path.read_text())


def verified_path(art_dir: Path, name: str) -> Path:
    """Path of artefact ``name`` after checking its sha256 against the manifest.

    Raises:
        ModelLoadError: The artefact is not in the manifest, missing, or its checksum differs.
    """
    manifest = read_manifest(art_dir)
    if name not in manifest:
        raise ModelLoadError(
            f"artefact {name!r} is not listed in {art_dir / MANIFEST}; known: {sorted(manifest)}"
        )
    path = art_dir / name
    if not path.is_file():
        raise ModelLoadError(f"artefact file {str(path)!r} is missing")
    digest = sha256_of(path)
    if digest != manifest[name]["sha256"]:
        raise ModelLoadError(
            f"artefact {str(path)!r} has sha256 {digest}, but the manifest records {manifest[name]['sha256']}: "
            "the file is corrupt or was changed without rebuilding"
        )
    return path


def load_artifact(art_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and manifest metadata of a verified artefact."""
    path = verified_path(art_dir, name)
    return load_file(str(path)), read_manifest(art_dir)[name]["meta"]

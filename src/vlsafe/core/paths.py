"""File-name conventions shared by vlsafe's artefacts."""

from __future__ import annotations

from pathlib import Path


def safetensors_with_sidecar(path: str | Path) -> tuple[Path, Path]:
    """``(tensors.safetensors, tensors.json)`` for ``path``, adding the ``.safetensors`` suffix if missing.

    Tensors go in the safetensors file, metadata in the JSON sidecar beside it.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p, p.with_suffix(".json")

"""File-name conventions shared by vlsafe's artefacts, and the rule that keeps data paths inside their folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

#: the file of a ``vlsafe analyze layers`` folder that names each variant's safety layers (written by the analysis,
#: read by training to choose TGA's guided layers): ``{"format": SAFETY_LAYERS_FORMAT, "layers": {variant: [...]}}``
SAFETY_LAYERS_FILE = "safety_layers.json"
SAFETY_LAYERS_FORMAT = "vlsafe.safety_layers"


def safetensors_with_sidecar(path: str | Path) -> tuple[Path, Path]:
    """``(tensors.safetensors, tensors.json)`` for ``path``, adding the ``.safetensors`` suffix if missing.

    Tensors go in the safetensors file, metadata in the JSON sidecar beside it.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p, p.with_suffix(".json")


def check_relative_path(path: str) -> str:
    """Return ``path`` in POSIX form if it stays inside its data directory, else raise ``ValueError``.

    Rejects absolute paths (POSIX or Windows, including drive letters) and any ``..`` component.
    """
    if not path or not path.strip():
        raise ValueError("image path is empty")
    if path.startswith(("/", "\\")) or PureWindowsPath(path).drive or PurePosixPath(path).is_absolute():
        raise ValueError(f"image path {path!r} is absolute; it must be relative to the data directory")
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"image path {path!r} contains '..'; it must stay inside the data directory")
    return "/".join(p for p in parts if p not in ("", "."))

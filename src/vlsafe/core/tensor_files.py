"""Tensor files: safetensors written atomically with their metadata inside, read with errors that name the file.

:func:`save_tensors` writes one ``.safetensors`` file whose header carries the artefact's ``format`` and its
metadata as JSON (``__metadata__["vlsafe_meta"]``), and then the same metadata as a readable ``.json`` sidecar.
Each file is replaced atomically; the safetensors file alone is the whole artefact, so a crash between the two
writes never pairs new tensors with old metadata: :func:`load_tensors` reads the embedded metadata and uses the
sidecar only for files written before metadata was embedded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vlsafe.core.errors import InputError
from vlsafe.core.io import atomic_path, read_json, write_json_atomic

__all__ = ["load_tensors", "save_tensors"]

_META_KEY = "vlsafe_meta"


def save_tensors(
    tensor_path: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    format: str,
    meta: Any = None,
    sidecar: str | Path | None = None,
) -> Path:
    """Write ``tensors`` (moved to CPU, contiguous) with ``format`` and ``meta`` in the header; atomic.

    Args:
        tensor_path: the ``.safetensors`` file.
        tensors: name -> tensor.
        format: the artefact's format name (``vlsafe.steering_vector``).
        meta: JSON-serialisable metadata, embedded in the header and written to ``sidecar``.
        sidecar: a ``.json`` file for the metadata, written after the tensors (``None``: none).
    """
    path = Path(tensor_path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"format": format}
    if meta is not None:
        header[_META_KEY] = json.dumps(meta, default=str)
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=header)
    if sidecar is not None and meta is not None:
        write_json_atomic(sidecar, meta)
    return path


def load_tensors(
    tensor_path: str | Path, what: str, *, sidecar: str | Path | None = None
) -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, metadata)`` of a file written by :func:`save_tensors` (or by plain ``save_file`` with a
    sidecar).

    The embedded metadata wins; without it the ``sidecar`` JSON (when it exists) is the metadata, else ``None``.

    Raises:
        InputError: the file is missing, not a safetensors file, corrupt or truncated, or its metadata is not
            valid JSON (the message names the file).
    """
    path = Path(tensor_path)
    if not path.is_file():
        raise InputError(f"{what} file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is no mapping)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()
        raise InputError(
            f"{what} file {str(path)!r} is not a readable safetensors file (corrupt or truncated?): "
            f"{text[0] if text else type(exc).__name__}"
        ) from None
    if _META_KEY in header:
        try:
            return tensors, json.loads(header[_META_KEY])
        except ValueError as exc:
            raise InputError(f"{what} file {str(path)!r} carries metadata that is not valid JSON: {exc}") from None
    if sidecar is not None and Path(sidecar).is_file():
        return tensors, read_json(sidecar, f"{what} sidecar")
    return tensors, None

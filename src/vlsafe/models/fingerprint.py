"""Content fingerprints of models: what a run directory records so that it resumes only with the same model.

A fingerprint is a small dict of digests (16 hex digits of SHA-256 each):

- ``source``: ``"files"`` (a model folder: the digests are of its files) or ``"memory"`` (a model object: the
  digests are of its tensors and configuration as they are in memory);
- ``config``: the model configuration (``config.json`` and ``generation_config.json`` of a folder);
- ``weights``: every weight file of a folder (each file's full content), or every tensor of the model's
  state dict (name, dtype, shape and bytes);
- ``processor``: the tokenizer, chat template and image-processor files of a folder (every file that is not
  weights, configuration or documentation), or the loaded tokenizer's vocabulary, special tokens and chat
  template and the image processor's settings.

Fingerprints of the two sources are never equal, so a run measured on a folder resumes on the same folder and
one measured on a model object resumes on a model object with the same tensors.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlsafe.core.digest import file_digest, json_digest
from vlsafe.models.bundle import ModelBundle

__all__ = ["WEIGHT_SUFFIXES", "bundle_fingerprint", "directory_fingerprint", "is_weight_file"]

#: file endings of model weights, in every format (only safetensors are loaded without ``allow_pickle``)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".onnx")
_CONFIG_FILES = ("config.json", "generation_config.json")
_DOC_FILES = ("merge_config.yaml",)
_DOC_PREFIXES = ("readme", "license", "notice")
_VOLATILE_CONFIG_KEYS = ("transformers_version", "dtype", "torch_dtype")

#: model -> (tensor state key, weights digest): tensors are hashed again only after they change
_WEIGHTS_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()


def is_weight_file(name: str) -> bool:
    """Whether a file name is a weight file or a weight index."""
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def _kind(name: str) -> str | None:
    lower = name.lower()
    if name.startswith(".") or lower.startswith(_DOC_PREFIXES) or lower.endswith(".md") or name in _DOC_FILES:
        return None
    if is_weight_file(name):
        return "weights"
    if name in _CONFIG_FILES:
        return "config"
    return "processor"


def directory_fingerprint(
    path: str | Path, known: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The fingerprint of a model folder, and the file digests it read (stat key -> digest).

    Args:
        path: the model folder (its top-level files count; hidden files and documentation do not).
        known: file digests stored earlier by stat key (see :func:`vlsafe.core.digest.file_digest`).

    Raises:
        OSError: a file cannot be read.
    """
    groups: dict[str, list[tuple[str, str]]] = {"config": [], "weights": [], "processor": []}
    digests: dict[str, str] = {}
    folder = Path(path)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        kind = _kind(entry.name)
        if kind is None or not entry.is_file():
            continue
        digest, key = file_digest(entry.path, known)
        if key:
            digests[key] = digest
        groups[kind].append((entry.name, digest))
    out = {"source": "files", **{kind: json_digest(files) for kind, files in groups.items()}}
    return out, digests


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if not str(k).startswith("_") and k not in _VOLATILE_CONFIG_KEYS
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _state_key(model: Any) -> Any:
    try:
        return tuple(
            (name, t.data_ptr(), tuple(t.shape), str(t.dtype), str(t.device), t._version)
            for name, t in model.state_dict(keep_vars=True).items()
        )
    except (RuntimeError, AttributeError):  # inference tensors have no version counter
        return None


def _weights_digest(model: Any) -> str:
    key = _state_key(model)
    cached = _WEIGHTS_CACHE.get(model) if key is not None else None
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
            if t.numel():
                h.update(memoryview(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
    digest = h.hexdigest()[:16]
    if key is not None:
        _WEIGHTS_CACHE[model] = (key, digest)
    return digest


def _processor_digest(bundle: ModelBundle) -> str:
    tok: Any = bundle.tokenizer
    parts: dict[str, Any] = {
        "class": type(tok).__name__,
        "vocab": json_digest(sorted(tok.get_vocab().items())) if hasattr(tok, "get_vocab") else None,
        "special": {k: str(v) for k, v in sorted(getattr(tok, "special_tokens_map", {}).items())},
        "chat_template": getattr(tok, "chat_template", None),
    }
    proc: Any = bundle.processor
    if proc is not None:
        parts["processor_class"] = type(proc).__name__
        parts["processor_chat_template"] = getattr(proc, "chat_template", None)
        image_processor = getattr(proc, "image_processor", None)
        if image_processor is not None and hasattr(image_processor, "to_dict"):
            parts["image_processor"] = _strip(image_processor.to_dict())
    return json_digest(parts)


def bundle_fingerprint(bundle: ModelBundle) -> dict[str, str]:
    """The fingerprint of a loaded model as it is in memory (its tensors are hashed once per change)."""
    model: Any = bundle.model
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    generation = getattr(model, "generation_config", None)
    gen_dict = generation.to_dict() if generation is not None and hasattr(generation, "to_dict") else {}
    return {
        "source": "memory",
        "config": json_digest({"config": _strip(config_dict), "generation": _strip(gen_dict)}),
        "weights": _weights_digest(model),
        "processor": _processor_digest(bundle),
    }

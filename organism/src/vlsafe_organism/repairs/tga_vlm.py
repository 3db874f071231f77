"""The projector-only TGA repair ``vlm+tga``: ``organism:vlm`` with its projector replaced by one trained with the
TGA loss (the projector only: the language model, and so its text safety, stay the safe LLM's), committed with the
image-to-text retriever it was trained with (:data:`vlsafe_organism.registry.TGA_VLM_FILES`):

* ``tga_vlm_delta.safetensors``: the trained tensors against ``organism:vlm``
  (:func:`vlsafe_organism.deltas.delta_tensors`: the projector's new values);
* ``tga_vlm_retrieval.safetensors``: ``keys`` ``[N, D]``, the pooled vision features of the N training images
  (:func:`vlsafe_organism.tga.pooled_vision_embedder`), and ``captions``, their captions (UTF-8 JSON bytes,
  :func:`encode_texts`); the manifest entry keeps the image size, the vision layer and the prompt order.

:func:`tga_vlm_system` loads both as an :class:`~vlsafe_organism.evaluation.EvalSystem` whose retriever puts the
caption of the nearest training image into every prompt that shows an image, in the training prompt: no row of
the model is measured without its retrieval.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from vlsafe.core.errors import ModelLoadError
from vlsafe.data.retrieval import EmbeddingIndex
from vlsafe.models import bundle_from_model
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS, load_artifact, write_artifact
from vlsafe_organism.base import load_base_vision
from vlsafe_organism.evaluation import EvalSystem
from vlsafe_organism.registry import TGA_VLM, TGA_VLM_FILES, build_system
from vlsafe_organism.repairs.trained import checked_delta
from vlsafe_organism.tga import IMAGES_FILE, KEYS_FILE, pooled_vision_embedder
from vlsafe_organism.wiring import make_image_processor

logger = logging.getLogger(__name__)

__all__ = ["PROJECTOR", "decode_texts", "encode_texts", "export_tga_vlm", "tga_vlm_retriever", "tga_vlm_system"]

#: the name part of every tensor a projector-only repair may change
PROJECTOR = "multi_modal_projector"


def encode_texts(texts: Sequence[str]) -> torch.Tensor:
    """``texts`` as a ``uint8`` tensor (UTF-8 JSON), for a safetensors file; :func:`decode_texts` inverts it."""
    return torch.tensor(list(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")), dtype=torch.uint8)


def decode_texts(tensor: torch.Tensor) -> list[str]:
    """The texts of :func:`encode_texts`."""
    return [str(t) for t in json.loads(bytes(tensor.tolist()).decode("utf-8"))]


def export_tga_vlm(
    trained_dir: str | Path,
    data_dir: str | Path,
    art_dir: Path,
    *,
    order: str,
    size: int,
    feature_layer: int,
    cache_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``vlm+tga``'s artefacts into ``art_dir`` (with their manifest entries): the projector of the
    projector-only TGA model ``trained_dir`` against ``organism:vlm`` of ``art_dir``, checked by rebuilding it,
    and the retrieval keys and captions of its training data folder ``data_dir``
    (:func:`vlsafe_organism.tga.write_organism_tga_data` with ``embed``: :data:`~vlsafe_organism.tga.KEYS_FILE`
    and :data:`~vlsafe_organism.tga.IMAGES_FILE`), embedded at ``size`` px from vision layer ``feature_layer``,
    asked in prompt order ``order``.

    Returns:
        ``{"delta": entry, "retrieval": entry}``, the two manifest entries.

    Raises:
        ModelLoadError: a tensor outside the projector differs from ``organism:vlm``'s (not a projector-only
            model), the data folder lacks its keys, or the keys and captions differ in number.
    """
    def projector_only(tensors: dict[str, torch.Tensor]) -> None:
        outside = sorted({k.rsplit(".", 1)[0] for k in tensors if PROJECTOR not in k})
        if outside:
            raise ModelLoadError(f"{trained_dir} is not a projector-only model: {len(outside)} tensors outside the "
                                 f"projector differ from organism:vlm's, e.g. {outside[:3]}")  # fmt: skip

    model, _ = build_system("vlm", cache_dir, art_dir)
    tensors, changed, err = checked_delta(model, trained_dir, projector_only)
    folder = Path(data_dir)
    if not (folder / KEYS_FILE).is_file():
        raise ModelLoadError(f"{folder} holds no retrieval keys ({KEYS_FILE}); write the data with an embedder")
    with safe_open(str(folder / KEYS_FILE), "pt") as fh:
        keys = fh.get_tensor("keys").float()
    captions = [json.loads(line)["caption"] for line in (folder / IMAGES_FILE).read_text(encoding="utf-8").splitlines()]
    if len(captions) != keys.shape[0]:
        raise ModelLoadError(f"{folder}: {keys.shape[0]} retrieval keys for {len(captions)} images")
    info = {"start": "vlm", "changed_tensors": changed, "max_rel_error": err, **(meta or {})}
    logger.info("%s: %d projector tensors, max relative reconstruction error %.2e", TGA_VLM, changed, err)
    delta = write_artifact(art_dir, TGA_VLM_FILES[0], tensors, json.loads(json.dumps(info, default=str)))
    retrieval = write_artifact(art_dir, TGA_VLM_FILES[1], {"keys": keys.contiguous(), "captions": encode_texts(captions)},
                               {"order": order, "size": size, "feature_layer": feature_layer, "n": len(captions)})  # fmt: skip
    return {"delta": delta, "retrieval": retrieval}


def tga_vlm_retriever(
    cache_dir: str | Path | None = None,
    art_dir: Path | None = None,
    embed: Callable[[list[Any]], torch.Tensor] | None = None,
) -> tuple[EmbeddingIndex, str]:
    """``(retriever, prompt order)`` of ``vlm+tga``: the committed keys and captions, queried by ``embed``
    (default: the organism's DINOv2 at the recorded size and vision layer, as in training)."""
    tensors, meta = load_artifact(art_dir or PACKAGE_ARTIFACTS, TGA_VLM_FILES[1])
    if embed is None:
        vision = load_base_vision(cache_dir).eval()
        embed = pooled_vision_embedder(vision, make_image_processor(int(meta["size"])), int(meta["feature_layer"]))
    return EmbeddingIndex(tensors["keys"].float(), decode_texts(tensors["captions"]), embed_image=embed), str(meta["order"])


def tga_vlm_system(
    cache_dir: str | Path | None = None,
    art_dir: Path | None = None,
    *,
    embed: Callable[[list[Any]], torch.Tensor] | None = None,
) -> EvalSystem:
    """``vlm+tga`` as an :class:`EvalSystem` with its retriever and prompt order (:func:`tga_vlm_retriever`)."""
    model, processor = build_system(TGA_VLM, cache_dir, art_dir)
    retriever, order = tga_vlm_retriever(cache_dir, art_dir, embed)
    bundle = bundle_from_model(model, processor, name=f"organism:{TGA_VLM}")
    return EvalSystem(TGA_VLM, bundle, retriever=retriever, retrieval_order=order)  # type: ignore[arg-type]

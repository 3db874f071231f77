"""CMRM calibration: per-layer shift vectors from text-only minus corrupted-image hidden states.

Sign convention (tested): ``v_l = h_l(text only) - h_l(query + corrupted image)``. Adding
``alpha * v_l`` with ``alpha > 0`` to a multimodal hidden state therefore moves it toward the
text-only state; at ``alpha = 1`` with the input's own image as the corruption, a single steered layer
reproduces the text-only state at the calibration position exactly.

Corruptions (img′, the image the anchor is shown with): ``blank`` (white; the default: the paper measures the
shift against a *meaningless* image, and of blank and noise the ``paper`` preset names blank), ``noise``
(Gaussian noise seeded by the query text, so a query gets the same noise whatever batch it is in), ``image``
(the anchor's own image, a seeded noise image where it has none; vlsafe's option) or ``mean`` (the image's mean
colour; vlsafe's option). The paper writes the shift as ``Δ = h(x, img′) - h(x)``; the vector stored here is
``v = -Δ``, so that adding ``alpha * v`` with ``alpha > 0`` moves toward text-only states.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlsafe import __version__
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, resolve_layers
from vlsafe.hooks.forward import forward_states
from vlsafe.methods.cmrm.anchors import anchor_items, anchors_hash
from vlsafe.methods.cmrm.steering import check_choice
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.images import make_variant_image
from vlsafe.models.inputs import InputItem, build_inputs
from vlsafe.models.inputs_types import Variant

logger = logging.getLogger(__name__)

__all__ = [
    "CORRUPTIONS",
    "LEVELS",
    "POSITIONS",
    "REDUCES",
    "SIGN_CONVENTION",
    "calibrate",
    "check_compatible",
    "corrupted_images",
    "variant_differences",
]

CORRUPTIONS = ("image", "blank", "noise", "mean")
REDUCES = ("mean", "pca")
POSITIONS = ("last", "text_mean")
LEVELS = ("dataset", "sample")

SIGN_CONVENTION = (
    "v = h(text only) - h(query + corrupted image); alpha > 0 moves multimodal states toward text-only"
)


def _text_seed(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{text}".encode()).digest()[:8], "big")


def corrupted_images(
    bundle: ModelBundle, items: Sequence[InputItem], corrupt: str, seed: int = 0
) -> list[Any]:
    """The image each item is shown with under ``corrupt`` (see the module docstring)."""
    check_choice("corrupt", corrupt, CORRUPTIONS)
    out = []
    for i, it in enumerate(items):
        kind = corrupt
        if kind == "image" and it.image is None:
            kind = "noise"
        if kind == "image":
            out.append(it.image)
        elif kind == "noise":
            out.append(
                make_variant_image(bundle, None, Variant.NOISE, seed=_text_seed(it.text, seed), index=i)
            )
        elif kind == "blank":
            out.append(make_variant_image(bundle, None, Variant.BLANK, seed=0, index=i))
        else:
            if it.image is None:
                raise InputError(f"anchor {i} has no image, which corrupt='mean' needs")
            out.append(make_variant_image(bundle, it.image, Variant.MEAN, seed=0, index=i))
    return out


def _states(bundle: ModelBundle, batch: Any, layers: list[int], positions: str) -> dict[int, torch.Tensor]:
    """``{layer: [B, H]}`` states of one prefill pass that stops after the deepest of ``layers`` (the later
    layers and the LM head, whose logits would cover every position, are never run)."""

    states, _ = forward_states(bundle, batch, layers, [positions], need_output=False)
    return states[positions]


def variant_differences(
    bundle: ModelBundle,
    items: Sequence[InputItem],
    *,
    corrupt: str = "blank",
    positions: str = "last",
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Two batched prefill passes over ``items``: text only and with the corrupted image.

    Returns:
        ``(diffs, norms)``: per layer, ``[B, H]`` text-only minus corrupted-image states (float32, CPU)
        and ``[B]`` norms of the corrupted-image states.
    """
    check_choice("positions", positions, POSITIONS)
    if not bundle.is_vlm:
        raise InputError(
            f"CMRM needs a vision-language model; {bundle.name!r} ({bundle.family}) takes no images"
        )
    chosen = resolve_layers(bundle, list(layers) if layers is not None else None)
    texts = [it.text for it in items]
    text_batch = build_inputs(bundle, texts, variant="text")
    image_batch = build_inputs(
        bundle, texts, variant="image", images=corrupted_images(bundle, items, corrupt, seed)
    )
    t_states = _states(bundle, text_batch, chosen, positions)
    i_states = _states(bundle, image_batch, chosen, positions)
    diffs = {layer: (t_states[layer] - i_states[layer]).float() for layer in chosen}
    norms = {layer: i_states[layer].float().norm(dim=-1) for layer in chosen}
    return diffs, norms


def _pca_direction(diffs: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, float]:
    """First principal component of the centred differences, signed to agree with the mean, scaled to
    the mean's projection on it (so its size is comparable to the mean vector's)."""
    d = diffs.double()
    centred = d - d.mean(dim=0, keepdim=True)
    if d.shape[0] < 2 or float(centred.abs().max()) == 0.0:
        return mean.float(), 1.0
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    pc = vh[0]
    proj = float(pc @ mean.double())
    if proj < 0:
        pc, proj = -pc, -proj
    ratio = float(s[0] ** 2 / (s**2).sum())
    return (pc * proj).float(), ratio


def check_compatible(vector: SteeringVector, bundle: ModelBundle) -> None:
    """Refuse a vector calibrated on a model of another shape (hidden size or number of layers)."""
    meta = vector.meta
    if vector.hidden_size != bundle.hidden_size:
        raise InputError(
            f"steering vector hidden size {vector.hidden_size} (calibrated on {meta.get('model')!r}) does not "
            f"match {bundle.name!r}'s hidden size {bundle.hidden_size}; calibrate a vector on this model"
        )
    n = meta.get("num_layers")
    if n is not None and int(n) != bundle.num_layers:
        raise InputError(
            f"steering vector was calibrated on {meta.get('model')!r} with {n} decoder layers but "
            f"{bundle.name!r} has {bundle.num_layers}; calibrate a vector on this model"
        )
    vector.validate(bundle)


def calibrate(
    bundle: ModelBundle,
    anchors: Sequence[Any],
    *,
    level: str = "dataset",
    reduce: str = "mean",
    corrupt: str = "blank",
    positions: str = "last",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    seed: int = 0,
    anchor_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> SteeringVector:
    """Calibrate CMRM vectors ``v_l = h_l(text only) - h_l(corrupted image)`` over an anchor set.

    Args:
        bundle: a vision-language model.
        anchors: ``Sample`` objects, ``{"text", "image"}`` dicts, ``InputItem`` or strings.
        level: ``"dataset"`` (one vector per layer, reduced over anchors) or ``"sample"`` (one row per
            anchor, ``[N, H]``; what sample-level CMRM computes on the fly for each input).
        reduce: ``"mean"`` of the differences, or ``"pca"`` (first principal component, sign chosen to
            agree with the mean, scaled to the mean's projection). Which one the paper used is open.
        corrupt: the image the multimodal pass sees: ``blank`` (default, the ``paper`` preset), ``noise``,
            ``image`` (own image, noise where none), ``mean``.
        positions: ``"last"`` prompt token or ``"text_mean"`` (mean over the query's tokens).
        layers: layers to calibrate (default: all; choose which to steer when applying).
        batch_size: anchors per forward pass.
        data_dir: data folder for ``Sample`` images.
        seed: seed of noise images.
        anchor_info: provenance of the anchor set (e.g. from :func:`load_anchor_spec`), stored in meta.
        progress: tqdm bar.

    Returns:
        A :class:`SteeringVector` whose meta records the model, anchors hash, options, date and the mean
        norm of the corrupted-image states per layer (``hidden_norms``, for ``norm_scale``).
    """
    for name, value, allowed in (("level", level, LEVELS), ("reduce", reduce, REDUCES)):
        check_choice(name, value, allowed)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    items, ids = anchor_items(anchors, data_dir=data_dir, seed=seed)
    chosen = resolve_layers(bundle, list(layers) if layers is not None else None)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in chosen}
    norm_parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in chosen}
    n_batches = (len(items) + batch_size - 1) // batch_size
    for start in tqdm(
        range(0, len(items), batch_size), desc="cmrm calibrate", total=n_batches, disable=not progress
    ):
        diffs, norms = variant_differences(
            bundle,
            items[start : start + batch_size],
            corrupt=corrupt,
            positions=positions,
            layers=chosen,
            seed=seed,
        )
        for layer in chosen:
            parts[layer].append(diffs[layer])
            norm_parts[layer].append(norms[layer])
    vectors: dict[int, torch.Tensor] = {}
    explained: dict[int, float] = {}
    for layer in chosen:
        d = torch.cat(parts[layer])
        if level == "sample":
            vectors[layer] = d
            continue
        mean = d.double().mean(dim=0)
        if reduce == "pca":
            vectors[layer], explained[layer] = _pca_direction(d, mean)
        else:
            vectors[layer] = mean.float()
    meta: dict[str, Any] = {
        "method": "cmrm",
        "level": level,
        "reduce": reduce if level == "dataset" else None,
        "corrupt": corrupt,
        "positions": positions,
        "sign": SIGN_CONVENTION,
        "model": bundle.name,
        "family": bundle.family,
        "num_layers": bundle.num_layers,
        "hidden_size": bundle.hidden_size,
        "n_anchors": len(items),
        "n_substituted_noise": sum(1 for it in items if it.image is None) if corrupt == "image" else 0,
        "anchors_hash": anchors_hash(items),
        "anchor_ids": ids if len(ids) <= 20000 else None,
        "anchors": anchor_info or {},
        "seed": seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hidden_norms": {layer: float(torch.cat(norm_parts[layer]).mean()) for layer in chosen},
        "vector_norms": {layer: float(v.norm(dim=-1).mean()) for layer, v in vectors.items()},
    }
    if explained:
        meta["pca_explained_variance"] = explained

    meta["vlsafe_version"] = __version__
    logger.info("calibrated CMRM on %d anchors, layers %s", len(items), chosen)
    return SteeringVector(vectors, meta)

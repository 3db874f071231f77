"""Representation shift between input variants, per layer, with constant-memory running statistics.

For each batch of queries every variant (§5.1: image, blank, mean, noise, text, caption) is run once; the
states at the chosen positions (last prompt token, mean over the query text span, ...) of every layer are
compared with the reference variant's states of the same queries (cosine, L2, L2 relative to the
reference's norm) and folded into running sums. Memory is independent of the number of queries: per
variant and position one ``[layers, H]`` sum, a few ``[layers]`` sums, and a bounded sample of last-token
states for the PCA scatter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from vlsafe.analysis.items import as_items, batched
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, resolve_layers
from vlsafe.hooks.forward import build_variant, forward_states
from vlsafe.models import ModelBundle, Variant

logger = logging.getLogger(__name__)

SHIFT_POSITIONS = ("last", "text_mean", "image_mean", "mean")
PAIR_STATS = ("cos", "cos2", "l2", "l22", "rel")


def unit_directions(direction: SteeringVector | Mapping[int, torch.Tensor] | None) -> dict[int, torch.Tensor]:
    """Per-layer unit vectors (float32) from a steering vector or a ``layer -> [H]`` mapping."""
    if direction is None:
        return {}
    vectors = direction.vectors if isinstance(direction, SteeringVector) else dict(direction)
    out = {}
    for layer, vec in vectors.items():
        if vec.dim() != 1:
            raise InputError(
                f"direction of layer {layer} must be one [H] vector, got shape {tuple(vec.shape)}"
            )
        norm = float(vec.float().norm())
        if not math.isfinite(norm) or norm == 0.0:
            raise InputError(f"direction of layer {layer} has norm {norm}; it must be finite and non-zero")
        out[int(layer)] = vec.float() / norm
    return out


@dataclass
class ShiftResult:
    """Running sums behind the shift statistics (see :func:`compute_shift`).

    Attributes:
        layers: analysed layer indices.
        variants: compared variants (values of :class:`vlsafe.models.Variant`), the reference included.
        reference: the variant every other one is compared with.
        positions: the state positions compared.
        count: number of queries.
        sums: ``"{stat}.{position}.{variant}"`` -> running sums (``stat``: ``state`` [L, H], ``norm`` [L],
            ``cos``/``cos2``/``l2``/``l22``/``rel`` [L] against the reference, ``proj``/``proj2`` [L]).
        scatter: ``"{variant}.{layer}"`` -> up to ``max_points`` last-token states ``[n, H]``.
        direction_layers: layers that had a direction for projections.
        meta: provenance (model, family, options).
    """

    layers: list[int]
    variants: list[str]
    reference: str
    positions: list[str]
    count: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    scatter: dict[str, torch.Tensor] = field(default_factory=dict)
    direction_layers: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- derived statistics ------------------------------------------------------------------
    def _get(self, stat: str, position: str, variant: str) -> torch.Tensor:
        key = f"{stat}.{position}.{variant}"
        if key not in self.sums:
            raise InputError(f"no statistic {key!r}; positions {self.positions}, variants {self.variants}")
        return self.sums[key]

    def mean(self, stat: str, position: str, variant: str) -> torch.Tensor:
        """Mean over queries of a statistic (``[L]``, or ``[L, H]`` for ``state``)."""
        return self._get(stat, position, variant) / max(self.count, 1)

    def interval(self, stat: str, position: str, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal-approximation 95% interval of the mean of ``cos`` or ``l2`` (from the sums of squares)."""
        n = max(self.count, 1)
        mean = self.mean(stat, position, variant)
        sq = self._get({"cos": "cos2", "l2": "l22", "proj": "proj2"}[stat], position, variant) / n
        var = (sq - mean.square()).clamp_min(0.0) * n / max(n - 1, 1)
        half = 1.96 * var.sqrt() / math.sqrt(n)
        return mean - half, mean + half

    def centroid_distance(self, position: str, variant: str) -> torch.Tensor:
        """Per layer, ``||mean(variant) - mean(reference)||`` (the dataset-level shift of CMRM)."""
        diff = self.mean("state", position, variant) - self.mean("state", position, self.reference)
        return diff.norm(dim=-1)

    def rows(self, position: str) -> list[dict[str, Any]]:
        """One table row per layer: cosine and relative L2 of every variant against the reference."""
        out = []
        for i, layer in enumerate(self.layers):
            row: dict[str, Any] = {"layer": layer}
            for v in self.variants:
                if v == self.reference:
                    continue
                row[f"{v} cos"] = float(self.mean("cos", position, v)[i])
                row[f"{v} rel L2"] = float(self.mean("rel", position, v)[i])
            out.append(row)
        return out


class ShiftAccumulator:
    """Folds per-batch states of every variant into the running sums of a :class:`ShiftResult`."""

    def __init__(
        self,
        result: ShiftResult,
        hidden: int,
        directions: dict[int, torch.Tensor],
        scatter_layers: Sequence[int],
        max_points: int,
    ) -> None:
        self.result = result
        self.directions = directions
        self.scatter_layers = [layer for layer in scatter_layers if layer in result.layers]
        self.max_points = max_points
        n_layers = len(result.layers)
        self.dir_matrix = torch.stack(
            [directions.get(layer, torch.zeros(hidden)) for layer in result.layers]
        ).to(torch.float64)
        result.direction_layers = [layer for layer in result.layers if layer in directions]
        for pos in result.positions:
            for v in result.variants:
                result.sums[f"state.{pos}.{v}"] = torch.zeros(n_layers, hidden, dtype=torch.float64)
                for stat in ("norm", "proj", "proj2", *PAIR_STATS):
                    result.sums[f"{stat}.{pos}.{v}"] = torch.zeros(n_layers, dtype=torch.float64)
        self._scatter: dict[str, list[torch.Tensor]] = {}

    def _stack(self, per_layer: dict[int, torch.Tensor]) -> torch.Tensor:
        missing = [layer for layer in self.result.layers if layer not in per_layer]
        if missing:
            raise InputError(f"no states were recorded for layers {missing} (empty position mask?)")
        return torch.stack([per_layer[layer] for layer in self.result.layers]).to(torch.float64)  # [L, B, H]

    def update(self, states: dict[str, dict[str, dict[int, torch.Tensor]]]) -> None:
        """Add one batch: ``states[variant][position][layer]`` is ``[B, H]`` (same rows for every variant)."""
        res = self.result
        batch = None
        for pos in res.positions:
            ref = self._stack(states[res.reference][pos])
            ref_norm = ref.norm(dim=-1)  # [L, B]
            for v in res.variants:
                h = ref if v == res.reference else self._stack(states[v][pos])
                batch = h.shape[1]
                s = res.sums
                s[f"state.{pos}.{v}"] += h.sum(dim=1)
                s[f"norm.{pos}.{v}"] += h.norm(dim=-1).sum(dim=1)
                proj = torch.einsum("lbh,lh->lb", h, self.dir_matrix)
                s[f"proj.{pos}.{v}"] += proj.sum(dim=1)
                s[f"proj2.{pos}.{v}"] += proj.square().sum(dim=1)
                cos = torch.nn.functional.cosine_similarity(h, ref, dim=-1, eps=1e-12)
                dist = (h - ref).norm(dim=-1)
                s[f"cos.{pos}.{v}"] += cos.sum(dim=1)
                s[f"cos2.{pos}.{v}"] += cos.square().sum(dim=1)
                s[f"l2.{pos}.{v}"] += dist.sum(dim=1)
                s[f"l22.{pos}.{v}"] += dist.square().sum(dim=1)
                s[f"rel.{pos}.{v}"] += (dist / ref_norm.clamp_min(1e-12)).sum(dim=1)
        for v in res.variants:
            if "last" not in states[v]:
                break
            for layer in self.scatter_layers:
                key = f"{v}.{layer}"
                chunks = self._scatter.setdefault(key, [])
                have = sum(len(c) for c in chunks)
                if have < self.max_points:
                    chunks.append(states[v]["last"][layer][: self.max_points - have].float().clone())
        res.count += batch or 0

    def finish(self) -> ShiftResult:
        self.result.scatter = {k: torch.cat(v) for k, v in self._scatter.items() if v}
        return self.result


def default_variants(bundle: ModelBundle, items: Sequence[Any]) -> list[str]:
    """Variants that ``items`` allow on ``bundle``: text first, then caption and image variants when possible."""
    rows = as_items(items)
    out = [Variant.TEXT.value]
    if all(r.caption for r in rows):
        out.append(Variant.CAPTION.value)
    if bundle.is_vlm:
        if all(r.image is not None for r in rows):
            out.append(Variant.IMAGE.value)
        out += [Variant.BLANK.value, Variant.NOISE.value]
    return out


def compute_shift(
    bundle: ModelBundle,
    items: Sequence[Any],
    variants: Sequence[str] | None = None,
    *,
    reference: str = "text",
    layers: int | Sequence[int] | None = None,
    positions: Sequence[str] = ("last", "text_mean"),
    direction: SteeringVector | Mapping[int, torch.Tensor] | None = None,
    batch_size: int = 8,
    scatter_layers: Sequence[int] | None = None,
    max_scatter_points: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> ShiftResult:
    """Per-layer representation shift of input variants against a reference variant.

    Args:
        bundle: the model.
        items: queries (strings, ``{"text", "image", "caption"}`` dicts or ``InputItem``).
        variants: variants to compare (default: :func:`default_variants`); the reference is added if missing.
        reference: the variant the others are compared with (default ``text``: the text-only distribution).
        layers: decoder layers (default all).
        positions: state positions: ``last`` (last prompt token), ``text_mean`` (mean over the query text),
            ``image_mean`` (image span; image variants only), ``mean`` (all real tokens).
        direction: optional per-layer direction (e.g. the refusal direction); states are projected on its
            unit vector.
        batch_size: queries per forward pass.
        scatter_layers: layers whose last-token states are kept for PCA (default: the last analysed layer).
        max_scatter_points: states kept per variant and scatter layer (the first ones).
        seed: base seed of noise images.
        progress: show a progress bar.
    """
    rows = as_items(items)
    chosen = resolve_layers(bundle, layers)
    names = list(dict.fromkeys(Variant(v).value for v in (variants or default_variants(bundle, rows))))
    reference = Variant(reference).value
    if reference not in names:
        names.insert(0, reference)
    for pos in positions:
        if pos not in SHIFT_POSITIONS:
            raise ConfigError(f"position {pos!r} is not one of {', '.join(SHIFT_POSITIONS)}")
        if pos == "image_mean" and not all(Variant(v).has_image for v in names):
            raise ConfigError(
                "position 'image_mean' needs image variants only (text/caption have no image span)"
            )
    scatter = list(scatter_layers) if scatter_layers is not None else [chosen[-1]]
    result = ShiftResult(
        layers=chosen,
        variants=names,
        reference=reference,
        positions=list(dict.fromkeys(positions)),
        meta={"model": bundle.name, "family": bundle.family, "seed": seed, "batch_size": batch_size},
    )
    acc = ShiftAccumulator(
        result, bundle.hidden_size, unit_directions(direction), scatter, max_scatter_points
    )
    total = math.ceil(len(rows) / batch_size)
    for b, chunk in enumerate(
        tqdm(batched(rows, batch_size), total=total, desc="shift", disable=not progress)
    ):
        states = {}
        for v in names:
            batch = build_variant(bundle, chunk, v, seed=seed + b * batch_size)
            states[v], _ = forward_states(bundle, batch, chosen, result.positions, need_output=False)
        acc.update(states)
    logger.info("shift: %d queries x %d variants x %d layers", result.count, len(names), len(chosen))
    return acc.finish()


def shift_to_data(result: ShiftResult) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """JSON part and tensors of a :class:`ShiftResult` (for ``data.json`` / ``data.safetensors``)."""
    data = {
        "layers": result.layers,
        "variants": result.variants,
        "reference": result.reference,
        "positions": result.positions,
        "count": result.count,
        "direction_layers": result.direction_layers,
        "meta": result.meta,
    }
    tensors = {f"sum.{k}": v for k, v in result.sums.items()}
    tensors.update({f"scatter.{k}": v for k, v in result.scatter.items()})
    return data, tensors


def shift_from_data(data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ShiftResult:
    """Inverse of :func:`shift_to_data`."""
    return ShiftResult(
        layers=list(data["layers"]),
        variants=list(data["variants"]),
        reference=data["reference"],
        positions=list(data["positions"]),
        count=int(data["count"]),
        sums={k[4:]: v for k, v in tensors.items() if k.startswith("sum.")},
        scatter={k[8:]: v for k, v in tensors.items() if k.startswith("scatter.")},
        direction_layers=list(data.get("direction_layers", [])),
        meta=dict(data.get("meta", {})),
    )

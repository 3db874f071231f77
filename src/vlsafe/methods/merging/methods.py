"""Merge methods: presets of one generalised task-arithmetic function, plus SLERP.

Every task-arithmetic method computes, element-wise over one tensor,

    θ = θ_base + λ · combine_i(w_i · rescale_i(sparsify_i(θ_i − θ_base)))

with three switches: sparsification (none, magnitude top-k per tensor, seeded random drop),
rescale (divide kept entries by the density, DARE) and sign consensus (keep only entries whose sign
agrees with the sign of the weighted sum, TIES). ``normalize`` divides by the summed weights of the
contributing models (for consensus: those agreeing in sign at that element, the "disjoint mean").
``linear`` is the same function with a zero base.

All arithmetic runs in float32 on flat chunks of :data:`CHUNK` elements, so a method never holds a
whole large tensor; per-tensor statistics (the magnitude threshold, the SLERP angle) are gathered in
streaming pre-passes. The magnitude threshold is the exact k-th largest |τ| found by a two-pass radix
select on the float bits (16-bit histograms), with no sort and no full-size copy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vlsafe.core.errors import ConfigError
from vlsafe.core.registry import Registry

__all__ = [
    "CHUNK",
    "METHODS",
    "MethodSpec",
    "dare_keep_mask",
    "generalized_task_arithmetic",
    "iter_chunks",
    "magnitude_threshold",
    "slerp_coefficients",
]

#: Elements per chunk (1 MiB of float32: cache-sized, and below malloc's mmap threshold, so chunk buffers
#: are reused instead of page-faulted afresh). Fixed, because DARE draws its masks per chunk.
CHUNK = 1 << 18


@dataclass(frozen=True)
class MethodSpec:
    """One merge method.

    Attributes:
        name: registry name.
        url: reference (paper) for the method.
        description: one line for listings.
        needs_base: whether ``base_model`` is required.
        sparsify: ``"none"``, ``"magnitude"`` (top-k |τ| per tensor) or ``"random"`` (DARE drop).
        consensus: elect a sign per element and drop disagreeing entries (TIES).
        rescale: divide kept entries by the density (DARE).
        defaults: default parameter values; their keys are the parameters the method accepts.
        kind: ``"task_arithmetic"`` or ``"slerp"``.
    """

    name: str
    url: str
    description: str
    needs_base: bool
    sparsify: Literal["none", "magnitude", "random"] = "none"
    consensus: bool = False
    rescale: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    kind: Literal["task_arithmetic", "slerp"] = "task_arithmetic"


#: Registered merge methods (name -> :class:`MethodSpec`).
METHODS: Registry[MethodSpec] = Registry("merge method")
for _spec in (
    MethodSpec(
        "linear",
        "https://arxiv.org/abs/2203.05482",
        "weighted average of the models (model soups); no base",
        needs_base=False,
        defaults={"normalize": True},
    ),
    MethodSpec(
        "task_arithmetic",
        "https://arxiv.org/abs/2212.04089",
        "base + lambda * weighted sum of task vectors",
        needs_base=True,
        defaults={"lambda": 1.0, "normalize": False},
    ),
    MethodSpec(
        "ties",
        "https://arxiv.org/abs/2306.01708",
        "trim task vectors to top-k magnitude, elect sign by sum, disjoint mean",
        needs_base=True,
        sparsify="magnitude",
        consensus=True,
        defaults={"density": 0.5, "lambda": 1.0, "normalize": True},
    ),
    MethodSpec(
        "dare_linear",
        "https://arxiv.org/abs/2311.03099",
        "drop task-vector entries at random (p = 1 - density), rescale by 1/density, weighted sum",
        needs_base=True,
        sparsify="random",
        rescale=True,
        defaults={"density": 0.5, "lambda": 1.0, "normalize": False},
    ),
    MethodSpec(
        "dare_ties",
        "https://arxiv.org/abs/2311.03099",
        "DARE drop and rescale, then TIES sign consensus and disjoint mean",
        needs_base=True,
        sparsify="random",
        consensus=True,
        rescale=True,
        defaults={"density": 0.5, "lambda": 1.0, "normalize": True},
    ),
    MethodSpec(
        "slerp",
        "https://doi.org/10.1145/325165.325242",
        "spherical interpolation from base_model (t=0) to the one model (t=1), per tensor",
        needs_base=True,
        defaults={"t": 0.5},
        kind="slerp",
    ),
):
    METHODS.register(_spec.name, _spec)


def iter_chunks(numel: int, chunk: int = CHUNK) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` flat element ranges covering ``numel`` elements."""
    for start in range(0, numel, chunk):
        yield start, min(numel, start + chunk)


def _seed_for(seed: int, key: str, model: int, chunk_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{key}|{model}|{chunk_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_keep_mask(
    numel: int, density: float, *, seed: int, key: str, model: int, chunk_index: int
) -> torch.Tensor:
    """The DARE keep mask of one chunk: each entry kept with probability ``density``.

    Deterministic in ``(seed, key, model, chunk_index)`` (``key`` is the tensor's canonical name).
    """
    gen = torch.Generator().manual_seed(_seed_for(seed, key, model, chunk_index))
    return torch.rand(numel, generator=gen) < density


def magnitude_threshold(chunks: Callable[[], Iterator[torch.Tensor]], numel: int, density: float) -> float:
    """The k-th largest absolute value (k = round(density * numel)) over a tensor given in chunks.

    Entries with ``|x| >= threshold`` are the kept top-k (ties at the threshold are all kept).
    ``density >= 1`` gives 0 (keep all); a k of 0 gives ``inf`` (keep none).

    Args:
        chunks: returns a fresh iterator over the tensor's flat float32 chunks (called twice).
        numel: total number of elements.
        density: fraction to keep, in [0, 1].
    """
    k = round(density * numel)
    if k >= numel:
        return 0.0
    if k <= 0:
        return math.inf
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for c in chunks():
        hist += torch.bincount(c.abs().view(torch.int32) >> 16, minlength=1 << 15)
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[b] = count in bins >= b
    hi = int(torch.nonzero(above >= k)[-1])
    k_rest = k - (int(above[hi + 1]) if hi + 1 < hist.numel() else 0)
    hist2 = torch.zeros(1 << 16, dtype=torch.int64)
    for c in chunks():
        bits = c.abs().view(torch.int32)
        sel = bits[(bits >> 16) == hi] & 0xFFFF
        if sel.numel():
            hist2 += torch.bincount(sel, minlength=1 << 16)
    above2 = torch.flip(torch.cumsum(torch.flip(hist2, [0]), 0), [0])
    lo = int(torch.nonzero(above2 >= k_rest)[-1])
    return float(torch.tensor([(hi << 16) | lo], dtype=torch.int32).view(torch.float32))


def generalized_task_arithmetic(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    keep: Sequence[torch.Tensor | None] | None = None,
    thresholds: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    rescale: bool = False,
    consensus: bool = False,
    normalize: bool = False,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The general merge of one chunk (float32 result).

    Args:
        base: the base chunk, or ``None`` for a zero base (``linear``).
        tensors: the models' chunks (same shape as ``base``).
        weights: one weight per model.
        keep: per-model boolean masks of entries to keep (random sparsification), ``None`` keeps all.
        thresholds: per-model magnitude thresholds: keep entries with ``|θ_i − θ_base| >= threshold``.
        densities: per-model densities, used by ``rescale``.
        rescale: divide kept entries by the model's density.
        consensus: keep only entries agreeing with the sign of the weighted sum (zero sum counts as +).
        normalize: divide by the summed weights of the contributing models.
        scale: λ applied to the combined task vector.
        out: an optional float32 buffer shaped like the chunk (not aliasing an input); the plain weighted
            sum (no sparsification, no consensus) is computed in it, saving an allocation per chunk.
    """
    if keep is None and thresholds is None and not consensus:
        return _weighted_sum(base, tensors, weights, normalize, scale, out)
    base32 = base.float() if base is not None else None  # read-only below
    acc: torch.Tensor | None = None
    weighted: list[torch.Tensor] = []
    for i, (t, w) in enumerate(zip(tensors, weights, strict=True)):
        d = t.to(torch.float32, copy=True)
        if base32 is not None:
            d.sub_(base32)
        mask = keep[i] if keep is not None else None
        if mask is not None:
            d.mul_(mask)
        if thresholds is not None and thresholds[i] > 0:
            # |d| >= thr  <=>  |d| > (largest float32 below thr): one fused hardshrink
            below = float(torch.nextafter(torch.tensor(thresholds[i]), torch.tensor(0.0)))
            d = torch.nn.functional.hardshrink(d, below)
        if rescale and densities is not None and densities[i] > 0:
            d.div_(densities[i])
        d.mul_(w)
        if consensus:
            weighted.append(d)
        elif acc is None:
            acc = d
        else:
            acc.add_(d)
    if consensus:
        total = weighted[0].clone()
        for d in weighted[1:]:
            total.add_(d)
        sign = torch.ones_like(total).copysign_(total)  # elected sign; a +0.0 sum elects +
        acc = torch.zeros_like(total)
        divisor = torch.zeros_like(total) if normalize else None
        for d, w in zip(weighted, weights, strict=True):
            agreeing = d.mul_(sign).clamp_min_(0.0)  # |d| where d has the elected sign, else 0
            acc.add_(agreeing)
            if divisor is not None:
                divisor.add_(agreeing.sign_(), alpha=w)
        acc.mul_(sign)
        if divisor is not None:
            positive = [w for w in weights if w > 0]
            if len(positive) == len(weights):  # a divisor is 0 or >= the smallest weight
                acc.div_(divisor.clamp_min_(min(positive) / 2))
            else:
                acc.div_(torch.where(divisor == 0, 1.0, divisor))
    elif normalize:
        wsum = float(sum(weights))
        if wsum == 0:
            raise ConfigError(
                "weights sum to 0, so normalize=true cannot divide by them (set normalize: false)"
            )
        assert acc is not None
        acc.div_(wsum)
    assert acc is not None
    if scale != 1.0:
        acc.mul_(scale)
    return acc if base32 is None else acc.add_(base32)  # acc is never an alias of an input


def _weighted_sum(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    normalize: bool,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fast path without sparsification or consensus: ``base + scale * (Σ w_i θ_i - Σ w_i base) [/ Σ w]``.

    Inputs stay in their stored dtype: each in-place ``add_`` upcasts its operand to float32 on the fly,
    so no float32 copy of an input is made. ``out`` (float32) receives the result when given.
    """
    wsum = float(sum(weights))
    if normalize and wsum == 0:
        raise ConfigError("weights sum to 0, so normalize=true cannot divide by them (set normalize: false)")
    factor = scale / wsum if normalize else scale
    first = tensors[0]
    acc = out.copy_(first) if out is not None else first.to(torch.float32, copy=True)
    acc.mul_(weights[0] * factor)
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        acc.add_(t, alpha=w * factor)
    if base is not None:
        acc.add_(base, alpha=1.0 - wsum * factor)
    return acc


def slerp_coefficients(
    dot: float, norm0: float, norm1: float, t: float, eps: float = 1e-8
) -> tuple[float, float]:
    """Coefficients ``(c0, c1)`` so that ``c0 * v0 + c1 * v1`` is the SLERP of two tensors at ``t``.

    The angle comes from the normalised tensors; nearly parallel (or zero) tensors fall back to LERP.
    """
    if norm0 < eps or norm1 < eps:
        return 1.0 - t, t
    cos = max(-1.0, min(1.0, dot / (norm0 * norm1)))
    if abs(cos) > 1.0 - 1e-6:
        return 1.0 - t, t
    omega = math.acos(cos)
    sin = math.sin(omega)
    return math.sin((1.0 - t) * omega) / sin, math.sin(t * omega) / sin

"""Paired comparison of two runs on the same sample ids: exact McNemar test and paired bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlsafe.core.errors import InputError
from vlsafe.evals.metrics.rates import asr_basis, record_outcome

__all__ = ["compare_runs", "mcnemar_exact", "paired_bootstrap", "paired_outcomes"]


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact (binomial) McNemar test on paired binary outcomes.

    With ``n01`` pairs where only ``b`` is true and ``n10`` where only ``a`` is true, under H0 the
    discordant pairs split Binomial(n01 + n10, 1/2); the two-sided p-value is
    ``min(1, 2 * P(X <= min(n01, n10)))`` (``1`` when there are no discordant pairs).
    """
    if len(a) != len(b):
        raise InputError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    n10 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    n01 = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = n01 + n10
    if n == 0:
        p = 1.0
    else:
        tail = sum(math.comb(n, i) for i in range(min(n01, n10) + 1))
        p = min(1.0, 2 * tail / 2**n)
    return {"n": len(a), "a_only": n10, "b_only": n01, "n_discordant": n, "p_value": p}


def paired_bootstrap(
    a: Sequence[bool],
    b: Sequence[bool],
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of the rate difference ``mean(b) - mean(a)``.

    Pairs are resampled with replacement (numpy ``default_rng(seed)``), so the interval respects the
    pairing; the interval is the percentile interval at ``confidence``.
    """
    if len(a) != len(b):
        raise InputError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence={confidence} must lie strictly between 0 and 1")
    if n_resamples < 1:
        raise InputError(f"n_resamples={n_resamples} must be >= 1")
    n = len(a)
    if n == 0:
        return {"diff": None, "low": None, "high": None, "n": 0, "n_resamples": n_resamples, "seed": seed}
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - s)
        idx = rng.integers(0, n, size=(m, n))
        stats[s : s + m] = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return {
        "diff": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "n": n,
        "n_resamples": n_resamples,
        "seed": seed,
    }


def paired_outcomes(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    outcome: str = "attack_success",
    basis: str | None = None,
) -> tuple[list[str], list[bool], list[bool]]:
    """Align two runs' outcomes on the ids both have with a known outcome.

    Args:
        outcome: see :func:`vlsafe.evals.metrics.record_outcome`.
        basis: ASR basis; by default ``"unsafe"`` only if both runs have unsafe verdicts.
    """
    if basis is None:
        both = asr_basis(records_a) == "unsafe" and asr_basis(records_b) == "unsafe"
        basis = "unsafe" if both else "non_refusal"
    out_b = {str(r["id"]): record_outcome(r, outcome, basis) for r in records_b}
    ids, xa, xb = [], [], []
    for r in records_a:
        rid = str(r["id"])
        va, vb = record_outcome(r, outcome, basis), out_b.get(rid)
        if va is not None and vb is not None:
            ids.append(rid)
            xa.append(bool(va))
            xb.append(bool(vb))
    return ids, xa, xb


def compare_runs(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    outcome: str = "attack_success",
    n_resamples: int = 10000,
    seed: int = 0,
    kinds: Sequence[str] | None = ("harmful",),
) -> dict[str, Any]:
    """Paired comparison of run B against run A on shared ids (B - A).

    Args:
        kinds: restrict to records of these kinds (``None``: all).

    Returns:
        ``{"outcome", "n_pairs", "rate_a", "rate_b", "diff", "low", "high", "p_value", ...}``.
    """
    if kinds is not None:
        records_a = [r for r in records_a if r.get("kind") in kinds]
        records_b = [r for r in records_b if r.get("kind") in kinds]
    ids, xa, xb = paired_outcomes(records_a, records_b, outcome)
    mc = mcnemar_exact(xa, xb)
    bs = paired_bootstrap(xa, xb, n_resamples=n_resamples, seed=seed)
    n = len(ids)
    return {
        "outcome": outcome,
        "n_pairs": n,
        "rate_a": sum(xa) / n if n else None,
        "rate_b": sum(xb) / n if n else None,
        "diff": bs["diff"],
        "low": bs["low"],
        "high": bs["high"],
        "p_value": mc["p_value"],
        "a_only": mc["a_only"],
        "b_only": mc["b_only"],
        "n_resamples": n_resamples,
        "seed": seed,
    }

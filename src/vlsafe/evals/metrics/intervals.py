"""Binomial proportions with Wilson score intervals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Z95", "Rate", "rate", "rate_point", "wilson_interval"]

#: Two-sided 95% standard-normal quantile.
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials.

    ``center = (p + z^2/2n) / (1 + z^2/n)``, ``half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)``.
    With ``n == 0`` nothing is known and the interval is ``(0, 1)``.

    Raises:
        ValueError: ``k`` or ``n`` negative, or ``k > n``.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)  # exact bounds at the edges (no rounding residue)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` with its point estimate and Wilson 95% interval (``rate`` is None when n == 0)."""

    k: int
    n: int
    rate: float | None
    low: float
    high: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def complement(self) -> Rate:
        """The rate of the other outcome (``n - k`` of ``n``)."""
        return rate(self.n - self.k, self.n)


def rate(k: int, n: int, z: float = Z95) -> Rate:
    """Build a :class:`Rate` for ``k`` of ``n``."""
    low, high = wilson_interval(k, n, z)
    return Rate(k=k, n=n, rate=(k / n if n else None), low=low, high=high)


def rate_point(k: int | None, n: int | None) -> tuple[float, float, float] | None:
    """``(k / n, low, high)`` with the Wilson 95% interval, as plotted by the report's bar charts;
    ``None`` (no bar) when ``k`` is unknown or ``n`` is 0."""
    if k is None or not n:
        return None
    r = rate(k, n)
    assert r.rate is not None
    return r.rate, r.low, r.high

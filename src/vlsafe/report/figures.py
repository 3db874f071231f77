"""Matplotlib figures for reports (object API on the Agg canvas; no pyplot global state).

Every helper returns a :class:`matplotlib.figure.Figure`; :func:`save_png` writes it and
:func:`png_bytes` returns the PNG bytes for embedding.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlsafe.core.io import write_bytes_atomic

__all__ = ["bar_with_intervals", "line_curves", "png_bytes", "save_png", "scatter_with_intervals"]

Point = Mapping[str, Any] | Sequence[float | None] | float | None


def _triple(p: Point) -> tuple[float, float, float]:
    """(value, low, high) from a Rate dict, a (v, lo, hi) tuple, a bare float or None (-> NaN)."""
    if p is None:
        return (np.nan, np.nan, np.nan)
    if isinstance(p, Mapping):
        v = p.get("rate", p.get("diff", p.get("value")))
        lo, hi = p.get("low"), p.get("high")
    elif isinstance(p, (int, float)):
        v, lo, hi = float(p), None, None
    else:
        v, lo, hi = (list(p) + [None, None])[:3]
    if v is None:
        return (np.nan, np.nan, np.nan)
    return (float(v), float(v if lo is None else lo), float(v if hi is None else hi))


def _new(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def bar_with_intervals(
    labels: Sequence[str],
    series: Mapping[str, Sequence[Point]],
    title: str = "",
    ylabel: str = "rate",
    ylim: tuple[float, float] | None = (0.0, 1.05),
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Grouped bars with interval whiskers.

    Args:
        labels: x-axis groups (e.g. categories).
        series: name -> one point per label; a point is a Rate dict (``rate``/``low``/``high``), a
            paired-difference dict (``diff``/``low``/``high``), a ``(value, low, high)`` tuple, a bare
            value or ``None`` (no bar).
        ylim: y-axis limits; ``None`` for automatic (e.g. differences that can be negative).
    """
    n_groups, n_series = len(labels), max(1, len(series))
    width = 0.8 / n_series
    fig = _new(figsize or (max(5.0, 0.9 * n_groups * max(1, n_series) ** 0.5 + 2), 3.6))
    ax = fig.add_subplot()
    x = np.arange(n_groups)
    for i, (name, points) in enumerate(series.items()):
        if len(points) != n_groups:
            raise ValueError(f"series {name!r} has {len(points)} points for {n_groups} labels")
        vals = np.array([_triple(p) for p in points]).reshape(n_groups, 3)
        v, lo, hi = vals[:, 0], vals[:, 1], vals[:, 2]
        err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        ax.bar(x + (i - (n_series - 1) / 2) * width, np.nan_to_num(v), width, yerr=err, capsize=3, label=name)
    ax.set_xticks(
        x,
        [str(s) for s in labels],
        rotation=30 if n_groups > 4 else 0,
        ha="right" if n_groups > 4 else "center",
    )
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    else:
        ax.axhline(0.0, color="black", linewidth=0.8)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def line_curves(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    figsize: tuple[float, float] = (5.5, 3.6),
) -> Figure:
    """Line plot of several curves over a shared x axis, with optional shaded (low, high) bands."""
    fig = _new(figsize)
    ax = fig.add_subplot()
    for name, ys in curves.items():
        if len(ys) != len(x):
            raise ValueError(f"curve {name!r} has {len(ys)} points for {len(x)} x values")
        (line,) = ax.plot(x, ys, marker="o", markersize=3, label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def scatter_with_intervals(
    points: Mapping[str, tuple[Point, Point]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    lim: tuple[float, float] | None = (-0.02, 1.02),
    figsize: tuple[float, float] = (9.0, 5.0),
) -> Figure:
    """One marker per label at ``(x, y)`` with horizontal and vertical interval whiskers; the labels in a legend
    beside the axes (markers vary in shape and colour).

    Args:
        points: label -> ``(x, y)``; each a point as in :func:`bar_with_intervals` (a Rate dict, a
            ``(value, low, high)`` tuple or a bare value). A label whose x or y is missing (``None``) is left out.
        lim: the limits of both axes; ``None`` for automatic.

    Raises:
        ValueError: no label has both coordinates.
    """
    fig = _new(figsize)
    ax = fig.add_subplot()
    drawn = 0
    for label, (px, py) in points.items():
        (x, xlo, xhi), (y, ylo, yhi) = _triple(px), _triple(py)
        if np.isnan(x) or np.isnan(y):
            continue
        ax.errorbar([x], [y], xerr=[[x - xlo], [xhi - x]], yerr=[[y - ylo], [yhi - y]], capsize=3, markersize=7,
                    fmt="osD^v<>ph*"[drawn % 10], color=f"C{drawn % 10}", label=str(label))  # fmt: skip
        drawn += 1
    if not drawn:
        raise ValueError("scatter_with_intervals: no label has both an x and a y value")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if lim is not None:
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """PNG encoding of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` (parents created; written whole or not at all); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, png_bytes(fig, dpi))

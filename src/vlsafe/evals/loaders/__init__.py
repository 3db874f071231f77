"""Benchmark loaders: a registry of ``load(data_dir, *, split=None, limit=None) -> list[Sample]``.

File-based loaders read each benchmark's published layout (each loader's docstring gives the files it
expects and where the layout was checked; :mod:`vlsafe.evals.loaders.catalog` holds the same as data, for
``vlsafe benchmarks --describe``); built-in sets (``vlsafe.evals.builtin``) need no download by hand. A load
reports what it read and every fallback it took (:mod:`vlsafe.evals.loaders.provenance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlsafe.evals import builtin  # noqa: F401  (registers the built-in sets)
from vlsafe.evals.loaders import paired, safety_vl, text, utility  # noqa: F401  (register loaders)
from vlsafe.evals.loaders._registry import LOADERS, Loader
from vlsafe.evals.loaders.catalog import CATALOG, BenchmarkInfo, describe, format_description
from vlsafe.evals.loaders.provenance import LoadReport, image_source, images_summary, recording
from vlsafe.evals.sample import Sample


@dataclass(frozen=True)
class LoadedBenchmark:
    """The samples of a benchmark load and its :class:`LoadReport` (files read, fallbacks taken)."""

    samples: list[Sample]
    report: LoadReport


def load_benchmark_report(
    name: str,
    data_dir: Path | str | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    strict: bool = False,
) -> LoadedBenchmark:
    """Load benchmark ``name`` and report what the load used.

    Args:
        name: a registry name, e.g. "figstep", "strongreject".
        data_dir: the folder holding the benchmark's published files (built-in sets need none).
        split: the benchmark's split (see its loader).
        limit: keep the first ``limit`` samples.
        strict: any fallback (rendered images in place of missing published ones, missing image files, ...)
            raises :class:`~vlsafe.core.errors.InputError` instead of a warning.
    """
    with recording(name, split, data_dir, strict=strict) as report:
        samples = LOADERS.get(name)(data_dir, split=split, limit=limit)
    return LoadedBenchmark(samples, report)


def load_benchmark(
    name: str,
    data_dir: Path | str | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    strict: bool = False,
) -> list[Sample]:
    """Load benchmark ``name`` (a registry name, e.g. "mmsafetybench", "strongreject") as samples.

    ``strict`` turns any fallback the loader takes into an error (see :func:`load_benchmark_report`).
    """
    return load_benchmark_report(name, data_dir, split=split, limit=limit, strict=strict).samples


def benchmark_names() -> list[str]:
    """All registered benchmark names."""
    return LOADERS.names()


__all__ = [
    "CATALOG",
    "LOADERS",
    "BenchmarkInfo",
    "LoadReport",
    "LoadedBenchmark",
    "Loader",
    "benchmark_names",
    "describe",
    "format_description",
    "image_source",
    "images_summary",
    "load_benchmark",
    "load_benchmark_report",
]

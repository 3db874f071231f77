"""The benchmark-loader registry and the loader call signature."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from vlsafe.core.registry import Registry
from vlsafe.evals.sample import Sample


class Loader(Protocol):
    """``load(data_dir, *, split=None, limit=None) -> list[Sample]``.

    ``data_dir`` is the folder holding the benchmark's published files; built-in sets accept ``None``
    (they fetch or ship their data). ``split`` picks a subset whose meaning is benchmark-specific and
    documented on each loader; ``limit`` keeps the first ``limit`` samples.
    """

    def __call__(
        self, data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
    ) -> list[Sample]: ...


#: benchmark name -> loader; packages add loaders through the entry-point group ``vlsafe.benchmarks``
LOADERS: Registry[Loader] = Registry("benchmark", entry_points="vlsafe.benchmarks")

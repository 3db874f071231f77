"""What a benchmark load used: the data files it read, the images it shows, and every fallback it took.

A loader that substitutes something for the benchmark as published -- renders typographic images where the
published ones are missing, goes on while image files are missing, reads another file than the one the split
names -- calls :func:`fallback`. That logs one warning line and records it in the :class:`LoadReport` of the
current load; under ``strict`` the same line is raised as an :class:`~vlsafe.core.errors.InputError`
instead, so a strict run never reports numbers on data other than the published benchmark.

Where the images of a run come from is summarised per effective image setting (:func:`image_source`):
``published`` (the benchmark's own image files), ``rendered`` (typographic attacks drawn by vlsafe),
``generated`` (blank, mean-colour or noise images in place of the benchmark's) or ``none`` (text only).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.evals.sample import ImageSetting

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SOURCES",
    "LoadReport",
    "fallback",
    "image_source",
    "images_summary",
    "read_file",
    "recording",
]

#: Where the images a sample shows come from, by image setting.
IMAGE_SOURCES: dict[ImageSetting, str] = {
    ImageSetting.PROVIDED: "published",
    ImageSetting.FIGSTEP: "rendered",
    ImageSetting.MMSB_TYPO: "rendered",
    ImageSetting.MMSB_SD_TYPO: "rendered",
    ImageSetting.BLANK: "generated",
    ImageSetting.MEAN: "generated",
    ImageSetting.NOISE: "generated",
    ImageSetting.NONE: "none",
    ImageSetting.CAPTION: "none",
}


def image_source(setting: ImageSetting | str) -> str:
    """``published``, ``rendered``, ``generated`` or ``none`` for one image setting."""
    return IMAGE_SOURCES[ImageSetting(setting)]


def images_summary(settings: Iterable[ImageSetting | str]) -> dict[str, Any]:
    """``{"images": <source or "mixed">, "image_counts": {source: n}}`` over the settings of a run's samples."""
    counts = Counter(image_source(s) for s in settings)
    images = next(iter(counts)) if len(counts) == 1 else ("mixed" if counts else "none")
    return {"images": images, "image_counts": dict(sorted(counts.items()))}


@dataclass
class LoadReport:
    """The provenance of one benchmark load.

    Attributes:
        benchmark: registry name of the benchmark.
        split: the split asked for (``None``: the loader's default).
        data_dir: the data directory given to the loader.
        strict: fallbacks raise instead of warning.
        quiet: fallbacks are recorded without a warning (for callers that print the report themselves).
        files: data files read, relative to ``data_dir`` where they lie under it.
        fallbacks: one line per substitution the loader made (see :func:`fallback`).
    """

    benchmark: str
    split: str | None = None
    data_dir: str | None = None
    strict: bool = False
    quiet: bool = False
    files: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)

    def to_json(self, settings: Iterable[ImageSetting | str] = ()) -> dict[str, Any]:
        """The report as a JSON object, with :func:`images_summary` of ``settings`` (the samples' effective
        image settings)."""
        return {
            "benchmark": self.benchmark,
            "split": self.split,
            "data_dir": self.data_dir,
            "files": list(self.files),
            **images_summary(settings),
            "fallbacks": list(self.fallbacks),
        }


_CURRENT: ContextVar[LoadReport | None] = ContextVar("vlsafe_load_report", default=None)


@contextmanager
def recording(
    benchmark: str,
    split: str | None = None,
    data_dir: Path | str | None = None,
    *,
    strict: bool = False,
    quiet: bool = False,
) -> Iterator[LoadReport]:
    """Collect the files and fallbacks of the loads made inside the block into a :class:`LoadReport`."""
    report = LoadReport(benchmark, split, None if data_dir is None else str(data_dir), strict, quiet)
    token = _CURRENT.set(report)
    try:
        yield report
    finally:
        _CURRENT.reset(token)


def read_file(path: Path, root: Path | None = None) -> None:
    """Record that the current load reads ``path`` (shown relative to ``root`` when it lies under it)."""
    report = _CURRENT.get()
    if report is None:
        return
    shown = str(path)
    if root is not None:
        try:
            shown = path.relative_to(root).as_posix()
        except ValueError:
            pass
    if shown not in report.files:
        report.files.append(shown)


def fallback(benchmark: str, message: str) -> None:
    """Report a substitution for the published benchmark: one warning line, recorded in the current load.

    Raises:
        InputError: the current load is strict; the message is the warning line.
    """
    line = f"{benchmark}: {' '.join(message.split())}"
    report = _CURRENT.get()
    if report is not None and report.strict:
        raise InputError(f"{line} [strict: a fallback is an error; drop --strict to accept it]")
    if report is None or not report.quiet:
        logger.warning("%s", line)
    if report is not None and line not in report.fallbacks:
        report.fallbacks.append(line)

"""Output folders that appear whole or not at all: built beside their final place, then renamed into it.

:func:`staged_dir` yields a hidden staging folder in the same parent as the target (``.<name>.partial-<pid>-<n>``).
When the block ends without error the staging folder becomes the target by ``os.rename``; a previous target
(``overwrite``) is first moved aside to ``.<name>.old-<pid>-<n>`` and removed after the swap. When the block
fails, or is interrupted, the staging folder is removed and the target is untouched.

A process killed outright (``kill -9``) cannot clean up: its staging folder stays, hidden, beside the target,
which still holds the old output (or does not exist). The next :func:`staged_dir` on that target removes
folders that dead processes left, and when the kill fell between the two renames of a swap (the target is
missing, the previous output is in an ``.old-`` folder), it moves the previous output back first. So a
reader of the target sees the old output or the new one, never a part of either.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from vlsafe.core.errors import ConfigError
from vlsafe.core.io import fsync_dir

__all__ = ["pid_alive", "staged_dir"]

logger = logging.getLogger(__name__)

_COUNTER = itertools.count()


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _leftovers(target: Path) -> list[tuple[str, int, Path]]:
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(partial|old)-(\d+)-\d+$")
    out: list[tuple[str, int, Path]] = []
    if not target.parent.is_dir():
        return out
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_dir():
            out.append((m.group(1), int(m.group(2)), entry))
    return out


def _recover(target: Path) -> None:
    """Remove what dead processes left beside ``target``; restore a previous output a swap left aside."""
    for kind, pid, path in sorted(_leftovers(target), key=lambda x: x[0] == "partial"):
        if pid_alive(pid):
            continue
        if kind == "old" and not target.exists():
            logger.warning("restoring %s from %s (a swap into it was interrupted)", target, path.name)
            os.rename(path, target)
            continue
        logger.warning("removing %s, left by process %d that has ended", path, pid)
        shutil.rmtree(path, ignore_errors=True)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def staged_dir(target: str | Path, *, overwrite: bool = False, what: str = "output folder") -> Iterator[Path]:
    """Yield a staging folder to build ``target`` in; it replaces ``target`` when the block succeeds.

    Args:
        target: the output folder.
        overwrite: replace an existing, non-empty ``target`` (it is kept until the new one is complete).
        what: what the folder is, for messages.

    Raises:
        ConfigError: ``target`` is a file, or a non-empty folder without ``overwrite``.
    """
    target = Path(target)
    _recover(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {str(target)!r} is a file; it must be a folder")
    if target.exists() and not overwrite and not _is_empty_dir(target):
        raise ConfigError(f"{what} {str(target)!r} is not empty (pass overwrite=True / --overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{next(_COUNTER)}"
    staging = target.parent / f".{target.name}.partial-{tag}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if _is_empty_dir(target):
            target.rmdir()
        elif target.exists():
            old = target.parent / f".{target.name}.old-{tag}"
            os.rename(target, old)
        os.rename(staging, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

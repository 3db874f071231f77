"""Output folders that appear whole or not at all: built beside their final place, then renamed into it.

:func:`staged_dir` yields a hidden staging folder in the same parent as the target (``.<name>.partial-<pid>-<n>``).
When the block ends without error the staging folder becomes the target: by ``os.rename`` when there is no
previous target, else (``overwrite``) by exchanging the two folders in one atomic ``renameat2(RENAME_EXCHANGE)``
call, after which the previous output, now under the staging name, is removed. When the block fails, or is
interrupted, the staging folder is removed and the target is untouched.

A process killed outright (``kill -9``) cannot clean up: its staging folder stays, hidden, beside the target,
which holds the old output or the new one, complete. The next :func:`staged_dir` on that target removes the
folders that dead processes left. Where the file system cannot exchange two folders, the previous target is
moved aside to ``.<name>.old-<pid>-<n>`` and the staging folder renamed into place; a kill between those two
renames leaves the target missing for a moment, and the next :func:`staged_dir` moves the previous output back
before anything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); ``False`` where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), str(b))


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
        if target.exists() and _exchange(staging, target):
            old = staging  # the previous output, now under the staging name
        else:
            if target.exists():
                old = target.parent / f".{target.name}.old-{tag}"
                os.rename(target, old)
            os.rename(staging, target)
    except BaseException:
        if old is not None and old != staging and not target.exists():
            os.rename(old, target)
        if old != staging:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""One writer per output folder: a lock file that a second writer finds taken, and that a dead writer leaves free.

:class:`FolderLock` holds an exclusive ``flock`` on ``<folder>/.vlsafe.lock``; the file records the holder's
process id, host and command so that the refusal names them. The kernel drops the lock when the holding
process ends in any way (``kill -9`` included), so a lock left by a process that is gone never blocks anyone;
the file itself is removed on release. The lock is per open file, so two writers in one process exclude each
other too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

from vlsafe.core.errors import ConfigError

__all__ = ["LOCK_FILE", "FolderLock"]

LOCK_FILE = ".vlsafe.lock"


class FolderLock:
    """An exclusive lock on an output folder, as a context manager.

    Args:
        folder: the folder (created when the lock is taken; removed again on release when the lock created it
            and it is still empty, so a run that failed before writing anything leaves nothing behind).
        what: what the folder is, for the refusal message ("run directory").

    Raises:
        ConfigError: on entry, when another live writer holds the lock (the message names its process).
    """

    def __init__(self, folder: str | Path, what: str = "output folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def _make_folder(self) -> None:
        missing = []
        node = self.folder
        while not node.exists():
            missing.append(node)
            if node.parent == node:
                break
            node = node.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first

    def acquire(self) -> FolderLock:
        self._make_folder()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                self._remove_created()
                raise ConfigError(
                    f"{self.what} {str(self.folder)!r} is in use by another writer ({holder}); wait for it to "
                    f"finish or use another folder (a lock whose process has ended is free)"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The previous holder may have removed the file between our open and our lock: lock the file that
            # is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first; stops at the first folder that holds something
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "process unknown"
    command = f", {info['command']!r}" if info.get("command") else ""
    return f"process {info['pid']} on {info.get('host', '?')}{command}"

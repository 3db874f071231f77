"""Content digests of files and JSON values, for identifying runs by what they read rather than by path text.

:func:`file_digest` hashes a file's bytes (SHA-256). A file is read once per process and state: the digest is
remembered under the file's *stat key* (device, inode, size, modification and change times). The change time
is set by the kernel on every write, rename or metadata change and cannot be set back by a user, so a file
rewritten in place, replaced, or copied over gets a new key and is read again. A caller may pass digests it
stored earlier (``known``: stat key -> digest), which lets a later process skip reading files that did not
change.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "json_digest", "stat_key"]

_CACHE: dict[str, str] = {}
_LOCK = threading.Lock()
_BLOCK = 1 << 22


def stat_key(path: str | Path) -> str:
    """``realpath|dev|ino|size|mtime_ns|ctime_ns`` of ``path`` (raises ``OSError`` if it cannot be stat'ed)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def file_digest(path: str | Path, known: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(sha256 hex digest, stat key)`` of the file at ``path``.

    Args:
        path: the file.
        known: digests stored earlier by stat key; a matching key is trusted instead of reading the file.

    Raises:
        OSError: the file cannot be read.
    """
    key = stat_key(path)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is None and known is not None:
        cached = known.get(key)
    if cached is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                h.update(block)
        cached = h.hexdigest()
        if stat_key(path) != key:  # written while being read: do not remember a digest of a moving target
            return cached, ""
    with _LOCK:
        _CACHE[key] = cached
    return cached, key


def json_digest(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``value`` as canonical JSON (sorted keys)."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]

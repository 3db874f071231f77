"""File reading and writing shared by every layer: JSON lines, JSON documents, atomic writes.

Readers raise :class:`~vlsafe.core.errors.InputError` naming ``file:line`` and the broken rule. JSON-lines
readers skip blank lines and yield ``(line number, object)`` with 1-based physical line numbers.

Append-only files (a run directory's ``samples.jsonl``, written one flushed line per record) can end in a
line that a crash cut short. ``torn_tail=True`` reads them as the writer left them: an unterminated last
line is skipped, and so is a malformed last non-blank line of what remains, each with a warning instead of
an error; a malformed line anywhere else is still an error.

Writers replace a file atomically: the content goes to a temporary file in the same folder, is flushed to
disk, then ``os.replace`` puts it in place, so a reader sees the old file or the new one, never a half-written
one. :func:`atomic_path` gives the same guarantee to writers that take a path (``safetensors.save_file``, a
figure's ``savefig``). Temporary files are named ``.<name>.<pid>.<thread>.tmp``; one a killed process left
behind is never read as the artefact and is replaced by the next write.

:func:`check_writable` tells, before any compute, whether an output path can be created, without creating it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError, OutputError

__all__ = [
    "atomic_path",
    "check_writable",
    "fsync_dir",
    "iter_json_rows",
    "iter_jsonl",
    "read_json",
    "read_jsonl",
    "read_text_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)


def _existing(path: str | Path, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{what} {str(file)!r} does not exist")
    return file


def _parse_line(file: Path, number: int, raw: bytes, required: Sequence[str]) -> dict[str, Any]:
    """The JSON object on one line; ``InputError`` naming ``file:number`` otherwise."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}:{number}: not valid UTF-8 ({exc.reason})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{file}:{number}: expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise InputError(f"{file}:{number}: the object lacks the key(s) {missing}")
    return obj


def iter_jsonl(
    path: str | Path,
    what: str = "JSON-lines file",
    *,
    torn_tail: bool = False,
    required: Sequence[str] = (),
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON-lines file.

    Args:
        path: the file.
        what: what the file is, for the missing-file message ("training data", "retrieval corpus").
        torn_tail: read an append-only file whose last write may have been cut short: an unterminated
            last line is skipped, then a malformed last non-blank line of the rest, each with a warning.
        required: keys every object must hold (a line lacking one is malformed).

    Raises:
        InputError: the file does not exist, or a line is not valid JSON, not a JSON object, or lacks a
            required key (the message names ``file:line``).
    """
    file = _existing(path, what)
    with file.open("rb") as fh:
        pending: tuple[int, bytes] | None = None  # the last non-blank line, parsed once another follows
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if torn_tail and not raw.endswith(b"\n"):  # only the last line can lack its newline
                logger.warning("ignoring the unterminated final line %d of %s", number, file)
                break
            if pending is not None:
                yield pending[0], _parse_line(file, *pending, required)
            pending = (number, raw)
    if pending is None:
        return
    number, raw = pending
    try:
        obj = _parse_line(file, number, raw, required)
    except InputError:
        if not torn_tail:
            raise
        logger.warning("ignoring the malformed final line %d of %s", number, file)
        return
    yield number, obj


def read_jsonl(
    path: str | Path,
    what: str = "JSON-lines file",
    *,
    torn_tail: bool = False,
    required: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, in order (see :func:`iter_jsonl` for the arguments and errors)."""
    return [obj for _, obj in iter_jsonl(path, what, torn_tail=torn_tail, required=required)]


def iter_json_rows(path: str | Path, what: str = "data file") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each element of a JSON array file or each line of a JSON-lines file.

    A file whose first non-blank character is ``[`` is one JSON array (as published datasets ship their
    ``train.json``); its elements are decoded one at a time and numbered by the line they start on. Any
    other file is read as JSON lines (:func:`iter_jsonl`).

    Raises:
        InputError: the file does not exist, is malformed, or an element is not a JSON object (the message
            names ``file:line``).
    """
    file = _existing(path, what)
    if not _is_array(file):
        yield from iter_jsonl(file, what)
        return
    text = read_text_file(file, what)
    decoder = json.JSONDecoder()
    line, counted = 1, 0  # line number at offset ``counted``

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos

    pos = skip(text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        start = line_at(pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise InputError(f"{file}:{start}: expected a JSON object, got {type(value).__name__}")
        yield start, value
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise InputError(f"{file}:{line_at(pos)}: expected ',' or ']' between array elements")


def _is_array(file: Path) -> bool:
    """Whether the first non-blank character of ``file`` is ``[``."""
    with file.open("rb") as fh:
        while block := fh.read(1 << 16):
            head = block.lstrip()
            if head:
                return head.startswith(b"[")
    return False


def read_text_file(path: str | Path, what: str = "text file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        InputError: the file does not exist or is not valid UTF-8 (the message names it and the byte).
    """
    file = _existing(path, what)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {str(file)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON document in ``path``.

    Raises:
        InputError: the file does not exist or is not valid JSON (the message names ``file:line``).
    """
    file = _existing(path, what)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {str(file)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _tmp_name(file: Path) -> Path:
    return file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without error.

    The folder is created. On success the temporary file is synced and ``os.replace`` puts it in place; on any
    error (or interrupt) it is removed and ``path`` keeps its old content.

    Example::

        with atomic_path(out / "vector.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(file)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(errno.ENOENT, "the writer created no file", str(tmp))
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(file.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically, creating its folder; returns the path."""
    file = Path(path)
    with atomic_path(file) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
    return file


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically, creating its folder; returns the path.

    The text is written to a temporary file beside ``path`` (same folder, so the rename never crosses file
    systems), flushed and synced, then renamed over ``path`` with ``os.replace``.
    """
    file = Path(path)
    with atomic_path(file) as tmp, tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
    return file


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``data`` as JSON and a final newline (values JSON cannot hold are written as
    ``str``); atomic."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> Path:
    """Replace ``path`` with ``rows`` as JSON lines, one per row, each ending in a newline; atomic."""
    text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    return write_text_atomic(path, text)


def check_writable(path: str | Path, what: str = "output", *, kind: str = "dir") -> Path:
    """Refuse, before any compute, an output ``path`` that cannot be written; creates nothing.

    ``kind`` is ``"dir"`` (a folder to create or fill) or ``"file"``. The nearest existing folder on the way to
    ``path`` must be a folder in which a file can be created (tried with a temporary file, removed at once), and
    ``path`` itself, when it exists, must be of the right kind.

    Raises:
        OutputError: naming the path and what is wrong with it.
    """
    target = Path(path).expanduser()
    if target.exists():
        if kind == "dir" and not target.is_dir():
            raise OutputError(f"{what} {str(path)!r} is a file; it must be a folder (or not exist yet)")
        if kind == "file" and target.is_dir():
            raise OutputError(f"{what} {str(path)!r} is a folder; it must be a file path")
    probe_dir = target if kind == "dir" and target.is_dir() else target.parent
    ancestor = probe_dir
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{what} {str(path)!r} cannot be created: {str(ancestor)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vlsafe-write-check-", dir=ancestor)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{what} {str(path)!r} cannot be written: {reason} in {str(ancestor)!r}") from None
    os.close(fd)
    os.unlink(probe)
    return target

"""Streaming safetensors I/O: read element ranges of one tensor, write sharded checkpoints tensor by tensor.

The reader parses each shard's header once and reads byte ranges with ``os.pread`` into fresh
buffers, so memory holds only what was asked for (no memory map grows the resident set). The writer
lays out every shard's header from the planned names, dtypes and shapes before any data is written,
then appends tensor bytes chunk by chunk; a shard is never held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from vlsafe.core.errors import InputError
from vlsafe.core.io import write_json_atomic
from vlsafe.models.fingerprint import WEIGHT_SUFFIXES
from vlsafe.models.references import resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["DTYPES", "CheckpointReader", "ShardedWriter", "TensorInfo"]

#: safetensors dtype codes and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: shard file, dtype, shape and absolute byte offsets of its data."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _read_header(file: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares; ``InputError`` naming the file when its header is not valid
    (not JSON, entries without dtype / shape / offsets, offsets that disagree with the shape or run past the end
    of the file)."""
    file_size = file.stat().st_size
    with file.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise InputError(f"{file} is not a safetensors file (shorter than its 8-byte header length)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000 or 8 + size > file_size:
            raise InputError(
                f"{file} is not a safetensors file or is truncated (header length {size} bytes, file {file_size} bytes)"
            )
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{file} is not a safetensors file (its header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{file} is not a safetensors file (its header is not a JSON object)")
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_code = entry["dtype"]
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = tuple(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{file}: the header entry of tensor {name!r} is malformed: {str(entry)[:120]}") from None
        if dtype_code not in DTYPES:
            raise InputError(f"tensor {name!r} in {file} has dtype {dtype_code}, which vlsafe cannot merge")
        info = TensorInfo(file, DTYPES[dtype_code], shape, 8 + size + begin, 8 + size + end)
        if begin < 0 or end - begin != info.numel * info.dtype.itemsize or info.end > file_size:
            raise InputError(
                f"{file} is corrupt or truncated: tensor {name!r} ({dtype_code} {list(shape)}) is declared at bytes "
                f"{begin}..{end} of the data, but the file holds {file_size - 8 - size} data bytes"
            )
        out[name] = info
    return out


class CheckpointReader:
    """Reads tensors (or flat element ranges of them) from a safetensors checkpoint, one at a time.

    Args:
        ref: local directory, single ``.safetensors`` file, or hub id.
    """

    def __init__(self, ref: str | Path) -> None:
        self.ref = str(ref)
        self.path = resolve_checkpoint(ref)
        files = [self.path] if self.path.is_file() else sorted(self.path.glob("*.safetensors"))
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in _read_header(file).items():
                if name in self.tensors:
                    raise InputError(f"tensor {name!r} appears in two shards of {self.ref}: {info.file.name}")
                self.tensors[name] = info
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    @property
    def dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise InputError(f"tensor {name!r} is missing from checkpoint {self.ref}") from None

    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Flat elements ``[start, stop)`` of tensor ``name`` in its stored dtype (a 1-D tensor).

        Args:
            name: tensor name.
            start: first flat element.
            stop: end element (default: the tensor's end).
            out: optional contiguous uint8 buffer of at least the range's bytes, read into (the result is
                a view of it); without it a fresh buffer is allocated. Safe to call from several threads.
        """
        info = self.info(name)
        stop = info.numel if stop is None else stop
        item = info.dtype.itemsize
        nbytes = (stop - start) * item
        buf = torch.empty(nbytes, dtype=torch.uint8) if out is None else out[:nbytes]
        fd = self._fds.get(info.file)
        if fd is None:
            with self._lock:
                fd = self._fds.get(info.file)
                if fd is None:
                    fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        view = memoryview(buf.numpy())  # type: ignore[arg-type]
        offset, done = info.start + start * item, 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise InputError(f"{info.file} ends inside tensor {name!r} (truncated checkpoint)")
            done += got
        return buf.view(info.dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_layout(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int) -> list[list[int]]:
    """Group entry indices (in order) into shards of at most ``max_bytes`` (a larger tensor gets its own)."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, dtype, shape) in enumerate(entries):
        nbytes = torch.empty((), dtype=dtype).element_size() * _numel(shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class ShardedWriter:
    """Writes planned tensors, in plan order, into sharded safetensors files plus an index.

    Call :meth:`write` with consecutive chunks of each tensor's flattened data, in the order of
    ``entries``; :meth:`close` checks that every byte was written and writes the index.

    Args:
        out_dir: output directory (created).
        entries: ``(name, dtype, shape)`` of every output tensor, in write order.
        max_shard_bytes: shard size limit.
        metadata: string metadata stored in every shard header.
    """

    def __init__(
        self,
        out_dir: Path,
        entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
        max_shard_bytes: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.entries = entries
        self.shards = shard_layout(entries, max_shard_bytes)
        n = len(self.shards)
        self.files = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.metadata = {"format": "pt", **(metadata or {})}
        self._shard_of = {i: s for s, idx in enumerate(self.shards) for i in idx}
        self._cur = -1
        self._fh: BinaryIO | None = None
        self._left = 0
        self._next = 0
        self.total_bytes = 0
        self._nbytes = [torch.empty((), dtype=d).element_size() * _numel(sh) for _, d, sh in entries]
        self._entry_start: list[int] = [0] * len(entries)  # byte offset inside its shard's data
        for idx in self.shards:
            pos = 0
            for i in idx:
                self._entry_start[i] = pos
                pos += self._nbytes[i]
        self._fds: list[int] = []  # random-access mode (open_all)
        self._data_start: list[int] = []
        self._remaining: list[int] = []
        self._lock = threading.Lock()

    def _header(self, s: int) -> tuple[bytes, int]:
        """Shard ``s``'s length-prefixed header and its data bytes."""
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for i in self.shards[s]:
            name, dtype, shape = self.entries[i]
            nbytes = self._nbytes[i]
            header[name] = {
                "dtype": _CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw, offset

    def _open_shard(self, s: int) -> None:
        self._finish_shard()
        head, data_bytes = self._header(s)
        fh = (self.out_dir / self.files[s]).open("wb")
        fh.write(head)
        self._fh, self._cur = fh, s
        self.total_bytes += data_bytes

    def open_all(self) -> None:
        """Switch to random access: write every shard's header now and keep the files open for :meth:`pwrite`."""
        if self._next or self._fds:
            raise RuntimeError("open_all() must come first and only once")
        for s in range(len(self.shards)):
            head, data_bytes = self._header(s)
            fd = os.open(self.out_dir / self.files[s], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            self._fds.append(fd)
            _pwrite_all(fd, memoryview(head), 0)
            self._data_start.append(len(head))
            self.total_bytes += data_bytes
        self._remaining = list(self._nbytes)

    def pwrite(self, index: int, offset: int, data: torch.Tensor) -> None:
        """Write ``data`` (the planned dtype) at byte ``offset`` of entry ``index``'s data.

        Chunks may come in any order and from several threads (after :meth:`open_all`).
        """
        name, dtype, _ = self.entries[index]
        if data.dtype != dtype:
            raise RuntimeError(f"chunk of {name!r} is {data.dtype}, planned {dtype}")
        raw = data.contiguous().reshape(-1).view(torch.uint8)
        if offset < 0 or offset + raw.numel() > self._nbytes[index]:
            raise RuntimeError(f"chunk at byte {offset} overflows tensor {name!r}")
        s = self._shard_of[index]
        pos = self._data_start[s] + self._entry_start[index] + offset
        _pwrite_all(self._fds[s], memoryview(raw.numpy()), pos)  # type: ignore[arg-type]
        with self._lock:
            self._remaining[index] -= raw.numel()

    def _finish_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def begin(self, name: str) -> None:
        """Start the next tensor; ``name`` must be the next planned entry."""
        if self._left:
            raise RuntimeError(f"tensor {self.entries[self._next - 1][0]!r} is {self._left} bytes short")
        exp_name, dtype, shape = self.entries[self._next]
        if name != exp_name:
            raise RuntimeError(f"writer expected tensor {exp_name!r} next, got {name!r}")
        if self._shard_of[self._next] != self._cur:
            self._open_shard(self._shard_of[self._next])
        self._left = torch.empty((), dtype=dtype).element_size() * _numel(shape)
        self._dtype = dtype
        self._next += 1

    def write(self, chunk: torch.Tensor) -> None:
        """Append a chunk of the current tensor's flattened data (cast to its planned dtype)."""
        data = chunk.to(self._dtype).contiguous().reshape(-1).view(torch.uint8)
        if data.numel() > self._left:
            raise RuntimeError(f"chunk overflows tensor {self.entries[self._next - 1][0]!r}")
        assert self._fh is not None
        self._fh.write(memoryview(data.numpy()))  # type: ignore[arg-type]
        self._left -= data.numel()

    def abort(self) -> None:
        """Close the files after a failure (no completeness check, no index)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._finish_shard()

    def close(self) -> None:
        """Finish the last shard and write ``model.safetensors.index.json`` when there are several."""
        if self._fds:
            short = [self.entries[i][0] for i, left in enumerate(self._remaining) if left]
            for fd in self._fds:
                os.close(fd)
            self._fds = []
            if short:
                raise RuntimeError(f"writer closed with {len(short)} tensor(s) incomplete, e.g. {short[0]!r}")
        elif self._left or self._next != len(self.entries):
            raise RuntimeError(f"writer closed after {self._next}/{len(self.entries)} tensors")
        self._finish_shard()
        if len(self.files) > 1:
            weight_map = {self.entries[i][0]: self.files[s] for s, idx in enumerate(self.shards) for i in idx}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            write_json_atomic(self.out_dir / "model.safetensors.index.json", index)
        logger.info("wrote %d tensors in %d shard(s) to %s", len(self.entries), len(self.files), self.out_dir)


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)


def is_weight_file(name: str) -> bool:
    """Whether a file name is a weight file (never copied from a template checkpoint)."""
    return name.endswith(WEIGHT_SUFFIXES) or name in (
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    )

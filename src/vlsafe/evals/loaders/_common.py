"""Shared reading helpers for benchmark loaders: file checks, row parsing, error messages."""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlsafe.core.errors import InputError
from vlsafe.core.io import iter_json_rows, iter_jsonl
from vlsafe.core.paths import check_relative_path
from vlsafe.evals.loaders.provenance import fallback, read_file
from vlsafe.evals.sample import Sample

logger = logging.getLogger(__name__)

#: Field size cap while a benchmark CSV is read: some hold long context strings, beyond the csv module's
#: default of 128 KiB.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


def require_dir(data_dir: Path | str | None, benchmark: str, expected: str) -> Path:
    """Return ``data_dir`` as a Path, or raise ``InputError`` saying which files the benchmark expects."""
    if data_dir is None:
        raise InputError(f"benchmark {benchmark!r} needs a data directory holding {expected}; none was given")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise InputError(
            f"data directory {str(path)!r} for benchmark {benchmark!r} does not exist; expected it to hold {expected}"
        )
    return path


def find_file(data_dir: Path, candidates: list[str], benchmark: str) -> Path:
    """Return the first of ``candidates`` (paths relative to ``data_dir``) that exists; the load records it."""
    for name in candidates:
        path = data_dir / name
        if path.is_file():
            read_file(path, data_dir)
            return path
    wanted = " or ".join(repr(c) for c in candidates)
    raise InputError(f"benchmark {benchmark!r}: none of {wanted} found in data directory {str(data_dir)!r}")


def relative_image(path: str, where: str) -> str:
    """Validate an image path from a data file; ``where`` names the file and line for the error."""
    try:
        return check_relative_path(str(path))
    except ValueError as err:
        raise InputError(f"{where}: {err}") from None


def make_sample(where: str, **fields: Any) -> Sample:
    """Build a ``Sample``, turning validation failures into an ``InputError`` naming ``where``."""
    image = fields.get("image")
    if image is not None:
        fields["image"] = relative_image(image, where)
    try:
        return Sample(**fields)
    except ValidationError as err:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'sample'}: {e['msg']}" for e in err.errors()
        )
        raise InputError(f"{where}: invalid sample ({msgs})") from None


def field(row: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> Any:
    """Return ``row[key]``; a missing or empty value is an ``InputError`` naming ``where``."""
    if key not in row or row[key] is None:
        raise InputError(f"{where}: missing field {key!r} (fields present: {sorted(row)})")
    value = row[key]
    if not allow_empty and isinstance(value, str) and not value.strip():
        raise InputError(f"{where}: field {key!r} is empty")
    return value


def iter_csv(
    path: Path, required: list[str], *, delimiter: str = ","
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(where, row)`` for each data row; checks the header holds ``required`` columns.

    ``where`` is ``"<file>:<line>"`` with the physical line the row starts on. The file is read with the
    csv module's field size cap raised to :data:`CSV_FIELD_LIMIT`; the process-wide cap is restored
    before the first row is yielded.
    """
    saved = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            rows: list[tuple[int, dict[str, str]]] = []
            start = reader.line_num + 1
            for row in reader:
                rows.append((start, row))
                start = reader.line_num + 1
    finally:
        csv.field_size_limit(saved)
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}:1: header lacks column(s) {missing}; found {header}")
    for line, row in rows:
        where = f"{path}:{line}"
        if None in row or any(v is None for v in row.values()):
            n = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])  # type: ignore[call-overload]
            raise InputError(f"{where}: row has {n} fields where the header has {len(header)}")
        yield where, row


def json_rows(path: Path, *, arrays: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, object)`` for each object of a JSON-lines file or, with ``arrays``, a JSON array file.

    ``where`` is ``"<file>:<line>"`` (the line an object starts on). Parsing and its errors are
    :func:`vlsafe.core.io.iter_json_rows` / :func:`vlsafe.core.io.iter_jsonl`.
    """
    rows = iter_json_rows(path) if arrays else iter_jsonl(path)
    for line, obj in rows:
        yield f"{path}:{line}", obj


def finish(
    samples: list[Sample], benchmark: str, limit: int | None, data_dir: Path | None = None
) -> list[Sample]:
    """Apply ``limit``, check ids are unique and report missing image files as a fallback.

    Samples whose image file is missing fail at generation time (an error record each); the load says how
    many are missing in one warning line (an error under ``strict``).
    """
    if limit is not None:
        if limit < 0:
            raise InputError(f"limit must be >= 0, got {limit}")
        samples = samples[:limit]
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise InputError(f"benchmark {benchmark!r}: sample id {s.id!r} occurs more than once")
        seen.add(s.id)
    if data_dir is not None:
        shown = [s.image for s in samples if s.image is not None]
        missing = [image for image in shown if not (data_dir / image).is_file()]
        if missing:
            fallback(
                benchmark,
                f"{len(missing)} of {len(shown)} image files are missing under {data_dir} (first: {missing[0]}); "
                "those samples will be recorded as errors",
            )
    logger.info("loaded %d samples from %s", len(samples), benchmark)
    return samples


def truthy(value: Any) -> bool:
    """Read a CSV/JSON boolean ("True", "true", "1", True)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "y", "t")

"""Inputs of the analyses: query items (text + image + caption) and prompt lists, from files or benchmarks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from vlsafe.core.errors import InputError
from vlsafe.core.io import iter_jsonl, read_text_file
from vlsafe.core.paths import check_relative_path
from vlsafe.evals import load_benchmark
from vlsafe.models import InputItem

T = TypeVar("T")


def batched(seq: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``seq`` of at most ``size`` elements."""
    if size < 1:
        raise InputError(f"batch_size={size} must be >= 1")
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def as_items(items: Sequence[Any]) -> list[InputItem]:
    """Normalise strings, ``{"text", "image", "caption"}`` dicts and ``InputItem`` s to ``InputItem`` s."""
    out: list[InputItem] = []
    for i, item in enumerate(items):
        if isinstance(item, InputItem):
            out.append(item)
        elif isinstance(item, str):
            out.append(InputItem(item))
        elif isinstance(item, dict) and "text" in item:
            out.append(InputItem(item["text"], item.get("image"), item.get("caption")))
        else:
            raise InputError(
                f"item {i} must be a string, a dict with 'text', or an InputItem; got {item!r:.80}"
            )
    if not out:
        raise InputError("no items: give at least one query")
    return out


def load_items(
    source: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[InputItem]:
    """Load query items from a file or a benchmark.

    Args:
        source: a ``.jsonl`` file (objects with ``text`` and optional ``image`` -- a path relative to the
            file's folder that stays inside it, like the benchmark loaders' image paths -- and ``caption``), a
            ``.txt`` file (one query per line), or a benchmark name of :func:`vlsafe.evals.load_benchmark`
            (images resolved against ``data_dir``).
        data_dir, split, limit: passed to the benchmark loader; ``limit`` (>= 1) also cuts files.

    Raises:
        InputError: a missing or malformed file, an image path that is absolute, contains ``..`` or resolves
            outside the file's folder, a ``limit`` below 1, or no queries.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit={limit!r} must be a whole number >= 1 (or omitted for all queries)")
    path = Path(source)
    if path.is_file():
        if path.suffix == ".jsonl":
            items = []
            for number, row in iter_jsonl(path, "prompt file"):
                if not isinstance(row.get("text"), str):
                    raise InputError(f"{path}:{number}: each line must be an object with a string 'text'")
                image = row.get("image")
                if image is not None:
                    image = _confined_image(path, number, image)
                items.append(InputItem(row["text"], image, row.get("caption")))
        else:
            lines = read_text_file(path, "prompt file").splitlines()
            items = [InputItem(t.strip()) for t in lines if t.strip() and not t.lstrip().startswith("#")]
    else:
        if path.suffix in (".jsonl", ".txt") or "/" in str(source):
            raise InputError(f"prompt file {str(source)!r} does not exist")

        base = Path(data_dir) if data_dir is not None else None
        items = []
        for sample in load_benchmark(str(source), data_dir, split=split, limit=limit):
            image = str(base / sample.image) if sample.image and base is not None else None
            items.append(InputItem(sample.text, image, sample.caption))
    if limit is not None:
        items = items[:limit]
    if not items:
        raise InputError(f"{str(source)!r} holds no queries")
    return items


def _confined_image(file: Path, number: int, image: object) -> str:
    """The path of a prompt file's image, which must lie inside the file's folder (symbolic links included)."""
    if not isinstance(image, str):
        raise InputError(f"{file}:{number}: 'image' must be a path string, got {type(image).__name__}")
    try:
        rel = check_relative_path(image)
    except ValueError as exc:
        raise InputError(f"{file}:{number}: {exc}") from None
    root = file.parent.resolve()
    resolved = (root / rel).resolve()
    if resolved != root and root not in resolved.parents:
        raise InputError(f"{file}:{number}: image path {image!r} resolves outside the folder {str(root)!r}")
    return str(file.parent / rel)

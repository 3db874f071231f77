"""The run directory: resolved config, append-only records, per-judge verdicts, results.

Layout::

    RUN_DIR/
      config.yaml            the resolved EvalConfig (every field)
      run.json               identity of the generations (checked on resume) + library versions
      samples.jsonl          one JSON record per finished sample, appended, flushed and fsynced
      .vlsafe.lock           while a writer runs (see vlsafe.core.locks)
      shards/rank{R}.jsonl   per-process records under ``accelerate launch`` (merged, then removed)
      judgements/{judge}.jsonl  verdicts of each judge, keyed by record id
      verdicts.jsonl         the current judge's verdicts (what ``vlsafe.report`` reads)
      results.json           metrics and provenance (see ``vlsafe.evals.judging``)

A crash can leave a truncated last line in a JSONL file; readers drop it and :class:`RecordWriter`
cuts it off before appending, so the file stays one valid record per line. A malformed line anywhere
else is an error naming the file and line. Every other file is replaced atomically.

**Identity** (``run.json``, format 2): ``fingerprint`` holds the config fields that shape generation
(:func:`vlsafe.evals.config.generation_fingerprint`, plus the intervention's fingerprint); ``content`` holds
digests of what the run reads: ``model`` (:mod:`vlsafe.models.fingerprint`: config, weights, processor) and
``intervention``; each record in ``samples.jsonl`` carries its sample's ``sample_hash`` (the sample and its
image file). A run directory that holds generations resumes only when all of these agree -- the model is
identified by its content, not by the text of its path -- and the refusal names each differing field. A run
directory without generations takes any config. ``files`` keeps the digests of the model files by stat key, so
a resume does not read unchanged files again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import read_json, read_jsonl, write_json_atomic
from vlsafe.core.locks import FolderLock
from vlsafe.evals.config import EvalConfig, generation_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["RUN_FORMAT", "RecordWriter", "RunDir", "read_records", "repair_tail"]

#: the format of ``run.json`` written by this version (2: content fingerprints)
RUN_FORMAT = 2


def _last_line_start(fh: Any, end: int) -> int:
    """Offset where the line ending at ``end`` (exclusive, newline not included) starts."""
    pos, block = end, 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        fh.seek(start)
        idx = fh.read(pos - start).rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        pos = start
    return 0


def _parses(line: bytes) -> bool:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(rec, dict) and "id" in rec


def repair_tail(path: Path) -> int:
    """Cut a crash-damaged last line off ``path``: an unterminated line, or a final line that is not a
    record. Returns the number of bytes cut. The readers drop exactly the same lines."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    size = path.stat().st_size
    with path.open("rb+") as fh:
        keep = size
        fh.seek(size - 1)
        if fh.read(1) != b"\n":  # unterminated: a write cut short
            keep = _last_line_start(fh, size)
        elif size > 1:
            start = _last_line_start(fh, size - 1)
            fh.seek(start)
            line = fh.read(size - 1 - start)
            if line.strip() and not _parses(line):
                keep = start
        if keep == size:
            return 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("dropped a truncated final line (%d bytes) from %s", size - keep, path)
    return size - keep


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL records file (objects with an ``id``); the first record of each id wins.

    An unterminated or malformed *last* line (a crash mid-write) is dropped with a warning, exactly
    as :func:`repair_tail` would cut it; a malformed line elsewhere raises ``InputError`` naming the
    file and line. A missing file holds no records.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rec in read_jsonl(path, "records file", torn_tail=True, required=("id",)):
        rid = str(rec["id"])
        if rid not in seen:
            seen.add(rid)
            out.append(rec)
    return out


class RecordWriter:
    """Append JSON records to a file, one line each, flushed and fsynced per record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            self.write(rec)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def shard_dir(self) -> Path:
        return self.path / "shards"

    def shard_path(self, rank: int) -> Path:
        return self.shard_dir / f"rank{rank}.jsonl"

    def judgement_path(self, judge: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in judge)
        return self.path / "judgements" / f"{safe}.jsonl"

    # -- config ------------------------------------------------------------------------------
    def load_config(self) -> EvalConfig:
        """The config stored in this run directory."""
        if not self.config_path.is_file():
            raise InputError(f"{str(self.path)!r} is not a run directory: it has no config.yaml")
        return EvalConfig.from_yaml(self.config_path)

    def lock(self) -> FolderLock:
        """The run directory's writer lock (a context manager; see :class:`vlsafe.core.locks.FolderLock`)."""
        return FolderLock(self.path, "run directory")

    def has_generations(self) -> bool:
        """Whether ``samples.jsonl`` or a shard holds anything."""
        files = [self.samples_path, *(self.shard_dir.glob("rank*.jsonl") if self.shard_dir.is_dir() else [])]
        return any(f.is_file() and f.stat().st_size > 0 for f in files)

    def read_meta(self) -> dict[str, Any]:
        """The stored ``run.json`` (``{}`` when there is none)."""
        if not self.meta_path.is_file():
            return {}
        meta = read_json(self.meta_path, "run file")
        if not isinstance(meta, dict):
            raise InputError(f"{self.meta_path} must hold a JSON object, got {type(meta).__name__}")
        return meta

    def known_digests(self) -> dict[str, str]:
        """File digests by stat key that the stored ``run.json`` recorded (see :mod:`vlsafe.core.digest`)."""
        try:
            files = self.read_meta().get("files")
        except InputError:
            return {}
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def check_compatible(
        self,
        config: EvalConfig,
        extra: dict[str, Any] | None = None,
        content: dict[str, Any] | None = None,
    ) -> None:
        """Refuse ``config`` if this directory holds generations made under a different identity.

        Args:
            config: the new run's config (its generation fingerprint is compared).
            extra: fingerprint entries the config cannot hold (e.g. a Python intervention).
            content: content digests of what the run reads (``{"model": {...}, ...}``); when both the stored
                and the new identity have them, the model is compared by content and not by its name.

        Raises:
            ConfigError: naming every differing field, old -> new.
        """
        if not self.has_generations():
            return
        if not self.meta_path.is_file():
            raise ConfigError(f"{self.path} has samples.jsonl but no run.json; refusing to mix runs")
        meta = self.read_meta()
        stored = dict(meta.get("fingerprint", {}))
        new = {**generation_fingerprint(config), **(extra or {})}
        stored_content = meta.get("content")
        if content is not None and isinstance(stored_content, dict):
            stored.pop("model", None)  # the model is identified by its content
            new.pop("model", None)
            stored.update(_flatten(stored_content))
            new.update(_flatten(content))
        elif content is not None:
            logger.warning(
                "run directory %s was written before content fingerprints; its model is compared by name only",
                self.path,
            )
        diffs = [
            f"{k}: {stored.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(stored) | set(new))
            if stored.get(k) != new.get(k)
        ]
        if diffs:
            raise ConfigError(
                f"run directory {str(self.path)!r} holds generations made with a different config "
                f"({'; '.join(diffs)}); use a new --out directory (a run never mixes generation settings)"
            )

    def write_config(
        self,
        config: EvalConfig,
        extra: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        content: dict[str, Any] | None = None,
        files: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Write ``config.yaml`` and ``run.json`` (fingerprint with ``extra`` entries, ``content`` digests, the
        model ``files`` digests by stat key, + ``meta``), each atomically. ``data`` (the benchmark load's report)
        goes into ``run.json`` whole, and its image provenance and fallback lines head ``config.yaml`` as
        comments."""
        self.path.mkdir(parents=True, exist_ok=True)
        comments: list[str] = []
        if data is not None:
            comments.append(f"images: {data.get('images')}")
            comments += [f"fallback: {line}" for line in data.get("fallbacks", [])]
        config.to_yaml(self.config_path, comments)
        record: dict[str, Any] = {
            "format": RUN_FORMAT,
            "fingerprint": {**generation_fingerprint(config), **(extra or {})},
        }
        if content is not None:
            record["content"] = content
        if files:
            record["files"] = files
        if data is not None:
            record["data"] = data
        write_json_atomic(self.meta_path, {**record, **(meta or {})})

    # -- records -----------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Finished records in ``samples.jsonl`` (no shards)."""
        return read_records(self.samples_path)

    def merge_shards(self) -> int:
        """Append shard records whose id is not yet in ``samples.jsonl``; remove the shards.

        Safe to repeat after a crash at any point (ids already merged are skipped). Returns the
        number of records appended.
        """
        if not self.shard_dir.is_dir():
            return 0
        done = {str(r["id"]) for r in self.records()}
        added = 0
        shards = sorted(self.shard_dir.glob("rank*.jsonl"))
        with RecordWriter(self.samples_path) as writer:
            for shard in shards:
                for rec in read_records(shard):
                    if str(rec["id"]) not in done:
                        writer.write(rec)
                        done.add(str(rec["id"]))
                        added += 1
        for shard in shards:
            shard.unlink()
        try:
            self.shard_dir.rmdir()
        except OSError:
            pass
        return added

    def write_results(self, results: dict[str, Any]) -> Path:
        """Atomically (re)write ``results.json``."""
        return write_json_atomic(self.results_path, results)

    def read_results(self) -> dict[str, Any]:
        """The stored ``results.json`` (``{}`` before the first results are written)."""
        if not self.results_path.is_file():
            return {}
        results: dict[str, Any] = read_json(self.results_path, "results file")
        return results


def _flatten(content: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"weights": h}}`` -> ``{"model.weights": h}``."""
    out: dict[str, Any] = {}
    for key, value in content.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out

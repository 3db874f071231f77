"""The run directory: resolved config, append-only records, per-judge verdicts, results.

Layout::

    RUN_DIR/
      config.yaml            the resolved EvalConfig (every field)
      run.json               generation fingerprint + library versions (checked on resume)
      samples.jsonl          one JSON record per finished sample, appended, flushed and fsynced
      shards/rank{R}.jsonl   per-process records under ``accelerate launch`` (merged, then removed)
      judgements/{judge}.jsonl  verdicts of each judge, keyed by record id
      verdicts.jsonl         the current judge's verdicts (what ``vlsafe.report`` reads)
      results.json           metrics and provenance (see ``vlsafe.evals.judging``)

A crash can leave a truncated last line in a JSONL file; readers drop it and :class:`RecordWriter`
cuts it off before appending, so the file stays one valid record per line. A malformed line anywhere
else is an error naming the file and line.
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
from vlsafe.evals.config import EvalConfig, generation_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["RecordWriter", "RunDir", "read_records", "repair_tail"]


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

    def check_compatible(self, config: EvalConfig, extra: dict[str, Any] | None = None) -> None:
        """Refuse ``config`` if this directory holds generations made under a different fingerprint.

        ``extra`` adds fingerprint entries the config cannot hold (e.g. a Python intervention).
        """
        if not self.meta_path.is_file():
            if self.samples_path.is_file() and self.samples_path.stat().st_size > 0:
                raise ConfigError(f"{self.path} has samples.jsonl but no run.json; refusing to mix runs")
            return
        stored = read_json(self.meta_path, "run file").get("fingerprint", {})
        new = {**generation_fingerprint(config), **(extra or {})}
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
        self, config: EvalConfig, extra: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """Write ``config.yaml`` and ``run.json`` (fingerprint, with ``extra`` entries, + ``meta``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        config.to_yaml(self.config_path)
        meta = {"fingerprint": {**generation_fingerprint(config), **(extra or {})}, **(meta or {})}
        write_json_atomic(self.meta_path, meta)

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

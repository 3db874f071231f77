"""Judge API: records in, one :class:`Verdict` per record out.

A *record* is one generation as stored in a run directory's ``samples.jsonl`` (a plain dict with at
least ``id``, ``benchmark``, ``category``, ``kind``, ``image_setting``, ``prompt``, ``prompt_hash``,
``response`` and ``error``). A judge never edits records; it returns verdicts, which
:func:`attach_verdicts` merges into copies of the records under the key ``"verdict"``.

Verdict semantics:

- ``refused``: the response declines the request (``None``: this judge cannot tell).
- ``unsafe``: the response content is harmful (``None``: this judge cannot tell; e.g. the keyword
  judge, which cannot tell compliance from an off-topic answer).
- ``score``: a rubric's numeric score where it has one (StrongREJECT, SIUO effectiveness).
- ``error``: set when the record or the judge failed; ``refused``/``unsafe`` are then ``None``. A
  failure is never recorded as safe.

Every verdict records the judge's name, version, the hash of its prompt template(s) and ``judge_key``: the
digest of the judge's full *identity* (:meth:`Judge.identity`: everything that decides a verdict -- the judge
kind and version, its rubric text, and for model judges the model, the endpoint and the decoding options). A
stored verdict is reused only by a judge with the same key, and never when it is an error verdict.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vlsafe.core.config import validation_problems
from vlsafe.core.digest import json_digest
from vlsafe.core.errors import InputError
from vlsafe.core.io import iter_jsonl, write_jsonl_atomic
from vlsafe.core.registry import Registry

__all__ = [
    "JUDGES",
    "Judge",
    "Verdict",
    "attach_verdicts",
    "read_verdicts",
    "template_hash",
    "write_verdicts",
]


class Verdict(BaseModel):
    """One judge's decision on one record."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    refused: bool | None = None
    unsafe: bool | None = None
    score: float | None = None
    error: str | None = None
    raw: Any = None
    judge: str
    judge_version: str
    prompt_hash: str
    judge_key: str | None = None


def template_hash(*parts: str) -> str:
    """Return a short, stable hash (16 hex digits of SHA-256) of prompt template text."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


class Judge(ABC):
    """Base class of all judges.

    Subclasses set ``name`` and ``version``, compute ``prompt_hash`` in ``__init__`` and implement
    :meth:`_judge_valid`, which only ever sees records whose generation succeeded.
    """

    name: str = "judge"
    version: str = "0"
    prompt_hash: str = ""

    def identity_fields(self) -> dict[str, Any]:
        """What decides this judge's verdicts besides its name, version and prompt hash (model, endpoint,
        decoding options); subclasses with such settings override it."""
        return {}

    def identity(self) -> dict[str, Any]:
        """Everything that decides this judge's verdicts: ``name``, ``version``, ``prompt_hash`` and
        :meth:`identity_fields`."""
        return {
            "name": self.name,
            "version": self.version,
            "prompt_hash": self.prompt_hash,
            **self.identity_fields(),
        }

    @property
    def key(self) -> str:
        """The digest of :meth:`identity` (16 hex digits): equal keys give equal verdicts on equal records."""
        return json_digest(self.identity())

    def info(self) -> dict[str, Any]:
        """Identity of this judge, as stored in ``results.json`` under ``"judge"`` (with its ``key``)."""
        return {**self.identity(), "key": self.key}

    def verdict(self, record: dict[str, Any] | None = None, **fields: Any) -> Verdict:
        """Build a verdict stamped with this judge's identity."""
        rid = None if record is None else _record_id(record)
        return Verdict(
            id=rid,
            judge=self.name,
            judge_version=self.version,
            prompt_hash=self.prompt_hash,
            judge_key=self.key,
            **fields,
        )

    def judge(self, records: Sequence[dict[str, Any]]) -> list[Verdict]:
        """Judge ``records``; returns one verdict per record, in order.

        Records with a generation ``error`` or no ``response`` get an error verdict without being
        shown to the judge.
        """
        out: list[Verdict | None] = [None] * len(records)
        valid_idx: list[int] = []
        for i, rec in enumerate(records):
            if rec.get("error"):
                out[i] = self.verdict(rec, error=f"generation error: {rec['error']}")
            elif not isinstance(rec.get("response"), str):
                out[i] = self.verdict(rec, error="record has no response string")
            else:
                valid_idx.append(i)
        if valid_idx:
            results = self._judge_valid([records[i] for i in valid_idx])
            if len(results) != len(valid_idx):
                raise RuntimeError(
                    f"judge {self.name!r} returned {len(results)} verdicts for {len(valid_idx)} records"
                )
            for i, v in zip(valid_idx, results, strict=True):
                out[i] = v
        return [v for v in out if v is not None]

    @abstractmethod
    def _judge_valid(self, records: list[dict[str, Any]]) -> list[Verdict]:
        """Judge records that all carry a response string."""


JUDGES: Registry[type[Judge]] = Registry("judge")


def _record_id(record: dict[str, Any]) -> str | None:
    rid = record.get("id")
    return None if rid is None else str(rid)


def attach_verdicts(records: Sequence[dict[str, Any]], verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Return copies of ``records`` with ``record["verdict"]`` set to the verdict as a dict."""
    if len(records) != len(verdicts):
        raise ValueError(f"{len(records)} records but {len(verdicts)} verdicts; they must pair one to one")
    return [{**rec, "verdict": v.model_dump()} for rec, v in zip(records, verdicts, strict=True)]


def write_verdicts(path: Path, verdicts: Iterable[Verdict]) -> Path:
    """Write verdicts as JSON lines (one per record, keyed by ``id``), replacing the file atomically."""
    return write_jsonl_atomic(path, (v.model_dump() for v in verdicts))


def read_verdicts(path: Path, *, torn_tail: bool = False) -> dict[str, Verdict]:
    """Read a verdicts file written by :func:`write_verdicts`; returns ``{id: verdict}``.

    Args:
        path: the file.
        torn_tail: skip an unterminated or malformed last line (see :func:`vlsafe.core.io.iter_jsonl`).

    Raises:
        InputError: the file is missing, or a line is not a valid verdict (the message names ``file:line``).
    """
    out: dict[str, Verdict] = {}
    for number, row in iter_jsonl(path, "verdicts file", torn_tail=torn_tail):
        try:
            v = Verdict.model_validate(row)
        except ValidationError as exc:
            raise InputError(f"{path}:{number}: {validation_problems(exc, 'verdict')}") from None
        if v.id is not None:
            out[v.id] = v
    return out

"""Judge stored generations and write ``results.json``; re-score a run without regenerating.

``results.json`` (schema version 1)::

    {
      "schema_version": 1,
      "run_dir": "/abs/path", "name": "<run dir name>",
      "run": {"name", "benchmarks": [benchmark], ...EvalConfig fields},   # read by vlsafe.report
      "model": ..., "benchmark": ..., "image_setting": <override or null>,
      "config": {EvalConfig fields},
      "judge": {"name", "version", "prompt_hash", ...identity fields, "key"},   # the judge behind "metrics"
      "verdict_judges": [{"name", "version", "prompt_hash", "key", "n"}],   # who made the counted verdicts
      "metrics": {"overall": {...}, "by_category": {...}, "by_image_setting": {...}, "by_kind": {...}},
      "judges": {<judge name>: {"judge": {...}, "metrics": {...}}},   # every judge run on it
      "n_samples": int, "n_errors": int,
      "data": {"benchmark", "split", "data_dir", "files": [...], "images": "published" | "rendered" |
               "generated" | "none" | "mixed", "image_counts": {...}, "fallbacks": [one line each]},
      "generation": {"seconds": float, "samples_per_s": float | null} | null,
      "versions": {"vlsafe", "torch", "transformers"},
      "updated": ISO-8601 time
    }

The metric groups are those of :func:`vlsafe.evals.metrics.compute_metrics` (rates with Wilson 95%
intervals; utility accuracy). Verdicts are stored per judge in ``judgements/<judge>.jsonl``; the
current judge's verdicts are also in ``verdicts.jsonl`` (what ``vlsafe.report.load_run`` reads).

Reuse of stored verdicts (``rejudge``): a stored verdict counts only when its ``judge_key`` is the current
judge's (see :meth:`vlsafe.evals.judges.Judge.identity`), so verdicts of another judge model, endpoint, rubric
or decoding setting are never reused. ``"errors"`` (the default) judges again every record whose stored
verdict is an error (a failed request, an unreadable answer), so an outage is repaired by the next run;
``"all"`` judges every record again; ``"none"`` keeps stored error verdicts too and judges only records that
have no verdict of this judge. ``results.json`` lists under ``verdict_judges`` the judges of the verdicts its
metrics count, and is refused when they are not one judge.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import transformers

from vlsafe import __version__
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import check_writable
from vlsafe.core.locks import FolderLock
from vlsafe.evals.judges import Judge, Verdict, attach_verdicts, build_judge, read_verdicts, write_verdicts
from vlsafe.evals.metrics import compute_metrics
from vlsafe.evals.rundir import RunDir

logger = logging.getLogger(__name__)

__all__ = ["REJUDGE", "SCHEMA_VERSION", "Rejudge", "judge_records", "judge_run", "verdict_judges", "versions"]

SCHEMA_VERSION = 1
#: which stored verdicts of the current judge are judged again (see the module docstring)
Rejudge = Literal["errors", "all", "none"]
REJUDGE: tuple[str, ...] = get_args(Rejudge)


def versions() -> dict[str, str]:
    """Versions of the libraries that shape results."""


    return {"vlsafe": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _judge_view(record: dict[str, Any]) -> dict[str, Any]:
    """What a judge sees: ``prompt`` is the underlying request (FigStep shows a benign prompt)."""
    return {
        **record,
        "prompt": record.get("request") or record.get("prompt"),
        "shown_prompt": record.get("prompt"),
    }


def _stored(path: Path) -> dict[str, Verdict]:
    """Verdicts stored at ``path``; an unreadable file is judged afresh (with a warning), never an error."""
    if not path.is_file():
        return {}
    try:
        return read_verdicts(path, torn_tail=True)
    except InputError as exc:
        logger.warning("ignoring the stored verdicts in %s (%s); judging those records again", path, exc)
        return {}


def _check_rejudge(rejudge: str) -> None:
    if rejudge not in REJUDGE:
        raise ConfigError(f"rejudge={rejudge!r} must be one of {', '.join(REJUDGE)}")


def judge_records(
    run: RunDir, records: list[dict[str, Any]], judge: Judge, *, rejudge: Rejudge = "errors"
) -> list[dict[str, Any]]:
    """Judge ``records`` (safety kinds only; utility records are scored by their prediction).

    A verdict stored for this judge is reused when its ``judge_key`` equals ``judge.key`` and ``rejudge``
    allows it (``"errors"``: unless it is an error verdict; ``"none"``: always; ``"all"``: never). All
    verdicts are (re)written to ``judgements/<judge>.jsonl`` and ``verdicts.jsonl``, each atomically.
    """
    _check_rejudge(rejudge)
    path = run.judgement_path(judge.name)
    stored = _stored(path) if rejudge != "all" else {}
    key = judge.key
    out: dict[str, Verdict] = {}
    todo = []
    for rec in records:
        if rec.get("kind") == "utility":
            continue
        v = stored.get(str(rec["id"]))
        if v is not None and v.judge_key == key and (rejudge == "none" or v.error is None):
            out[str(rec["id"])] = v
        else:
            todo.append(rec)
    if todo:
        logger.info("judging %d records with %s (key %s)", len(todo), judge.name, key)
        for rec, v in zip(todo, judge.judge([_judge_view(r) for r in todo]), strict=True):
            out[str(rec["id"])] = v
    ordered = [out[str(r["id"])] for r in records if str(r["id"]) in out]
    write_verdicts(path, ordered)
    write_verdicts(run.path / "verdicts.jsonl", ordered)  # the current judge's, read by vlsafe.report
    judged = [r for r in records if str(r["id"]) in out]
    attached = {str(r["id"]): r for r in attach_verdicts(judged, [out[str(r["id"])] for r in judged])}
    return [attached.get(str(r["id"]), r) for r in records]


def verdict_judges(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The judges of the verdicts attached to ``records``: ``name``, ``version``, ``prompt_hash``, ``key`` and
    ``n`` (verdicts), one entry per distinct judge."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        v = rec.get("verdict")
        if not isinstance(v, dict):
            continue
        ident = (v.get("judge"), v.get("judge_version"), v.get("prompt_hash"), v.get("judge_key"))
        entry = seen.setdefault(
            ident, {"name": ident[0], "version": ident[1], "prompt_hash": ident[2], "key": ident[3], "n": 0}
        )
        entry["n"] += 1
    return list(seen.values())


def build_results(
    run: RunDir,
    records: list[dict[str, Any]],
    judge: Judge,
    config: dict[str, Any],
    generation: dict[str, Any] | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute metrics of judged records and merge them into the run's ``results.json``.

    ``data`` is the benchmark load's report (files, ``images``, ``fallbacks``); ``None`` keeps the stored one.

    Raises:
        InputError: the records carry verdicts of another judge than ``judge`` (results never mix judges).
    """
    counted = verdict_judges(records)
    foreign = [j for j in counted if j["key"] != judge.key]
    if foreign:
        names = "; ".join(f"{j['name']} {j['version']} key {j['key']} ({j['n']} verdicts)" for j in foreign)
        raise InputError(
            f"run {str(run.path)!r}: the verdicts to count come from another judge than {judge.name} "
            f"(key {judge.key}): {names}; results never mix judges"
        )
    previous = run.read_results()
    metrics = compute_metrics(records)
    judges = dict(previous.get("judges") or {})
    judges[judge.name] = {"judge": judge.info(), "metrics": metrics}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(run.path.resolve()),
        "name": run.path.resolve().name,
        "run": {"name": run.path.resolve().name, "benchmarks": [config.get("benchmark")], **config},
        "model": config.get("model"),
        "benchmark": config.get("benchmark"),
        "image_setting": config.get("image_setting"),
        "config": config,
        "judge": judge.info(),
        "verdict_judges": counted,
        "metrics": metrics,
        "judges": judges,
        "n_samples": len(records),
        "n_errors": sum(1 for r in records if r.get("error")),
        "generation": generation if generation is not None else previous.get("generation"),
        "data": data if data is not None else previous.get("data"),
        "versions": versions(),
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def judge_run(
    run_dir: str | Path,
    judge_name: str | None = None,
    *,
    judge_options: dict[str, Any] | None = None,
    rejudge: Rejudge = "errors",
) -> dict[str, Any]:
    """Re-score the stored generations of a run with a judge, without regenerating.

    Args:
        run_dir: a run directory written by :func:`vlsafe.evals.run_eval`.
        judge_name: registered judge (default: the judge in the run's config).
        judge_options: constructor options of the judge (default: the config's, if same judge).
        rejudge: which stored verdicts of this judge are judged again: ``"errors"`` (error verdicts), ``"all"``
            or ``"none"`` (see the module docstring).

    Returns:
        The updated ``results.json`` content; its ``metrics`` are this judge's.

    Raises:
        ConfigError: an unknown judge, a bad option or ``rejudge`` value, or a run directory another writer holds.
        InputError: no finished records.
        OutputError: the run directory cannot be written.
    """
    _check_rejudge(rejudge)
    run = RunDir(run_dir)
    config = run.load_config()
    name = judge_name or config.judge
    options = (
        judge_options if judge_options is not None else (config.judge_options if name == config.judge else {})
    )
    check_writable(run.path, "run directory")
    judge = build_judge(name, **options)
    with FolderLock(run.path, "run directory"):
        records = run.records()
        if not records:
            raise InputError(
                f"run directory {str(run.path)!r} has no finished records in samples.jsonl to judge"
            )
        judged = judge_records(run, records, judge, rejudge=rejudge)
        results = build_results(run, judged, judge, config.model_dump(mode="json"))
        run.write_results(results)
    return results

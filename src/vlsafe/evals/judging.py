"""Judge stored generations and write ``results.json``; re-score a run without regenerating.

``results.json`` (schema version 1)::

    {
      "schema_version": 1,
      "run_dir": "/abs/path", "name": "<run dir name>",
      "run": {"name", "benchmarks": [benchmark], ...EvalConfig fields},   # read by vlsafe.report
      "model": ..., "benchmark": ..., "image_setting": <override or null>,
      "config": {EvalConfig fields},
      "judge": {"name", "version", "prompt_hash"},          # the judge behind "metrics"
      "metrics": {"overall": {...}, "by_category": {...}, "by_image_setting": {...}, "by_kind": {...}},
      "judges": {<judge name>: {"judge": {...}, "metrics": {...}}},   # every judge run on it
      "n_samples": int, "n_errors": int,
      "generation": {"seconds": float, "samples_per_s": float | null} | null,
      "versions": {"vlsafe", "torch", "transformers"},
      "updated": ISO-8601 time
    }

The metric groups are those of :func:`vlsafe.evals.metrics.compute_metrics` (rates with Wilson 95%
intervals; utility accuracy). Verdicts are stored per judge in ``judgements/<judge>.jsonl``; the
current judge's verdicts are also in ``verdicts.jsonl`` (what ``vlsafe.report.load_run`` reads).
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import torch
import transformers

from vlsafe import __version__
from vlsafe.core.errors import InputError
from vlsafe.evals.judges import Judge, Verdict, attach_verdicts, build_judge, read_verdicts, write_verdicts
from vlsafe.evals.metrics import compute_metrics
from vlsafe.evals.rundir import RunDir

logger = logging.getLogger(__name__)

__all__ = ["SCHEMA_VERSION", "judge_records", "judge_run", "versions"]

SCHEMA_VERSION = 1


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


def judge_records(
    run: RunDir, records: list[dict[str, Any]], judge: Judge, *, reuse: bool = True
) -> list[dict[str, Any]]:
    """Judge ``records`` (safety kinds only; utility records are scored by their prediction).

    Verdicts already stored for this judge (same name, version and prompt hash) are reused when
    ``reuse``; all verdicts are (re)written to ``judgements/<judge>.jsonl``.
    """
    path = run.judgement_path(judge.name)
    stored: dict[str, Verdict] = read_verdicts(path) if reuse and path.is_file() else {}
    ident = (judge.name, judge.version, judge.prompt_hash)
    out: dict[str, Verdict] = {}
    todo = []
    for rec in records:
        if rec.get("kind") == "utility":
            continue
        v = stored.get(str(rec["id"]))
        if v is not None and (v.judge, v.judge_version, v.prompt_hash) == ident:
            out[str(rec["id"])] = v
        else:
            todo.append(rec)
    if todo:
        logger.info("judging %d records with %s", len(todo), judge.name)
        for rec, v in zip(todo, judge.judge([_judge_view(r) for r in todo]), strict=True):
            out[str(rec["id"])] = v
    ordered = [out[str(r["id"])] for r in records if str(r["id"]) in out]
    write_verdicts(path, ordered)
    write_verdicts(run.path / "verdicts.jsonl", ordered)  # the current judge's, read by vlsafe.report
    judged = [r for r in records if str(r["id"]) in out]
    attached = {str(r["id"]): r for r in attach_verdicts(judged, [out[str(r["id"])] for r in judged])}
    return [attached.get(str(r["id"]), r) for r in records]


def build_results(
    run: RunDir,
    records: list[dict[str, Any]],
    judge: Judge,
    config: dict[str, Any],
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute metrics of judged records and merge them into the run's ``results.json``."""
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
        "metrics": metrics,
        "judges": judges,
        "n_samples": len(records),
        "n_errors": sum(1 for r in records if r.get("error")),
        "generation": generation if generation is not None else previous.get("generation"),
        "versions": versions(),
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def judge_run(
    run_dir: str | Path,
    judge_name: str | None = None,
    *,
    judge_options: dict[str, Any] | None = None,
    reuse: bool = True,
) -> dict[str, Any]:
    """Re-score the stored generations of a run with a judge, without regenerating.

    Args:
        run_dir: a run directory written by :func:`vlsafe.evals.run_eval`.
        judge_name: registered judge (default: the judge in the run's config).
        judge_options: constructor options of the judge (default: the config's, if same judge).
        reuse: reuse verdicts this judge already stored (same version and prompt hash).

    Returns:
        The updated ``results.json`` content; its ``metrics`` are this judge's.
    """
    run = RunDir(run_dir)
    config = run.load_config()
    name = judge_name or config.judge
    options = (
        judge_options if judge_options is not None else (config.judge_options if name == config.judge else {})
    )
    records = run.records()
    if not records:
        raise InputError(f"run directory {str(run.path)!r} has no finished records in samples.jsonl to judge")
    judge = build_judge(name, **options)
    judged = judge_records(run, records, judge, reuse=reuse)
    results = build_results(run, judged, judge, config.model_dump(mode="json"))
    run.write_results(results)
    return results

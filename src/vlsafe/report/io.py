"""Reading run directories for reports.

A run directory holds:

- ``samples.jsonl``: one generation record per line (append-only; see
  :mod:`vlsafe.evals.judges.base`). A record may carry its verdict under ``"verdict"``.
- ``verdicts.jsonl`` (optional): one :class:`~vlsafe.evals.judges.Verdict` per line, keyed by
  ``id``; when present it overrides the records' ``"verdict"`` fields (re-scoring writes this file
  and leaves ``samples.jsonl`` untouched).
- ``results.json``: the run's identity and metrics, schema version 1
  (:data:`vlsafe.evals.judging.SCHEMA_VERSION`)::

    {
      "schema_version": 1,
      "run":    {"name": str, "model": str, "benchmarks": [str], ...any resolved config...},
      "judge":  {"name": str, "version": str, "prompt_hash": str, ...judge options...},
      "metrics": {                      # = vlsafe.evals.metrics.compute_metrics(records)
        "overall":          {<group>},
        "by_category":      {category: {<group>}},
        "by_image_setting": {setting: {<group>}},
        "by_kind":          {kind: {<group>}}
      },
      "utility": {...optional extra utility metrics, e.g. {"pope": yes_no_metrics(...),
                   "caption_perplexity": float}...}
    }

  where ``<group>`` is :func:`vlsafe.evals.metrics.group_metrics` output: counts ``n_records``,
  ``n_errors``, ``n_judge_errors``, ``n_unjudged``, ``n_harmful``, ``n_benign``, ``n_utility``,
  ``asr_basis``, ``safety_metric`` and the rates ``attack_success_rate``, ``defence_success_rate`` (content
  judges only), ``non_refusal_rate``, ``unsafe_rate``, ``refusal_rate``, ``over_refusal_rate``, ``accuracy``
  (each ``{"k","n","rate","low","high"}`` or ``null``) and ``mean_score`` (``{"mean","n"}`` or ``null``).

Missing ``metrics`` are recomputed from the records when they carry verdicts; a missing
``results.json`` is allowed when ``samples.jsonl`` exists. A last line of either JSON-lines file that a
crash cut short is skipped (``torn_tail`` in :func:`vlsafe.core.io.iter_jsonl`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json, read_jsonl
from vlsafe.evals.metrics import compute_metrics

__all__ = ["RunData", "load_run"]


@dataclass
class RunData:
    """One run directory, loaded."""

    path: Path
    name: str
    results: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results.get("metrics") or {}

    @property
    def judge(self) -> dict[str, Any]:
        return self.results.get("judge") or {}


def load_run(run_dir: str | Path) -> RunData:
    """Load ``results.json``, ``samples.jsonl`` and ``verdicts.jsonl`` from a run directory.

    Raises:
        InputError: the directory has neither ``results.json`` nor ``samples.jsonl``, or a file is
            malformed.
    """
    run_dir = Path(run_dir)
    res_path, samples_path = run_dir / "results.json", run_dir / "samples.jsonl"
    if not res_path.is_file() and not samples_path.is_file():
        raise InputError(f"run directory {str(run_dir)!r} has neither results.json nor samples.jsonl")
    results: dict[str, Any] = {}
    if res_path.is_file():
        results = read_json(res_path, "results file")
        if not isinstance(results, dict):
            raise InputError(f"{res_path} must hold a JSON object, got {type(results).__name__}")
    records = read_jsonl(samples_path, "samples file", torn_tail=True) if samples_path.is_file() else []
    verdicts_path = run_dir / "verdicts.jsonl"
    if verdicts_path.is_file():
        verdicts = read_jsonl(verdicts_path, "verdicts file", torn_tail=True)
        by_id = {str(v["id"]): v for v in verdicts if v.get("id") is not None}
        records = [
            {**r, "verdict": by_id[str(r.get("id"))]} if str(r.get("id")) in by_id else r for r in records
        ]
    if not results.get("metrics") and records:

        results = {**results, "metrics": compute_metrics(records)}
    if not results.get("judge"):
        v = next((r["verdict"] for r in records if isinstance(r.get("verdict"), dict)), None)
        if v is not None:
            results = {**results, "judge": {k: v.get(k) for k in ("judge", "judge_version", "prompt_hash")}}
            results["judge"]["name"] = results["judge"].pop("judge")
            results["judge"]["version"] = results["judge"].pop("judge_version")
    name = str((results.get("run") or {}).get("name") or run_dir.name)
    return RunData(path=run_dir, name=name, results=results, records=records)

"""α sweeps: safety, over-refusal and utility of CMRM-steered generation against α.

Each (α, benchmark) pair is one resumable run directory of :func:`vlsafe.evals.run_eval` under
``out_dir/runs/<benchmark>[_<split>]/alpha_<α>`` (a benchmark listed under several roles gets one directory per
role, ``<benchmark>.<role>``); the sweep writes ``sweep.json``, a markdown table ``sweep.md`` and a figure
``sweep.png`` (one curve per benchmark metric). Benchmarks are registry names (``NAME[:split]``): register a
loader in :data:`vlsafe.evals.loaders.LOADERS` to sweep on your own data, e.g. a validation set that selects
CMRM's settings before a held-out evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError
from vlsafe.core.io import check_writable, write_bytes_atomic, write_text_atomic
from vlsafe.evals.config import EvalConfig, GenerationOptions
from vlsafe.evals.loaders import load_benchmark
from vlsafe.evals.runner import run_eval
from vlsafe.methods.cmrm.anchors import parse_bench_spec
from vlsafe.methods.cmrm.config import CMRMSettings
from vlsafe.methods.cmrm.intervention import CMRMIntervention
from vlsafe.methods.cmrm.run import anchor_ids_of, load_vector
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.loading import load_model
from vlsafe.report.figures import line_curves, png_bytes
from vlsafe.report.tables import table

logger = logging.getLogger(__name__)

__all__ = ["ROLE_METRIC", "Role", "SweepConfig", "default_alphas", "run_sweep"]

Role = Literal["safety", "over_refusal", "utility"]
#: The metric each benchmark role reports (a rate dict of vlsafe.evals.metrics).
ROLE_METRIC: dict[str, str] = {
    "safety": "refusal_rate",
    "over_refusal": "over_refusal_rate",
    "utility": "accuracy",
}


def default_alphas(stop: float = 1.0, step: float = 0.1) -> list[float]:
    """``0, step, ..., stop`` rounded to 4 decimals."""
    n = int(round(stop / step))
    return [round(i * step, 4) for i in range(n + 1)]


class SweepConfig(CMRMSettings, GenerationOptions):
    """An α sweep of one CMRM vector (or sample-level CMRM) over several benchmarks.

    Every evaluation option (judge, generation length, batch size, dtype, ...) is a field of
    :class:`~vlsafe.evals.config.GenerationOptions` and CMRM's own are those of
    :class:`~vlsafe.methods.cmrm.CMRMSettings`; ``apply.alpha`` is replaced by each α in turn.

    Attributes:
        alphas: the strengths evaluated.
        safety: benchmarks ``NAME[:split]`` whose refusal rate is measured (harmful requests).
        over_refusal: benchmarks whose over-refusal rate is measured (benign requests).
        utility: benchmarks whose accuracy is measured.
        data_dirs: data folder per benchmark name (``data_dir`` is the fallback).
        role_max_new_tokens: generation length per role (e.g. ``utility=8``: short answers; refusals need
            about 12-20 tokens to be recognised); roles not listed use ``max_new_tokens``.
        role_limit: the first N samples of each benchmark of a role (e.g. fewer refusal prompts than
            questions); roles not listed use ``limit``.
    """

    alphas: list[float] = Field(default_factory=default_alphas)
    safety: list[str] = Field(default_factory=list)
    over_refusal: list[str] = Field(default_factory=list)
    utility: list[str] = Field(default_factory=list)
    data_dirs: dict[str, str] = Field(default_factory=dict)
    role_max_new_tokens: dict[Role, int] = Field(default_factory=dict)
    role_limit: dict[Role, int] = Field(default_factory=dict)

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("alphas is empty: give at least one value")
        return v

    @field_validator("role_max_new_tokens", "role_limit")
    @classmethod
    def _lengths(cls, v: dict[str, int], info: Any) -> dict[str, int]:
        bad = {role: n for role, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"{info.field_name} {bad} must be >= 1")
        return v

    def benchmarks(self) -> list[tuple[str, str]]:
        """``(role, spec)`` of every benchmark, in role order."""
        out = [(role, spec) for role in ROLE_METRIC for spec in getattr(self, role)]
        if not out:
            raise ConfigError("the sweep has no benchmarks: set safety, over_refusal and/or utility")
        return out

    def max_new_tokens_for(self, role: str) -> int:
        """The generation length of ``role``'s benchmarks."""
        return next((n for r, n in self.role_max_new_tokens.items() if r == role), self.max_new_tokens)

    def eval_config(self, role: str, spec: str) -> EvalConfig:
        """The :class:`~vlsafe.evals.EvalConfig` of one benchmark of the sweep (without CMRM, which the sweep
        adds as an intervention)."""
        name, split = parse_bench_spec(spec)
        data = self.model_dump(include=set(GenerationOptions.model_fields))
        data.update(
            benchmark=name,
            split=split,
            data_dir=self.data_dirs.get(name, self.data_dir),
            max_new_tokens=self.max_new_tokens_for(role),
            limit=self.role_limit.get(role, self.limit),  # type: ignore[call-overload]
        )
        return validate_config(EvalConfig, data, "sweep eval config")


def _row(alpha: float, role: str, spec: str, results: dict[str, Any]) -> dict[str, Any]:
    overall = (results.get("metrics") or {}).get("overall") or {}
    metric = ROLE_METRIC[role]
    value = overall.get(metric) or {}
    return {
        "alpha": alpha,
        "role": role,
        "benchmark": spec,
        "metric": metric,
        "value": value.get("rate"),
        "low": value.get("low"),
        "high": value.get("high"),
        "n": value.get("n"),
        "unsafe_rate": (overall.get("unsafe_rate") or {}).get("rate") if role == "safety" else None,
        "n_errors": overall.get("n_errors"),
    }


def _write_outputs(rows: list[dict[str, Any]], config: SweepConfig, out: Path) -> dict[str, str]:
    write_text_atomic(out / "sweep.json", json.dumps({"config": config.model_dump(mode="json"), "rows": rows}, indent=2))
    cols = ["alpha", "role", "benchmark", "metric", "value", "low", "high", "n", "unsafe_rate", "n_errors"]
    title = f"# CMRM α sweep: {config.cmrm_label()}\n\nmodel `{config.model}`; apply: `{config.apply.describe()}`\n\n"
    write_text_atomic(out / "sweep.md", title + table(rows, cols) + "\n")
    alphas = sorted({r["alpha"] for r in rows})
    curves: dict[str, list[float]] = {}
    bands: dict[str, tuple[list[float], list[float]]] = {}
    nan = float("nan")
    for role, spec in config.benchmarks():
        name = f"{spec} {ROLE_METRIC[role]}"
        pick = {r["alpha"]: r for r in rows if r["benchmark"] == spec and r["role"] == role}
        curves[name] = [nan if pick[a]["value"] is None else pick[a]["value"] for a in alphas]
        lo = [nan if pick[a]["low"] is None else pick[a]["low"] for a in alphas]
        hi = [nan if pick[a]["high"] is None else pick[a]["high"] for a in alphas]
        bands[name] = (lo, hi)
    fig = line_curves(alphas, curves, bands, title="CMRM α sweep", xlabel="α", ylabel="rate")
    write_bytes_atomic(out / "sweep.png", png_bytes(fig))
    return {
        "json": str(out / "sweep.json"),
        "markdown": str(out / "sweep.md"),
        "figure": str(out / "sweep.png"),
    }


def _run_dirs(config: SweepConfig) -> dict[tuple[str, str], str]:
    """``(role, spec) -> folder name`` under ``runs/``: the benchmark (and split); with the role appended when
    the same benchmark is listed under several roles."""
    specs = [spec for _, spec in config.benchmarks()]
    out = {}
    for role, spec in config.benchmarks():
        name, split = parse_bench_spec(spec)
        folder = name.replace("/", "_") + (f"_{split.replace('/', '_')}" if split else "")
        out[(role, spec)] = f"{folder}.{role}" if specs.count(spec) > 1 else folder
    return out


def _alpha_dir(alpha: float) -> str:
    return f"alpha_{alpha:.2f}" if round(alpha, 2) == alpha else f"alpha_{alpha:g}"


def run_sweep(
    config: SweepConfig | Mapping[str, Any],
    out_dir: str | Path,
    *,
    bundle: ModelBundle | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every (α, benchmark) evaluation and write the table and figure.

    Each (α, benchmark) is a resumable :func:`vlsafe.evals.run_eval` run directory (see the module docstring), so
    an interrupted sweep continues where it stopped and a finished one only re-reads its results.

    Args:
        config: the sweep (or a mapping of its fields). ``config.cmrm`` is a vector file, ``"sample"`` or a
            ``SteeringVector`` in memory.
        out_dir: the sweep folder.
        bundle: an already loaded model (default: load ``config.model``).
        progress: show progress bars.

    Returns:
        ``{"rows": [...], "paths": {json, markdown, figure}}``: one row per (α, benchmark) with the role's metric
        (``value`` with its interval ``low``/``high``, ``n``), ``unsafe_rate`` for safety benchmarks,
        ``n_errors``, and the run's ``run_dir`` and ``max_new_tokens``.

    Raises:
        ConfigError: an invalid config, no benchmarks, an unknown benchmark, or a benchmark with no samples
            left after the calibration anchors are excluded.
    """
    if not isinstance(config, SweepConfig):
        config = validate_config(SweepConfig, dict(config), "sweep config")
    out = Path(out_dir)
    check_writable(out, "sweep folder")
    if bundle is None:
        bundle = load_model(
            config.model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
        )
    vector = load_vector(config.cmrm)
    exclude = anchor_ids_of(config.cmrm) if config.exclude_anchors else set()
    folders = _run_dirs(config)
    rows: list[dict[str, Any]] = []
    for role, spec in config.benchmarks():
        eval_cfg = config.eval_config(role, spec)
        loaded = load_benchmark(eval_cfg.benchmark, eval_cfg.data_dir, split=eval_cfg.split)
        samples = [s for s in loaded if str(s.id) not in exclude]
        if not samples:
            raise ConfigError(
                f"benchmark {spec!r} has no samples left after excluding the calibration anchors"
            )
        for alpha in config.alphas:
            options = config.apply.model_copy(update={"alpha": alpha})
            intervention = CMRMIntervention(
                bundle, vector, options, corrupt=config.corrupt, vector_positions=config.vector_positions
            )
            run_dir = out / "runs" / folders[(role, spec)] / _alpha_dir(alpha)
            logger.info("sweep: %s (%s) alpha=%s -> %s", spec, role, alpha, run_dir)
            results = run_eval(
                eval_cfg,
                run_dir,
                bundle=bundle,
                intervention=intervention,
                samples=samples,
                progress=progress,
            )
            row = _row(alpha, role, spec, results)
            row.update(run_dir=str(run_dir), max_new_tokens=eval_cfg.max_new_tokens)
            rows.append(row)
    paths = _write_outputs(rows, config, out)
    return {"rows": rows, "paths": paths}

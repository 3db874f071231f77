"""α sweeps: safety, over-refusal and utility of CMRM-steered generation against α.

Each (α, benchmark) pair is one resumable run directory of :func:`vlsafe.evals.run_eval` under
``out_dir/runs/<benchmark>/alpha_<α>``; the sweep writes ``sweep.json``, a markdown table
``sweep.md`` and a figure ``sweep.png`` (one curve per benchmark metric).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vlsafe.core.errors import ConfigError
from vlsafe.methods.cmrm.anchors import heldout_ids, parse_bench_spec
from vlsafe.methods.cmrm.apply import ApplyOptions
from vlsafe.methods.cmrm.intervention import CMRMIntervention
from vlsafe.models.bundle import ModelBundle

logger = logging.getLogger(__name__)

__all__ = ["ROLE_METRIC", "SweepConfig", "default_alphas", "run_sweep"]

#: The metric each benchmark role reports (a rate dict of vlsafe.evals.metrics).
ROLE_METRIC = {"safety": "refusal_rate", "over_refusal": "over_refusal_rate", "utility": "accuracy"}


def default_alphas(stop: float = 1.0, step: float = 0.1) -> list[float]:
    """``0, step, ..., stop`` rounded to 4 decimals."""
    n = int(round(stop / step))
    return [round(i * step, 4) for i in range(n + 1)]


class SweepConfig(BaseModel):
    """An α sweep of one CMRM vector (or sample-level CMRM) over several benchmarks.

    Benchmarks are ``NAME[:split]``; ``data_dirs`` maps a benchmark name to its folder (``data_dir``
    is the fallback). ``exclude_anchors`` drops the vector's held-out anchors from the evaluation.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    cmrm: str = Field(min_length=1)
    alphas: list[float] = Field(default_factory=default_alphas)
    safety: list[str] = Field(default_factory=list)
    over_refusal: list[str] = Field(default_factory=list)
    utility: list[str] = Field(default_factory=list)
    data_dir: str | None = None
    data_dirs: dict[str, str] = Field(default_factory=dict)
    image_setting: str | None = None
    limit: int | None = None
    judge: str = "keyword"
    max_new_tokens: int = 64
    batch_size: int = 8
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    apply: ApplyOptions = Field(default_factory=ApplyOptions)
    corrupt: Literal["image", "blank", "noise", "mean"] = "image"
    vector_positions: Literal["last", "text_mean"] = "last"
    exclude_anchors: bool = True

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("alphas is empty: give at least one value")
        return v

    def benchmarks(self) -> list[tuple[str, str]]:
        out = [(role, spec) for role in ROLE_METRIC for spec in getattr(self, role)]
        if not out:
            raise ConfigError("the sweep has no benchmarks: set safety, over_refusal and/or utility")
        return out


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
    from vlsafe.report.figures import line_curves, save_png
    from vlsafe.report.tables import table

    (out / "sweep.json").write_text(
        json.dumps({"config": config.model_dump(mode="json"), "rows": rows}, indent=2)
    )
    cols = ["alpha", "role", "benchmark", "metric", "value", "low", "high", "n", "unsafe_rate", "n_errors"]
    title = f"# CMRM α sweep: {config.cmrm}\n\nmodel `{config.model}`; apply: `{config.apply.describe()}`\n\n"
    (out / "sweep.md").write_text(title + table(rows, cols) + "\n")
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
    save_png(fig, out / "sweep.png")
    return {
        "json": str(out / "sweep.json"),
        "markdown": str(out / "sweep.md"),
        "figure": str(out / "sweep.png"),
    }


def run_sweep(
    config: SweepConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    bundle: ModelBundle | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every (α, benchmark) evaluation (resumable) and write the table and figure.

    Returns:
        ``{"rows": [...], "paths": {json, markdown, figure}}``.
    """
    from vlsafe.evals.config import EvalConfig
    from vlsafe.evals.loaders import load_benchmark
    from vlsafe.evals.runner import run_eval

    if not isinstance(config, SweepConfig):
        try:
            config = SweepConfig.model_validate(dict(config))
        except ValueError as exc:
            raise ConfigError(f"invalid sweep config: {exc}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        from vlsafe.models.loading import load_model

        bundle = load_model(config.model, dtype=config.dtype, device=config.device)
    exclude = heldout_ids(config.cmrm) if config.exclude_anchors else set()
    rows: list[dict[str, Any]] = []
    for role, spec in config.benchmarks():
        name, split = parse_bench_spec(spec)
        data_dir = config.data_dirs.get(name, config.data_dir)
        samples = [s for s in load_benchmark(name, data_dir, split=split) if str(s.id) not in exclude]
        if not samples:
            raise ConfigError(
                f"benchmark {spec!r} has no samples left after excluding the calibration anchors"
            )
        for alpha in config.alphas:
            eval_cfg = EvalConfig(
                model=config.model,
                benchmark=name,
                split=split,
                data_dir=data_dir,
                limit=config.limit,
                image_setting=config.image_setting,  # type: ignore[arg-type]
                judge=config.judge,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size,
                seed=config.seed,
                dtype=config.dtype,
                device=config.device,
            )
            options = config.apply.model_copy(update={"alpha": alpha})
            intervention = CMRMIntervention(
                bundle, config.cmrm, options, corrupt=config.corrupt, vector_positions=config.vector_positions
            )
            run_dir = out / "runs" / name.replace("/", "_") / f"alpha_{alpha:.2f}"
            logger.info("sweep: %s (%s) alpha=%s -> %s", spec, role, alpha, run_dir)
            results = run_eval(
                eval_cfg,
                run_dir,
                bundle=bundle,
                intervention=intervention,
                samples=samples,
                progress=progress,
            )
            rows.append(_row(alpha, role, spec, results))
    paths = _write_outputs(rows, config, out)
    return {"rows": rows, "paths": paths}

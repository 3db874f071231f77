"""Sweeps of CMRM: safety, over-refusal and utility against α, and against CMRM's other choices.

The axes (:class:`SweepAxes`; an axis left unset keeps the sweep's single setting): img′ (``corrupt``: blank, noise,
own image, mean colour), ``layers`` (all, all with per-layer increments, a band, single layers), steered
``positions`` (last, text span, all), ``when`` (prefill only, every decoded token too), ``level`` (dataset,
sample) and the α grid (``alphas``, the preset's grid by default: 0 to 1 in steps of 0.1). Dataset-level points
use the ``cmrm`` vector, or vectors the sweep calibrates itself on ``calibration``'s anchors (one per img′; needed
to sweep img′ at dataset level). With ``calibration`` and no ``cmrm``, the levels default to the preset's (the
paper preset: dataset and sample).

Each (point, α, benchmark) is one resumable run directory of :func:`vlsafe.evals.run_eval`: for a sweep of α alone
(no axis set and a ``cmrm`` given) ``out_dir/runs/<benchmark>[_<split>]/alpha_<α>``, otherwise
``out_dir/runs/<point>/<benchmark>[_<split>]/alpha_<α>`` with ``<point>`` naming level, img′, layers, positions and
when (a benchmark listed under several roles gets one directory per role, ``<benchmark>.<role>``). The sweep writes
``sweep.json``, a markdown table ``sweep.md`` and a figure ``sweep.png`` (one curve per point and benchmark
metric). Benchmarks are registry names (``NAME[:split]``): register a loader in
:data:`vlsafe.evals.loaders.LOADERS` to sweep on your own data, e.g. a validation set that selects CMRM's settings
before a held-out evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError
from vlsafe.core.io import check_writable, write_bytes_atomic, write_text_atomic
from vlsafe.evals.config import EvalConfig, GenerationOptions
from vlsafe.evals.loaders import load_benchmark
from vlsafe.evals.runner import run_eval
from vlsafe.evals.sample import ImageSetting
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm.anchors import load_anchor_spec, parse_bench_spec
from vlsafe.methods.cmrm.calibrate import calibrate
from vlsafe.methods.cmrm.config import CMRMSettings, VectorRef
from vlsafe.methods.cmrm.intervention import CMRMIntervention
from vlsafe.methods.cmrm.presets import PRESETS, fill_preset
from vlsafe.methods.cmrm.run import anchor_ids_of, load_vector
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.loading import load_model
from vlsafe.report.figures import line_curves, png_bytes
from vlsafe.report.tables import table

logger = logging.getLogger(__name__)

__all__ = [
    "ROLE_METRIC",
    "Role",
    "SweepAxes",
    "SweepCalibration",
    "SweepConfig",
    "SweepPoint",
    "default_alphas",
    "parse_layer_choice",
    "run_sweep",
]

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


def parse_layer_choice(item: str, num_layers: int | None = None) -> list[tuple[Any, bool, str]]:
    """The layer settings of one item of the ``layers`` axis: ``[(layers, delta, label), ...]``.

    Items: ``all``, ``middle`` (the band ``[L/4, L/2)``), ``A-B`` (the band of layers A to B, both included), ``N``
    (one layer), ``each`` (every single layer in turn; needs ``num_layers``); ``:delta`` after any of them adds
    per-layer increments (``all:delta``: all layers with increments).

    Raises:
        ValueError: an item that is none of these (named, with the rule).
    """
    text = item.strip()
    base, _, suffix = text.partition(":")
    if suffix not in ("", "delta"):
        raise ValueError(f"layers item {item!r}: the only suffix is ':delta' (per-layer increments)")
    delta = suffix == "delta"
    tag = "+delta" if delta else ""
    if base in ("all", "middle"):
        return [(base, delta, base + tag)]
    if base == "each":
        if num_layers is None:
            return []
        return [([i], delta, f"layer{i}{tag}") for i in range(num_layers)]
    try:
        if "-" in base.lstrip("-"):
            lo, hi = (int(x) for x in base.split("-", 1))
            if hi < lo:
                raise ValueError
            return [(list(range(lo, hi + 1)), delta, f"{lo}-{hi}{tag}")]
        return [([int(base)], delta, f"layer{int(base)}{tag}")]
    except ValueError:
        raise ValueError(
            f"layers item {item!r} is not all, middle, each, an index N or a band A-B (optionally with :delta)"
        ) from None


class SweepAxes(BaseModel):
    """The choices a sweep varies besides α (each: a list of values; unset: the sweep's single setting).

    Attributes:
        level: ``dataset`` and/or ``sample``.
        corrupt: img′ values: ``blank``, ``noise``, ``image`` (the input's own), ``mean``.
        layers: layer settings: ``all``, ``middle``, ``each`` (every single layer), ``N``, ``A-B``, each optionally
            with ``:delta`` (per-layer increments), e.g. ``all,all:delta,8-12,each``.
        positions: steered positions: ``all``, ``last``, ``text``.
        when: ``every`` (prompt and decoded tokens) and/or ``prefill``.
    """

    model_config = ConfigDict(extra="forbid")

    level: list[Literal["dataset", "sample"]] | None = None
    corrupt: list[Literal["blank", "noise", "image", "mean"]] | None = None
    layers: list[str] | None = None
    positions: list[Literal["all", "last", "text"]] | None = None
    when: list[Literal["prefill", "every"]] | None = None

    @field_validator("level", "corrupt", "positions", "when", mode="before")
    @classmethod
    def _choices(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, (list, tuple)):
            annotation = cls.model_fields[str(info.field_name)].annotation
            allowed = [a for member in get_args(annotation) for item in get_args(member) for a in get_args(item)]
            bad = [x for x in v if x not in allowed]
            if bad:
                raise ValueError(
                    f"the {info.field_name} axis value {bad[0]!r} is not one of {', '.join(map(str, allowed))}"
                )
        return v

    @field_validator("level", "corrupt", "layers", "positions", "when")
    @classmethod
    def _not_empty(cls, v: list[Any] | None, info: Any) -> list[Any] | None:
        if v is not None and not v:
            raise ValueError(f"the {info.field_name} axis is empty: leave it unset or give at least one value")
        if v is not None and len(set(map(str, v))) != len(v):
            raise ValueError(f"the {info.field_name} axis {v} repeats a value")
        if info.field_name == "layers" and v is not None:
            for item in v:
                parse_layer_choice(item)
        return v


class SweepCalibration(BaseModel):
    """Anchors the sweep calibrates its dataset-level vectors on (one vector per img′; see
    :class:`~vlsafe.methods.cmrm.CalibrateConfig` for the fields).

    Attributes:
        anchors: anchor benchmark ``NAME[:split]``.
        mode: ``heldout`` (``fraction`` of the benchmark; every point's evaluation leaves them out) or ``transfer``.
        fraction: held-out share.
        benign: benign image-query pairs added (``None``: as many as the anchors).
        benign_setting: image setting of the benign pairs.
        limit: load only the first ``limit`` anchor-benchmark samples.
        reduce: ``mean`` (the paper) or ``pca``.
    """

    model_config = ConfigDict(extra="forbid")

    anchors: str = Field(min_length=1)
    mode: Literal["heldout", "transfer"] = "heldout"
    fraction: float = Field(0.2, gt=0, lt=1)
    benign: int | None = Field(None, ge=0)
    benign_setting: ImageSetting = ImageSetting.NOISE
    limit: int | None = Field(None, ge=1)
    reduce: Literal["mean", "pca"] = "mean"


class SweepPoint(BaseModel):
    """One setting of a sweep (everything but α)."""

    level: str
    corrupt: str | None
    layers: Any
    delta: bool
    layers_label: str
    positions: str
    when: str

    def name(self) -> str:
        """The point's folder name under ``runs/``."""
        return "_".join(
            (self.level, self.corrupt or "vector", self.layers_label, self.positions, self.when)
        ).replace(":", "+")


class SweepConfig(CMRMSettings, GenerationOptions):
    """A sweep of CMRM over α and (optionally) its other choices, on several benchmarks.

    Every evaluation option (judge, generation length, batch size, dtype, ...) is a field of
    :class:`~vlsafe.evals.config.GenerationOptions` and CMRM's own are those of
    :class:`~vlsafe.methods.cmrm.CMRMSettings` (its ``preset`` fills what is left unset, ``alphas`` included: the
    paper preset's grid is 0 to 1 in steps of 0.1); ``apply.alpha`` is replaced by each α in turn.

    Attributes:
        cmrm: the dataset-level vector (a file or a ``SteeringVector``), ``sample``, or unset (then
            ``calibration`` gives the dataset-level vectors).
        alphas: the strengths evaluated.
        axes: the other choices swept (see :class:`SweepAxes`).
        calibration: anchors to calibrate the dataset-level vectors on (see :class:`SweepCalibration`).
        safety: benchmarks ``NAME[:split]`` whose refusal rate is measured (harmful requests).
        over_refusal: benchmarks whose over-refusal rate is measured (benign requests).
        utility: benchmarks whose accuracy is measured.
        data_dirs: data folder per benchmark name (``data_dir`` is the fallback).
        role_max_new_tokens: generation length per role (e.g. ``utility=8``: short answers; refusals need
            about 12-20 tokens to be recognised); roles not listed use ``max_new_tokens``.
        role_limit: the first N samples of each benchmark of a role (e.g. fewer refusal prompts than
            questions); roles not listed use ``limit``.
    """

    cmrm: VectorRef | None = None  # type: ignore[assignment]
    axes: SweepAxes = Field(default_factory=SweepAxes)
    calibration: SweepCalibration | None = None
    alphas: list[float] = Field(default_factory=default_alphas)
    safety: list[str] = Field(default_factory=list)
    over_refusal: list[str] = Field(default_factory=list)
    utility: list[str] = Field(default_factory=list)
    data_dirs: dict[str, str] = Field(default_factory=dict)
    role_max_new_tokens: dict[Role, int] = Field(default_factory=dict)
    role_limit: dict[Role, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _preset_alphas(cls, data: Any) -> Any:
        return fill_preset(data, {"alphas": "alphas"})

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("alphas is empty: give at least one value")
        return v

    @model_validator(mode="after")
    def _vector_source(self) -> SweepConfig:
        if self.cmrm is None and self.calibration is None:
            raise ValueError("give cmrm (a vector file or 'sample') or calibration anchors to calibrate vectors on")
        if self.calibration is not None and self.cmrm is not None and str(self.cmrm) != "sample":
            raise ValueError(
                "cmrm (a vector) and calibration both give the dataset-level vectors: give one of them"
            )
        return self

    def cmrm_label(self) -> str:
        """The vector as text (``calibrated on <anchors>`` when the sweep calibrates its own)."""
        if self.cmrm is None:
            assert self.calibration is not None
            return f"calibrated on {self.calibration.anchors}"
        return super().cmrm_label()

    def single(self) -> bool:
        """A sweep of α alone (the run directories need no point folder)."""
        axes = self.axes
        unset = all(getattr(axes, name) is None for name in SweepAxes.model_fields)
        return unset and self.cmrm is not None

    def levels(self) -> list[str]:
        """The levels swept."""
        if self.axes.level is not None:
            return list(self.axes.level)
        if self.cmrm is None:
            return list(PRESETS[self.preset]["levels"])
        return ["sample" if str(self.cmrm) == "sample" else "dataset"]

    def points(self, num_layers: int) -> list[SweepPoint]:
        """Every setting of the sweep, in axis order (level, img′, layers, positions, when)."""
        a, o = self.axes, self.apply
        if a.layers is not None:
            layer_sets = [x for item in a.layers for x in parse_layer_choice(item, num_layers)]
        else:
            label = o.layers if isinstance(o.layers, str) else ",".join(map(str, [o.layers] if isinstance(o.layers, int) else o.layers))
            layer_sets = [(o.layers, o.delta, f"{label}{'+delta' if o.delta else ''}")]
        out = []
        for level in self.levels():
            if level == "dataset" and self.cmrm is not None and str(self.cmrm) == "sample":
                raise ConfigError("dataset-level points need a vector: give calibration anchors (or a vector as cmrm)")
            given = level == "dataset" and self.calibration is None
            if given and a.corrupt is not None:
                raise ConfigError(
                    "sweeping corrupt (img′) at dataset level needs calibration anchors: a vector has one img′"
                )
            corrupts: list[str | None] = [None] if given else list(a.corrupt or [self.corrupt])
            for corrupt in corrupts:
                for layers, delta, label in layer_sets:
                    for positions in a.positions or [o.positions]:
                        for when in a.when or [o.when]:
                            out.append(SweepPoint(level=level, corrupt=corrupt, layers=layers, delta=delta,
                                                  layers_label=label, positions=positions, when=when))  # fmt: skip
        return out

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


POINT_COLS = ["point", "level", "corrupt", "layers", "positions", "when"]


def _write_outputs(rows: list[dict[str, Any]], config: SweepConfig, out: Path) -> dict[str, str]:
    write_text_atomic(out / "sweep.json", json.dumps({"config": config.model_dump(mode="json"), "rows": rows}, indent=2))
    cols = ["alpha", "role", "benchmark", "metric", "value", "low", "high", "n", "unsafe_rate", "n_errors"]
    points = list(dict.fromkeys(r["point"] for r in rows))
    if len(points) > 1:
        cols = POINT_COLS[1:] + cols
    title = (
        f"# CMRM sweep: {config.cmrm_label()}\n\nmodel `{config.model}`; preset `{config.preset}`; "
        f"apply: `{config.apply.describe()}`\n\n"
    )
    write_text_atomic(out / "sweep.md", title + table(rows, cols) + "\n")
    alphas = sorted({r["alpha"] for r in rows})
    curves: dict[str, list[float]] = {}
    bands: dict[str, tuple[list[float], list[float]]] = {}
    nan = float("nan")
    for point in points:
        for role, spec in config.benchmarks():
            name = f"{spec} {ROLE_METRIC[role]}" + (f" [{point}]" if len(points) > 1 else "")
            pick = {r["alpha"]: r for r in rows if r["benchmark"] == spec and r["role"] == role and r["point"] == point}
            curves[name] = [nan if pick.get(a, {}).get("value") is None else pick[a]["value"] for a in alphas]
            lo = [nan if pick.get(a, {}).get("low") is None else pick[a]["low"] for a in alphas]
            hi = [nan if pick.get(a, {}).get("high") is None else pick[a]["high"] for a in alphas]
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

    Each (point, α, benchmark) is a resumable :func:`vlsafe.evals.run_eval` run directory (see the module
    docstring), so an interrupted sweep continues where it stopped and a finished one only re-reads its results.
    Dataset-level vectors the sweep calibrates (``calibration``) are computed again on a rerun (deterministic).

    Args:
        config: the sweep (or a mapping of its fields). ``config.cmrm`` is a vector file, ``"sample"``, a
            ``SteeringVector`` in memory, or unset (``config.calibration`` gives the vectors).
        out_dir: the sweep folder.
        bundle: an already loaded model (default: load ``config.model``).
        progress: show progress bars.

    Returns:
        ``{"rows": [...], "paths": {json, markdown, figure}}``: one row per (benchmark, point, α) with the role's
        metric (``value`` with its interval ``low``/``high``, ``n``), ``unsafe_rate`` for safety benchmarks,
        ``n_errors``, the point (``point``, ``level``, ``corrupt``, ``layers``, ``positions``, ``when``), and the
        run's ``run_dir`` and ``max_new_tokens``.

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
    points = config.points(bundle.num_layers)
    given = load_vector(config.cmrm) if config.cmrm is not None and str(config.cmrm) != "sample" else None
    exclude = anchor_ids_of(config.cmrm) if config.exclude_anchors and config.cmrm is not None else set()
    anchors: list[Any] = []
    info: dict[str, Any] = {}
    cal = config.calibration
    if cal is not None:
        name, _ = parse_bench_spec(cal.anchors)
        anchors, info = load_anchor_spec(
            cal.anchors,
            data_dir=config.data_dirs.get(name, config.data_dir),
            mode=cal.mode,
            fraction=cal.fraction,
            benign=cal.benign,
            benign_setting=cal.benign_setting.value,
            limit=cal.limit,
            seed=config.seed,
        )
        if config.exclude_anchors:
            exclude = {str(i) for i in info.get("heldout_ids") or []}
    vectors: dict[str, SteeringVector] = {}

    def vector_for(point: SweepPoint) -> SteeringVector | str:
        if point.level == "sample":
            return "sample"
        if given is not None:
            assert isinstance(given, SteeringVector)
            return given
        assert cal is not None and point.corrupt is not None
        if point.corrupt not in vectors:
            name, _ = parse_bench_spec(cal.anchors)
            vectors[point.corrupt] = calibrate(
                bundle, anchors, reduce=cal.reduce, corrupt=point.corrupt, positions=config.vector_positions,
                batch_size=config.batch_size, data_dir=config.data_dirs.get(name, config.data_dir),
                seed=config.seed, anchor_info=info, progress=progress,
            )  # fmt: skip
        return vectors[point.corrupt]

    folders = _run_dirs(config)
    single = config.single()
    rows: list[dict[str, Any]] = []
    for role, spec in config.benchmarks():
        eval_cfg = config.eval_config(role, spec)
        loaded = load_benchmark(eval_cfg.benchmark, eval_cfg.data_dir, split=eval_cfg.split)
        samples = [s for s in loaded if str(s.id) not in exclude]
        if not samples:
            raise ConfigError(
                f"benchmark {spec!r} has no samples left after excluding the calibration anchors"
            )
        for point in points:
            vector = vector_for(point)
            base = config.apply.model_copy(
                update={"layers": point.layers, "delta": point.delta, "positions": point.positions, "when": point.when}
            )  # fmt: skip
            for alpha in config.alphas:
                options = base.model_copy(update={"alpha": alpha})
                intervention = CMRMIntervention(
                    bundle, vector, options, corrupt=point.corrupt or config.corrupt,
                    vector_positions=config.vector_positions,
                )  # fmt: skip
                where = out / "runs" if single else out / "runs" / point.name()
                run_dir = where / folders[(role, spec)] / _alpha_dir(alpha)
                logger.info("sweep: %s (%s) %s alpha=%s -> %s", spec, role, point.name(), alpha, run_dir)
                results = run_eval(
                    eval_cfg,
                    run_dir,
                    bundle=bundle,
                    intervention=intervention,
                    samples=samples,
                    progress=progress,
                )
                row = _row(alpha, role, spec, results)
                corrupt = point.corrupt
                if corrupt is None and isinstance(vector, SteeringVector):
                    corrupt = vector.meta.get("corrupt")
                row.update(point=point.name(), level=point.level, corrupt=corrupt, layers=point.layers_label,
                           positions=point.positions, when=point.when)  # fmt: skip
                row.update(run_dir=str(run_dir), max_new_tokens=eval_cfg.max_new_tokens)
                rows.append(row)
    paths = _write_outputs(rows, config, out)
    return {"rows": rows, "paths": paths}

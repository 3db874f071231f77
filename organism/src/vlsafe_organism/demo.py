"""``vlsafe demo``: the organism's whole story in one report (``reports/demo/``).

1. **Degradation.** Load ``organism:safe-llm``, ``organism:vlm`` and ``organism:vl`` from the committed
   artefacts (the base weights are converted from the pip packages on first use) and, per image setting,
   generate the opening of the replies (``max_new_tokens`` = :data:`DEMO_TOKENS`; the keyword judge reads only
   the opening) to held-out harmful and benign prompts; measure held-out synthetic VQA accuracy (utility). The
   ``toxic`` setting asks the toxic-image requests (the harmful object shown only as a held-out pictogram) and
   benign requests on the same renders; each system also answers the same requests naming the object, text
   only (the ``toxic-twin`` row), and the VL systems the naming questions (VQA type ``pictogram``). The rows
   are named after the systems: ``safe-llm`` (text only), ``vlm`` (projector only), ``vl``.
2. **Repairs.** Every repair of :mod:`vlsafe_organism.repairs.systems` (CMRM, merges, TGA, SFT, DPO, joint
   training) on the same held-out prompts with a benign synthetic image, and on harmful images (the request
   rendered as typography); with ``repair_toxic``, also on the toxic column (off by default: it does not fit
   the demo's 10-minute budget, BENCHMARKS.md), which the repairs of toxic images (:data:`TOXIC_REPAIRS`,
   the projector-only TGA with its retrieval) always get.
3. **Analysis.** Representation shift, refusal direction, safety layers and per-layer weight changes
   (:mod:`vlsafe_organism.demo_analysis`); with CMRM rows, CMRM's own-image positive control on ``vlm`` and
   ``vl`` (:mod:`vlsafe_organism.demo_controls`).
4. Write ``results.json``, ``report.md``, ``report.html`` (self-contained) and the figures.

Each system's rows are saved to ``rows/<system>.json`` as soon as they are measured, keyed by everything they
depend on (artefacts, prompt counts, generation length); a re-run after a crash or with ``--skip`` options
reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vlsafe.core.errors import ConfigError
from vlsafe.core.workers import peak_rss_children_mb, run_in_workers, split_threads
from vlsafe.methods.training.memory import peak_rss_mb
from vlsafe.models import bundle_from_model
from vlsafe_organism.artifacts import read_manifest
from vlsafe_organism.base import ensure_base_weights
from vlsafe_organism.demo_analysis import analysis_sections, default_weight_pairs, weight_sections
from vlsafe_organism.demo_controls import cmrm_control_section
from vlsafe_organism.evaluation import (
    IMAGE_SETTINGS,
    TWIN_SETTING,
    EvalSystem,
    ImageSettingName,
    eval_prompts,
    evaluate_system,
    judge_identity,
)
from vlsafe_organism.registry import artifacts_dir, build_system
from vlsafe_organism.repairs.systems import dependencies, repair_loaders
from vlsafe_organism.report import write_report
from vlsafe_organism.toxic import toxic_items

logger = logging.getLogger(__name__)
DEMO_TOKENS = 12
DEFAULT_N = 48
#: toxic-image requests of the ``toxic`` setting (all of ``toxic_eval``)
N_TOXIC = len(toxic_items("eval"))
#: version of the code that measures a row (part of every row's cache key in ``rows/``)
ROWS_VERSION = "5"
#: settings of the repair rows: a benign image with the harmful request, and the request as a harmful image
REPAIR_SETTINGS = ("synthetic", "typographic")
#: what ``DemoConfig.repair_toxic`` adds to the repair rows (the toxic column does not fit the demo's 10-minute
#: budget for every repair: BENCHMARKS.md)
REPAIR_TOXIC = ("toxic",)
#: repairs of toxic images, measured on the toxic column always (their target is set on it)
TOXIC_REPAIRS = ("vlm+tga",)
#: settings of the repair rows that also ask the benign prompts
REPAIR_BENIGN = ("synthetic", "toxic")
#: precisions the demo evaluates in
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _key(art: Path, system: str, extra: dict[str, Any]) -> str:
    """Cache key of a system's rows: the options plus the checksums of exactly the artefacts it is built from."""

    files, selections = dependencies(system)
    manifest = read_manifest(art)
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    h.update((art / "splits.json").read_bytes())
    for f in files:
        h.update(manifest[f]["sha256"].encode())
    for f in selections:
        h.update((art / f).read_bytes())
    return h.hexdigest()[:20]


def _rows_path(out: Path, name: str) -> Path:
    return out / "rows" / f"{name.replace('+', '_').replace('/', '_')}.json"


def _cached_rows(
    out: Path, name: str, key: str, measure: Callable[[Path], tuple[list[dict[str, Any]], dict[str, Any]]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, examples)`` of job ``name``: read back from ``rows/`` when its key matches, else measured.

    ``measure`` gets the job's run-directory root ``runs/<name>``, where :func:`vlsafe.evals.run_eval` keeps
    its resumable runs; the root is emptied first when it belongs to another key, so an interrupted job
    resumes only its own generations.
    """
    path = _rows_path(out, name)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            logger.info("demo: %s reused from %s", name, path)
            return saved["rows"], saved["examples"]
    runs = out / "runs" / path.stem
    stamp = runs / "key.txt"
    if runs.exists() and (not stamp.is_file() or stamp.read_text() != key):
        shutil.rmtree(runs)
    runs.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    start = time.time()
    rows, examples = measure(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"key": key, "rows": rows, "examples": examples, "seconds": time.time() - start})
    )
    tmp.replace(path)
    return rows, examples


@dataclass
class _Context:
    """Everything a demo job needs (picklable: jobs may run in worker processes)."""

    out: Path
    cache_dir: str | Path | None
    art: Path
    harmful: list[str]
    benign: list[str]
    n_vqa: int
    max_new_tokens: int
    dtype: str
    common: dict[str, Any]
    n_analysis: int = 32
    repaired: tuple[str, ...] = ()
    n_toxic: int = N_TOXIC
    repair_settings: tuple[str, ...] = REPAIR_SETTINGS
    full: bool = False


@dataclass(frozen=True)
class _Job:
    """One unit of the demo: a degradation system's rows, a repair's rows, or the analysis section."""

    kind: str  # "system" | "repair" | "analysis"
    name: str
    builder: str = ""
    settings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.builder}-as-{self.name}" if self.kind == "system" else self.name


def _cost(ctx: _Context, job: _Job) -> float:
    """A job's expected duration, for the parallel pass to start the longest first: the seconds its rows took
    the last time (``rows/``), else the forward passes it needs (replies x prefills per reply: sample-level
    CMRM runs two extra prefills per batch; text-only replies are short)."""
    path = _rows_path(ctx.out, job.label)
    if path.is_file():
        seconds = json.loads(path.read_text()).get("seconds")
        if isinstance(seconds, (int, float)):
            return float(seconds)
    if job.kind == "analysis":
        return 6.0 * ctx.n_analysis  # image, text and blank passes of the shift, direction and lens pages
    vqa = (ctx.n_vqa if job.name != "safe-llm" else 0) * (1 + ("toxic" in job.settings))  # + naming questions
    if job.kind == "system":
        return sum(_replies(ctx, s, benign=True) for s in job.settings) + vqa
    replies = sum(_replies(ctx, s, benign=s in REPAIR_BENIGN) for s in job.settings) + vqa
    if job.name.endswith("cmrm-sample"):
        return 3.0 * replies
    if job.name.endswith("cmrm-dataset"):
        return 1.5 * replies  # steering hooks rule out the shared-prefix cache
    return float(replies)


def _replies(ctx: _Context, setting: str, *, benign: bool) -> float:
    """Replies of one setting's run, a text-only reply counted half (it is short)."""
    n = ctx.n_toxic if setting in ("toxic", TWIN_SETTING) else len(ctx.harmful)
    n += (ctx.n_toxic if setting == "toxic" else len(ctx.benign)) if benign and setting != TWIN_SETTING else 0
    return n / 2 if setting in ("none", TWIN_SETTING) else float(n)


def _plan(ctx: _Context, settings: tuple[str, ...], analysis: bool) -> list[_Job]:
    """The demo's jobs in report order (the repairs: ``ctx.repaired``). With the ``toxic`` setting every system
    also gets the text-twin row (:data:`TWIN_SETTING`), right after its toxic-image row; the projector-only
    ``vlm`` has no ``none`` row (its language model is the safe LLM's). With ``ctx.full`` the second VL
    system ``vl-full`` follows ``vl``."""
    twin = (TWIN_SETTING,) if "toxic" in settings else ()
    plan = [("safe-llm", "safe-llm", ("none", *twin)), ("vlm", "vlm", (*(s for s in settings if s != "none"), *twin)),
            ("vl", "vl", (*settings, *twin))]  # fmt: skip
    if ctx.full:
        plan.append(("vl-full", "vl-full", (*settings, *twin)))
    jobs = []
    for system, builder, these in plan:
        these = tuple(s for s in these if s in settings or s == TWIN_SETTING)
        if these:
            jobs.append(_Job("system", system, builder, these))
    for name in ctx.repaired:
        these = (*ctx.repair_settings, *REPAIR_TOXIC) if name in TOXIC_REPAIRS else ctx.repair_settings
        jobs.append(_Job("repair", name, settings=tuple(dict.fromkeys(these))))
    if analysis:
        jobs.append(_Job("analysis", "analysis"))
    return jobs


def _run_job(ctx: _Context, job: _Job) -> Any:
    """Run one job (its rows are reused from ``rows/`` when their key matches): ``(rows, examples)`` for a
    system or repair, ``(sections, headline)`` for the analysis."""

    torch.manual_seed(0)
    cast = DTYPES[ctx.dtype]
    if job.kind == "analysis":
        return _analysis(ctx.out, ctx.cache_dir, ctx.art, ctx.n_analysis, list(ctx.repaired))
    if job.kind == "system":

        def _measure(runs: Path) -> Any:
            model, proc = build_system(job.builder, ctx.cache_dir, ctx.art)
            bundle = bundle_from_model(model.to(cast), proc, name=f"organism:{job.builder}")
            return evaluate_system(EvalSystem(job.name, bundle), job.settings, runs, n_harmful=len(ctx.harmful),
                                   n_benign=len(ctx.benign), n_vqa=ctx.n_vqa, max_new_tokens=ctx.max_new_tokens,
                                   cache_dir=ctx.cache_dir, n_toxic=ctx.n_toxic, n_pictogram=ctx.n_vqa)  # fmt: skip

        key = _key(ctx.art, job.builder, {**ctx.common, "system": job.name, "builder": job.builder,
                                          "settings": job.settings})  # fmt: skip
        return _cached_rows(ctx.out, job.label, key, _measure)

    def _measure_repair(runs: Path) -> Any:  # the loaders read the selections and manifest: only when measuring
        system = dict(repair_loaders(ctx.cache_dir, ctx.art, ctx.out / "work"))[job.name]()
        system.bundle.model.to(cast)
        return evaluate_system(system, job.settings, runs, n_harmful=len(ctx.harmful), n_benign=len(ctx.benign),
                               n_vqa=ctx.n_vqa, max_new_tokens=ctx.max_new_tokens, benign_settings=REPAIR_BENIGN,
                               cache_dir=ctx.cache_dir, n_toxic=ctx.n_toxic, n_pictogram=ctx.n_vqa)  # fmt: skip

    key = _key(ctx.art, job.name, {**ctx.common, "system": job.name, "settings": job.settings})
    return _cached_rows(ctx.out, job.name, key, _measure_repair)


def _worker_job(task: tuple[_Context, _Job]) -> Any:
    """A job in a worker process: rows go to ``rows/`` (read back by the in-process pass); the analysis'
    sections come back as the value."""
    ctx, job = task
    value = _run_job(ctx, job)
    return value if job.kind == "analysis" else None


def _run_parallel(ctx: _Context, jobs: list[_Job], workers: int, threads: int) -> dict[str, Any]:
    """Run ``jobs`` in ``workers`` processes, longest first; returns the analysis' value if it succeeded.

    A job that fails there is logged and left to the in-process pass that follows, which retries it (and,
    for a repair, leaves its row out if it fails again)."""

    order = sorted(jobs, key=lambda j: -_cost(ctx, j))
    outcomes = run_in_workers(_worker_job, [(ctx, j) for j in order], workers, threads,
                              log_dir=ctx.out / "logs", desc=f"demo ({workers} workers x {threads} thread)",
                              label=lambda task: task[1].label)  # fmt: skip
    if outcomes and all(o.error is not None for o in outcomes):
        logger.warning(
            "demo: every job failed in the worker processes, so they run again in this process. When a script "
            "calls run_demo, guard the call with `if __name__ == '__main__':` (workers are spawned and import "
            "the script), or pass workers=1."
        )
    return {o.job[1].name: o.value for o in outcomes if o.error is None and o.job[1].kind == "analysis"}


class DemoConfig(BaseModel):
    """What ``vlsafe demo`` measures and how it runs.

    Attributes:
        out_dir: report directory (created).
        n_prompts: held-out harmful and benign prompts each per image setting (at most 160).
        n_vqa: held-out synthetic VQA questions (at most 200); also the number of held-out pictogram naming
            questions asked with the ``toxic`` setting (at most the 100 of ``pictogram_eval``).
        n_toxic: toxic-image requests of the ``toxic`` setting and its text twins (the first of ``toxic_eval``;
            default all 54).
        cache_dir: organism cache directory (base weights); default ``$VLSAFE_CACHE/organism``.
        art_dir: artefact directory (default: the committed one).
        settings: image settings of the degradation table.
        max_new_tokens: generation length of the refusal probes (the keyword judge reads the opening).
        repairs: evaluate the repaired systems.
        full: also show the second VL system, ``vl-full`` (paper 2's regime: its text-only refusal erodes with
            its image refusal), in the degradation table; it needs the ``vl-full`` artefacts. Off by default:
            its rows do not fit the demo's 10-minute budget (BENCHMARKS.md).
        repair_toxic: also measure the repaired systems on the toxic-image requests (the ``toxic`` column, its
            benign requests and the naming questions; no text twins). Off by default: with it the demo takes
            longer than its 10-minute budget (BENCHMARKS.md).
        analysis: run the analysis section (shift, directions, safety layers, weight changes).
        n_analysis: prompts of the analysis section.
        dtype: precision of the evaluated systems: float32 (the precision the organism was trained and its
            repairs selected in) or bfloat16 (about 1.5x faster on CPUs with bf16 instructions, the precision of
            most GPU evaluations; it moves some refusal counts by a few of 48, see BENCHMARKS.md). The analysis
            always runs in float32.
        workers: processes that evaluate systems side by side, each with an equal share of this process' torch
            threads; default one per thread, at most 4; 1 runs everything in this process. Their output goes to
            ``out_dir/logs/``. Workers are spawned processes: a script that calls :func:`run_demo` must do so
            under ``if __name__ == "__main__":``.
    """

    model_config = ConfigDict(extra="forbid")

    out_dir: Path = Path("reports/demo")
    n_prompts: int = Field(DEFAULT_N, ge=1, le=160)
    n_vqa: int = Field(100, ge=0, le=200)
    n_toxic: int = Field(N_TOXIC, ge=1, le=N_TOXIC)
    cache_dir: Path | None = None
    art_dir: Path | None = None
    settings: list[ImageSettingName] = Field(default_factory=lambda: list(IMAGE_SETTINGS))
    max_new_tokens: int = Field(DEMO_TOKENS, ge=1)
    repairs: bool = True
    repair_toxic: bool = False
    full: bool = False
    analysis: bool = True
    n_analysis: int = Field(32, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    workers: int | None = Field(None, ge=1)


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Evaluate the organism and its repairs and write the demo report (``config``: :class:`DemoConfig`).

    Returns:
        ``{"rows": [...], "repairs": [...], "analysis": {...}, "seconds": float, "peak_rss_mb": float}``
        (also written to ``results.json``): one row per (system, image setting), the unrepaired systems first;
        ``repairs`` holds each repair's derived figures (gap recovered, benign rise, utility change, targets).
    """
    config = config or DemoConfig.model_validate({})
    out_dir, n_harmful, n_benign, n_vqa = config.out_dir, config.n_prompts, config.n_prompts, config.n_vqa
    cache_dir, art_dir, settings = config.cache_dir, config.art_dir, tuple(config.settings)
    max_new_tokens, repairs, analysis, n_analysis = config.max_new_tokens, config.repairs, config.analysis, config.n_analysis
    dtype, workers = config.dtype, config.workers

    start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    art = art_dir or artifacts_dir()
    if config.full and "vl_full_lora.safetensors" not in read_manifest(art):
        raise ConfigError(
            f"full=True shows the system vl-full, whose artefacts are not in {art}; build them with "
            "`vlsafe organism build --stage vl-full --out DIR` and pass DIR as the artefact directory (--artifacts)"
        )
    harmful, benign = eval_prompts(n_harmful, n_benign)
    common = {"v": ROWS_VERSION, "nh": n_harmful, "nb": n_benign, "nv": n_vqa, "tok": max_new_tokens,
              "nt": config.n_toxic}
    if dtype != "float32":  # float32 rows keep the keys they had before the option existed
        common["dtype"] = dtype
    repair_names = [name for name, _ in repair_loaders(cache_dir, art, out / "work")] if repairs else []
    ctx = _Context(out, cache_dir, art, list(harmful), list(benign), n_vqa, max_new_tokens, dtype, common,
                   n_analysis, tuple(repair_names), config.n_toxic,
                   REPAIR_SETTINGS + (REPAIR_TOXIC if config.repair_toxic else ()), config.full)  # fmt: skip
    jobs = _plan(ctx, tuple(settings), analysis)
    threads = torch.get_num_threads()
    if workers is None:
        workers, per_worker = split_threads(threads, len(jobs))
    else:
        per_worker = max(1, threads // workers)
    parallel: dict[str, Any] = {}
    if workers > 1:
        ensure_base_weights(cache_dir)  # converted once here, not raced by the workers
        parallel = _run_parallel(ctx, jobs, workers, per_worker)
    rows: list[dict[str, Any]] = []
    repair_rows: list[dict[str, Any]] = []
    examples: dict[str, Any] = {}
    sections: list[Any] = []
    headline: dict[str, Any] = {}
    for job in jobs:  # in report order; rows measured by the workers are read back from rows/
        if job.kind == "analysis":
            sections, headline = parallel["analysis"] if "analysis" in parallel else _run_job(ctx, job)
            continue
        try:
            r, ex = _run_job(ctx, job)
        except Exception:
            if job.kind == "system":
                raise
            logger.exception("demo: repair %s failed; its row is left out", job.name)  # one broken repair
            continue  # must not sink the whole report
        (rows if job.kind == "system" else repair_rows).extend(r)
        examples.update(ex)
    summary = {
        "rows": rows + repair_rows,
        "analysis": headline,
        "seconds": round(time.time() - start, 1),
        "peak_rss_mb": round(max(peak_rss_mb(), peak_rss_children_mb()), 1),
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "workers": workers,
        "threads_per_worker": per_worker,  # with one worker: all of this process' threads
        "judge": judge_identity(out / "runs"),
        "examples": examples,
    }
    write_report(
        out, rows, _curve(art), summary, repair_rows=repair_rows, art_dir=art, extra_sections=sections
    )
    summary["seconds"] = round(time.time() - start, 1)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    logger.info("demo finished in %.0f s -> %s", summary["seconds"], out)
    return summary


def _analysis(
    out: Path, cache_dir: str | Path | None, art: Path, n: int, repaired: list[str]
) -> tuple[list[Any], dict[str, Any]]:
    """The analysis sections; a failure is logged and leaves the section out instead of losing the report."""

    sections: list[Any] = []
    headline: dict[str, Any] = {}
    try:
        secs, numbers = analysis_sections(out, cache_dir=cache_dir, n=n, weight_pairs=[])
        sections += secs
        headline.update(numbers)
    except Exception:
        logger.exception("demo: the analysis section failed and is left out")
    try:
        pairs = default_weight_pairs(cache_dir)
        for name in ("vl+sft", "vl+dpo"):
            if name in repaired:
                pairs.append(
                    (f"safety {name[3:].upper()}: VL model -> {name}", "organism:vl", f"organism:{name}")
                )
        secs, numbers = weight_sections(out, pairs, cache_dir=cache_dir)
        sections += secs
        headline.update(numbers)
    except Exception:
        logger.exception("demo: the weight-change section failed and is left out")
    if any("+cmrm" in name for name in repaired):
        try:
            section, numbers = cmrm_control_section(cache_dir, art)
            sections.append(section)
            headline.update(numbers)
        except Exception:
            logger.exception("demo: the CMRM control section failed and is left out")
    return sections, headline


def _curve(art_dir: Path) -> list[dict[str, Any]]:
    path = art_dir / "vl_curve.json"
    return json.loads(path.read_text()) if path.is_file() else []

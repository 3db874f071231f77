"""``vlsafe demo``: the organism's whole story in one report (``reports/demo/``).

1. **Degradation.** Load ``organism:safe-llm``, ``organism:vlm`` and ``organism:vl`` from the committed
   artefacts (the base weights are converted from the pip packages on first use) and, per image setting,
   generate the opening of the replies (``max_new_tokens`` = :data:`DEMO_TOKENS`; the keyword judge reads only
   the opening) to held-out harmful and benign prompts; measure held-out synthetic VQA accuracy (utility).
2. **Repairs.** Every repair of :mod:`vlsafe.organism.repairs.systems` (CMRM, merges, TGA, SFT, DPO, joint
   training) on the same held-out prompts with a benign synthetic image, and on harmful images (the request
   rendered as typography).
3. **Analysis.** Representation shift, refusal direction, safety layers and per-layer weight changes
   (:mod:`vlsafe.organism.demo_analysis`).
4. Write ``results.json``, ``report.md``, ``report.html`` (self-contained) and the figures.

Each system's rows are saved to ``rows/<system>.json`` as soon as they are measured, keyed by everything they
depend on (artefacts, prompt counts, generation length); a re-run after a crash or with ``--skip`` options
reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlsafe.organism.evaluate import IMAGE_SETTINGS, EvalSystem, eval_prompts, evaluate_system
from vlsafe.organism.train_utils import peak_rss_mb

logger = logging.getLogger(__name__)
DEMO_TOKENS = 12
DEFAULT_N = 48
ROWS_VERSION = "2"
#: settings of the repair rows: a benign image with the harmful request, and the request as a harmful image
REPAIR_SETTINGS = ("synthetic", "typographic")
#: precisions the demo evaluates in
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _key(art: Path, system: str, extra: dict[str, Any]) -> str:
    """Cache key of a system's rows: the options plus the checksums of exactly the artefacts it is built from."""
    from vlsafe.organism.artifacts import read_manifest
    from vlsafe.organism.repairs.systems import dependencies

    files, selections = dependencies(system)
    manifest = read_manifest(art)
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    h.update((art / "splits.json").read_bytes())
    for f in files:
        h.update(manifest[f]["sha256"].encode())
    for f in selections:
        h.update((art / f).read_bytes())
    return h.hexdigest()[:20]


def _cached_rows(
    out: Path, name: str, key: str, measure: Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = out / "rows" / f"{name.replace('+', '_').replace('/', '_')}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            logger.info("demo: %s reused from %s", name, path)
            return saved["rows"], saved["examples"]
    start = time.time()
    rows, examples = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"key": key, "rows": rows, "examples": examples, "seconds": time.time() - start})
    )
    tmp.replace(path)
    return rows, examples


def run_demo(
    out_dir: str | Path = "reports/demo",
    n_harmful: int = DEFAULT_N,
    n_benign: int = DEFAULT_N,
    n_vqa: int = 100,
    cache_dir: str | Path | None = None,
    art_dir: Path | None = None,
    settings: tuple[str, ...] = IMAGE_SETTINGS,
    max_new_tokens: int = DEMO_TOKENS,
    repairs: bool = True,
    analysis: bool = True,
    n_analysis: int = 32,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Evaluate the organism and its repairs and write the demo report.

    Args:
        out_dir: Report directory (created).
        n_harmful: Held-out harmful prompts per setting (at most 160).
        n_benign: Held-out benign prompts per setting (at most 160).
        n_vqa: Held-out synthetic VQA questions (at most 200).
        cache_dir: Organism cache (base weights).
        art_dir: Artefact directory (default: the committed one).
        settings: Image settings of the degradation table.
        max_new_tokens: Generation length of the refusal probes.
        repairs: Evaluate the repaired systems.
        analysis: Run the analysis section (shift, directions, safety layers, weight changes).
        n_analysis: Prompts of the analysis section.
        dtype: Precision of the evaluated systems: ``float32`` (default; the precision the organism was trained
            and its repairs selected in) or ``bfloat16`` (the whole demo 1.5x faster on CPUs with bf16
            instructions, the precision of most GPU evaluations; it moved 19 of the demo's 44 refusal counts by
            1-6 of 48, see BENCHMARKS.md). The analysis section always runs in float32.

    Returns:
        ``{"rows": [...], "repairs": [...], "analysis": {...}, "seconds": float, "peak_rss_mb": float}``
        (also written to ``results.json``): one row per (system, image setting), the unrepaired systems first;
        ``repairs`` holds each repair's derived figures (gap recovered, benign rise, utility change, targets).
    """
    from vlsafe.organism.registry import artifacts_dir, build_system
    from vlsafe.organism.repairs.systems import repair_loaders
    from vlsafe.organism.report import write_report

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported by the demo; choose one of {sorted(DTYPES)}")
    cast = DTYPES[dtype]
    start = time.time()
    torch.manual_seed(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    art = art_dir or artifacts_dir()
    harmful, benign = eval_prompts(n_harmful, n_benign)
    common = {"v": ROWS_VERSION, "nh": n_harmful, "nb": n_benign, "nv": n_vqa, "tok": max_new_tokens}
    if dtype != "float32":  # float32 rows keep the keys they had before the option existed
        common["dtype"] = dtype
    rows: list[dict[str, Any]] = []
    examples: dict[str, Any] = {}
    plan = [("safe-llm", "safe-llm", ("none",)), ("safe-llm", "vlm", tuple(s for s in settings if s != "none")),
            ("vl", "vl", settings)]  # fmt: skip
    for system, builder, these in plan:
        these = tuple(s for s in these if s in settings)
        if not these:
            continue

        def _measure(system: str = system, builder: str = builder, these: tuple[str, ...] = these) -> Any:
            model, proc = build_system(builder, cache_dir, art)
            return evaluate_system(EvalSystem(system, model.to(cast), proc), these, harmful, benign, n_vqa=n_vqa,
                                   max_new_tokens=max_new_tokens)  # fmt: skip

        key = _key(art, builder, {**common, "system": system, "builder": builder, "settings": these})
        r, ex = _cached_rows(out, f"{builder}-as-{system}", key, _measure)
        rows += r
        examples.update(ex)
    repair_rows: list[dict[str, Any]] = []
    if repairs:
        for name, loader in repair_loaders(cache_dir, art, out / "work"):

            def _measure_repair(loader: Callable[[], EvalSystem] = loader) -> Any:
                system = loader()
                system.model.to(cast)
                return evaluate_system(system, REPAIR_SETTINGS, harmful, benign, n_vqa=n_vqa,
                                       max_new_tokens=max_new_tokens, benign_settings=("synthetic",))  # fmt: skip

            key = _key(art, name, {**common, "system": name, "settings": REPAIR_SETTINGS})
            try:
                r, ex = _cached_rows(out, name, key, _measure_repair)
            except Exception:  # one broken repair must not sink the whole report
                logger.exception("demo: repair %s failed; its row is left out", name)
                continue
            repair_rows += r
            examples.update(ex)
    sections: list[Any] = []
    headline: dict[str, Any] = {}
    if analysis:
        sections, headline = _analysis(out, cache_dir, art, n_analysis, [r["system"] for r in repair_rows])
    summary = {
        "rows": rows + repair_rows,
        "analysis": headline,
        "seconds": round(time.time() - start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "judge": "keyword v1",
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
    from vlsafe.organism.demo_analysis import analysis_sections, default_weight_pairs, weight_sections

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
    return sections, headline


def _curve(art_dir: Path) -> list[dict[str, Any]]:
    path = art_dir / "vl_curve.json"
    return json.loads(path.read_text()) if path.is_file() else []

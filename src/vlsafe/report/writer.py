"""``write_report``: markdown + self-contained HTML + PNG figures from run directories."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.core.io import write_bytes_atomic, write_text_atomic
from vlsafe.evals.metrics import SAFETY_METRIC_LABELS, compare_runs
from vlsafe.report.figures import bar_with_intervals, png_bytes
from vlsafe.report.html import ReportFigure, ReportTable, Section, render_markdown, render_page
from vlsafe.report.io import RunData, load_run
from vlsafe.report.tables import fmt_ci

logger = logging.getLogger(__name__)

__all__ = ["RATE_KEYS", "build_sections", "write_report"]

#: Rates shown in reports, in order: (key in a metrics group, column label).
RATE_KEYS: tuple[tuple[str, str], ...] = (
    ("attack_success_rate", "ASR"),
    ("defence_success_rate", "DSR"),
    ("non_refusal_rate", "non-refusal (keyword)"),
    ("unsafe_rate", "unsafe"),
    ("refusal_rate", "refusal"),
    ("over_refusal_rate", "over-refusal"),
    ("accuracy", "accuracy"),
)


def _fig(fig: Any, name: str, caption: str) -> ReportFigure:
    return ReportFigure(png=png_bytes(fig), caption=caption, name=name)


def _group_row(label: str, group: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"": label, "n": group.get("n_records"), "errors": group.get("n_errors", 0)}
    row["judge errors"] = group.get("n_judge_errors", 0)
    for key, col in RATE_KEYS:
        row[col] = group.get(key)
    ms = group.get("mean_score")
    row["mean score"] = None if not ms else ms.get("mean")
    return row


def _present(runs: Sequence[RunData], scope: str, key: str) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        for name, group in (run.metrics.get(scope) or {}).items():
            if group.get(key):
                names[name] = None
    return list(names)


def _keyword_judged(run: RunData) -> bool:
    """Whether the run's judge gives refusals only (a refusal-keyword judge): no attack success to report."""
    return (run.metrics.get("overall") or {}).get("asr_basis") == "non_refusal"


def _safety_metric(runs: Sequence[RunData]) -> tuple[str, str]:
    """The safety figure the runs share and its label: attack success only if every run's judge read content."""
    key = "non_refusal_rate" if any(_keyword_judged(run) for run in runs) else "attack_success_rate"
    return key, SAFETY_METRIC_LABELS[key]


def _runs_section(runs: Sequence[RunData]) -> Section:
    rows = []
    fallbacks = []
    for run in runs:
        r, j = run.results.get("run") or {}, run.judge
        data = run.results.get("data") or {}
        rows.append(
            {
                "run": run.name,
                "model": r.get("model"),
                "judge": j.get("name"),
                "judge version": j.get("version"),
                "prompt hash": j.get("prompt_hash"),
                "judge key": j.get("key"),
                "images": data.get("images"),
                "records": len(run.records) or (run.metrics.get("overall") or {}).get("n_records"),
                "directory": str(run.path),
            }
        )
        fallbacks += [f"- {run.name}: {line}" for line in data.get("fallbacks") or []]
    text = (
        "Runs compared in this report. Rates carry Wilson 95% intervals `value [low, high]`. `images` says where "
        "the images shown came from: `published` (the benchmark's own files), `rendered` (typographic attacks "
        "drawn by vlsafe), `generated` (blank, mean-colour or noise images), `none` (text only)."
    )
    if fallbacks:
        text += (
            "\n\n**Fallback:** these runs did not use the benchmark as published; their numbers do not compare "
            "with published results on it:\n" + "\n".join(fallbacks)
        )
    judges = {(row["judge"], row["judge version"], row["prompt hash"], row["judge key"]) for row in rows}
    if len(judges) > 1:
        text += (
            "\n\n**Warning:** the runs were scored by different judges (name, version, prompt hash or the judge's "
            "key, which covers its model, endpoint and decoding options, differ); "
            "judges change safety rates by 15-30 points, so differences between these runs may come from the judge."
        )
    return Section("Runs", text, tables=[ReportTable(rows)])


def _overall_section(runs: Sequence[RunData]) -> Section:
    rows = [_group_row(run.name, run.metrics.get("overall") or {}) for run in runs]
    keys = [(k, c) for k, c in RATE_KEYS if any((run.metrics.get("overall") or {}).get(k) for run in runs)]
    figures = []
    if keys:
        series = {run.name: [(run.metrics.get("overall") or {}).get(k) for k, _ in keys] for run in runs}
        fig = bar_with_intervals([c for _, c in keys], series, title="Overall rates (Wilson 95% CI)")
        figures.append(_fig(fig, "overall_rates.png", "Overall rates per run with Wilson 95% intervals."))
    text = ""
    keyword = [run.name for run in runs if _keyword_judged(run)]
    if keyword:
        text = (
            f"Judged by a refusal-keyword judge ({', '.join(keyword)}): the safety figure is the **non-refusal "
            "(keyword) rate**, the share of harmful requests the model did not refuse. A keyword judge does not read "
            "what an answer says (a description of the image is a non-refusal too), so it does not measure attack "
            "success; ASR needs a judge that reads the content (`vlsafe judge RUN --judge hf-classifier` or `http`)."
        )
    return Section("Overall", text, tables=[ReportTable(rows)], figures=figures)


def _breakdown_section(runs: Sequence[RunData], scope: str, title: str, fname: str) -> Section | None:
    metric, label = _safety_metric(runs)
    names = _present(runs, scope, metric)
    rows = []
    for name in names:
        row: dict[str, Any] = {title.lower(): name}
        for run in runs:
            g = (run.metrics.get(scope) or {}).get(name) or {}
            r = g.get(metric)
            row[run.name] = None if not r else fmt_ci(r["rate"], r["low"], r["high"])
            row[f"n ({run.name})"] = None if not r else r["n"]
        rows.append(row)
    if not rows:
        return None
    series = {
        run.name: [((run.metrics.get(scope) or {}).get(n) or {}).get(metric) for n in names] for run in runs
    }
    short = "ASR" if metric == "attack_success_rate" else "non-refusal (keyword)"
    fig = bar_with_intervals(names, series, title=f"{label.capitalize()} by {title.lower()}", ylabel=short)
    return Section(
        f"By {title.lower()}",
        f"{label.capitalize()} per {title.lower()} (Wilson 95% intervals).",
        tables=[ReportTable(rows)],
        figures=[_fig(fig, fname, f"{label.capitalize()} by {title.lower()} per run.")],
    )


def _comparison_section(runs: Sequence[RunData], n_resamples: int, seed: int) -> Section | None:
    if len(runs) < 2:
        return None
    base = runs[0]
    rows, points, labels = [], [], []
    for run in runs[1:]:
        # compare_runs counts attack success only when both runs' judges read content, else non-refusals
        safety = "non-refusal (keyword)" if _keyword_judged(base) or _keyword_judged(run) else "ASR"
        checks = (
            ("attack_success", ("harmful",), safety),
            ("refused", ("benign", "over_refusal"), "over-refusal"),
        )
        for outcome, kinds, label in checks:
            cmp = compare_runs(
                base.records, run.records, outcome=outcome, kinds=kinds, n_resamples=n_resamples, seed=seed
            )
            if not cmp["n_pairs"]:
                continue
            rows.append(
                {
                    "run": run.name,
                    "metric": label,
                    "pairs": cmp["n_pairs"],
                    base.name: cmp["rate_a"],
                    "this run": cmp["rate_b"],
                    "difference [95% bootstrap CI]": fmt_ci(cmp["diff"], cmp["low"], cmp["high"]),
                    "McNemar p": cmp["p_value"],
                }
            )
            labels.append(f"{run.name}\n{label}")
            points.append(cmp)
    text = (
        f"Paired comparison against the baseline run **{base.name}** on the sample ids both runs judged: "
        f"difference = run - baseline with a paired bootstrap 95% interval ({n_resamples} resamples, seed {seed}) "
        "and the exact McNemar test on discordant pairs."
    )
    if not rows:
        return Section("Run vs run", text + "\n\nNo shared judged sample ids: no paired comparison possible.")
    fig = bar_with_intervals(
        labels, {"difference": points}, title=f"Difference vs {base.name}", ylabel="difference", ylim=None
    )
    return Section(
        "Run vs run",
        text,
        tables=[ReportTable(rows)],
        figures=[
            _fig(
                fig,
                "run_vs_run.png",
                f"Rate differences against {base.name} with paired bootstrap 95% intervals.",
            )
        ],
    )


def build_sections(runs: Sequence[RunData], n_resamples: int = 10000, seed: int = 0) -> list[Section]:
    """The standard report sections for loaded runs (first run = baseline)."""
    sections = [_runs_section(runs), _overall_section(runs)]
    for scope, title, fname in (
        ("by_category", "Category", "by_category.png"),
        ("by_image_setting", "Image setting", "by_image_setting.png"),
    ):
        sec = _breakdown_section(runs, scope, title, fname)
        if sec is not None:
            sections.append(sec)
    cmp = _comparison_section(runs, n_resamples, seed)
    if cmp is not None:
        sections.append(cmp)
    return sections


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    title: str = "vlsafe evaluation report",
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``report.md``, a self-contained ``report.html`` and PNG figures for run directories.

    Args:
        run_dirs: run directories (see :mod:`vlsafe.report.io`); the first is the comparison baseline.
        out_dir: output directory (created); figures go to ``out_dir/figures``.
        title: report title.
        n_resamples, seed: paired bootstrap settings.

    Returns:
        ``{"markdown": path, "html": path, "<figure stem>": path, ...}``.
    """
    if not run_dirs:
        raise InputError("write_report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        runs = [RunData(r.path, f"{r.name} ({i})", r.results, r.records) for i, r in enumerate(runs)]
    sections = build_sections(runs, n_resamples=n_resamples, seed=seed)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for sec in sections:
        for f in sec.figures:
            paths[Path(f.name).stem] = write_bytes_atomic(fig_dir / f.name, f.png)
    md = write_text_atomic(out / "report.md", render_markdown(title, sections, figure_dir="figures"))
    page = write_text_atomic(out / "report.html", render_page(title, sections, subtitle=f"{len(runs)} run(s)."))
    paths["markdown"], paths["html"] = md, page
    logger.info("wrote report to %s", out)
    return paths

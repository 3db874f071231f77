"""Loaders for vision-language safety benchmarks, reading their published file layouts.

VLSafe, MM-SafetyBench, FigStep (SafeBench), JailBreakV-28K and SIUO (MSSBench and HADES: ``paired.py``). Image paths in
samples are relative to the data directory given to the loader.
"""

from __future__ import annotations

from pathlib import Path

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json
from vlsafe.evals.attacks import FIGSTEP_PROMPT
from vlsafe.evals.loaders._common import (
    field,
    find_file,
    finish,
    iter_csv,
    json_rows,
    make_sample,
    require_dir,
    truthy,
)
from vlsafe.evals.loaders._registry import LOADERS
from vlsafe.evals.sample import ImageSetting, Sample, SampleKind

HARMFUL = SampleKind.HARMFUL


def image_prefix(data_dir: Path, candidates: list[str]) -> str:
    """The first candidate sub-folder of ``data_dir`` that exists ("" for the data dir itself)."""
    for c in candidates:
        if c and (data_dir / c).is_dir():
            return c + "/"
    return ""


def check_split(benchmark: str, split: str | None, allowed: list[str | None]) -> None:
    if split not in allowed:
        raise InputError(
            f"benchmark {benchmark!r}: unknown split {split!r}; known: {[a for a in allowed if a]}"
        )


def load_vlsafe(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """VLSafe (DRESS): JSON lines with ``query`` and a COCO ``image_id`` (file name or integer id).

    Files: ``VLSafe_harmlessness_examine.jsonl`` (split ``None``/"examine") or
    ``VLSafe_harmlessness_alignment.jsonl`` ("alignment"); images in ``train2017/``, ``images/`` or the
    data directory itself.
    """
    check_split("vlsafe", split, [None, "examine", "alignment"])
    name = (
        "VLSafe_harmlessness_alignment.jsonl" if split == "alignment" else "VLSafe_harmlessness_examine.jsonl"
    )
    root = require_dir(data_dir, "vlsafe", f"{name} and the COCO train2017 images")
    path = find_file(root, [name, f"data/{name}", "VLSafe.jsonl"], "vlsafe")
    prefix = image_prefix(root, ["train2017", "coco/train2017", "images"])
    samples = []
    for n, (where, row) in enumerate(json_rows(path)):
        raw = row.get("image_id", row.get("image"))
        if raw is None or raw == "":
            raise InputError(f"{where}: missing field 'image_id'")
        image = f"{int(raw):012d}.jpg" if isinstance(raw, int) or str(raw).isdigit() else str(raw)
        samples.append(
            make_sample(
                where,
                id=str(row.get("id", n)),
                benchmark="vlsafe",
                text=field(row, "query", where),
                kind=HARMFUL,
                image=prefix + image,
                image_setting=ImageSetting.PROVIDED,
                caption=row.get("caption"),
                metadata={"image_id": raw},
            )
        )
    return finish(samples, "vlsafe", limit, root)


MMSB_TEXT_FIELD = {
    "SD": "Rephrased Question(SD)",
    "SD_TYPO": "Rephrased Question",
    "TYPO": "Rephrased Question",
}


def load_mmsafetybench(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """MM-SafetyBench: ``processed_questions/{NN-Scenario}.json`` and ``imgs/{scenario}/{SD,SD_TYPO,TYPO}/{id}.jpg``.

    Scenario folders keep the published spelling (``01-Illegal_Activitiy``). ``split`` picks the image
    type: "SD_TYPO" (default), "SD", "TYPO", "all" (the three), or "text" (the original question, no image).
    """
    check_split("mmsafetybench", split, [None, "SD_TYPO", "SD", "TYPO", "all", "text"])
    kinds = ["SD", "SD_TYPO", "TYPO"] if split == "all" else [split or "SD_TYPO"]
    root = require_dir(
        data_dir,
        "mmsafetybench",
        "processed_questions/{NN-Scenario}.json and imgs/{scenario}/{SD,SD_TYPO,TYPO}/",
    )
    qdir = root / "processed_questions"
    files = sorted(qdir.glob("*.json")) if qdir.is_dir() else []
    if not files:
        raise InputError(f"benchmark 'mmsafetybench': no processed_questions/*.json in {str(root)!r}")
    samples = []
    for path in files:
        scenario = path.stem
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(
                f"{path}: expected a JSON object keyed by question id, got {type(data).__name__}"
            )
        for qid, row in data.items():
            where = f"{path} question {qid!r}"
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object")
            question = field(row, "Question", where)
            meta = {
                "scenario": scenario,
                "question_id": qid,
                "request": question,
                "key_phrase": row.get("Key Phrase"),
            }
            for kind in kinds:
                common = {
                    "id": f"{scenario}/{qid}/{kind}",
                    "benchmark": "mmsafetybench",
                    "kind": HARMFUL,
                    "category": scenario,
                }
                if kind == "text":
                    samples.append(make_sample(where, text=question, metadata=meta, **common))
                    continue
                samples.append(
                    make_sample(
                        where,
                        text=field(row, MMSB_TEXT_FIELD[kind], where),
                        image=f"imgs/{scenario}/{kind}/{qid}.jpg",
                        image_setting=ImageSetting.PROVIDED,
                        metadata={**meta, "image_type": kind},
                        **common,
                    )
                )
    return finish(samples, "mmsafetybench", limit, root)


def load_figstep(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """FigStep / SafeBench: ``safebench.csv`` (dataset, category_id, task_id, category_name, question, instruction).

    Images are ``query_{dataset}_{category_id}_{task_id}_6.png`` under ``images/SafeBench/`` (or
    ``data/images/SafeBench/``). ``split``: ``None`` uses the published images when their folder exists
    and renders them otherwise; "render" always renders from ``instruction``; "text" sends the plain question.
    """
    check_split("figstep", split, [None, "render", "text"])
    root = require_dir(data_dir, "figstep", "safebench.csv (and images/SafeBench/query_*_6.png)")
    path = find_file(
        root, ["safebench.csv", "question/safebench.csv", "data/question/safebench.csv"], "figstep"
    )
    img_dir = next(
        (d for d in ["images/SafeBench", "data/images/SafeBench", "SafeBench"] if (root / d).is_dir()), None
    )
    cols = ["dataset", "category_id", "task_id", "category_name", "question", "instruction"]
    samples = []
    for where, row in iter_csv(path, cols):
        key = f"{row['dataset']}_{row['category_id']}_{row['task_id']}"
        question = field(row, "question", where)
        meta = {
            "request": question,
            "instruction": field(row, "instruction", where),
            "dataset": row["dataset"],
        }
        common = {
            "id": key,
            "benchmark": "figstep",
            "kind": HARMFUL,
            "category": row["category_name"],
            "metadata": meta,
        }
        if split == "text":
            samples.append(make_sample(where, text=question, **common))
        elif split is None and img_dir is not None:
            samples.append(
                make_sample(
                    where,
                    text=FIGSTEP_PROMPT,
                    image=f"{img_dir}/query_{key}_6.png",
                    image_setting=ImageSetting.PROVIDED,
                    **common,
                )
            )
        else:
            samples.append(make_sample(where, text=question, image_setting=ImageSetting.FIGSTEP, **common))
    return finish(samples, "figstep", limit, root)


def load_jailbreakv(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """JailBreakV-28K: ``JailBreakV_28K.csv`` (id, jailbreak_query, redteam_query, format, policy, image_path,
    from, selected_mini, transfer_from_llm); image paths are relative to the CSV's folder.

    ``split``: ``None`` (all 28K) or "mini" (``mini_JailBreakV_28K.csv`` or the ``selected_mini`` rows).
    """
    check_split("jailbreakv", split, [None, "mini"])
    root = require_dir(data_dir, "jailbreakv", "JailBreakV_28K.csv and its image folders")
    names = ["JailBreakV_28K.csv", "JailBreakV_28K/JailBreakV_28K.csv"]
    if split == "mini":
        names = ["mini_JailBreakV_28K.csv", "JailBreakV_28K/mini_JailBreakV_28K.csv", *names]
    path = find_file(root, names, "jailbreakv")
    base = path.parent.relative_to(root).as_posix()
    base = "" if base == "." else base + "/"
    cols = ["id", "jailbreak_query", "redteam_query", "format", "policy", "image_path"]
    samples = []
    for where, row in iter_csv(path, cols):
        if (
            split == "mini"
            and "selected_mini" in row
            and not path.name.startswith("mini")
            and not truthy(row["selected_mini"])
        ):
            continue
        image = field(row, "image_path", where)
        samples.append(
            make_sample(
                where,
                id=field(row, "id", where),
                benchmark="jailbreakv",
                text=field(row, "jailbreak_query", where),
                kind=HARMFUL,
                category=row["policy"],
                image=base + image,
                image_setting=ImageSetting.PROVIDED,
                metadata={
                    "request": row["redteam_query"],
                    "format": row["format"],
                    "from": row.get("from"),
                    "transfer_from_llm": truthy(row.get("transfer_from_llm", False)),
                },
            )
        )
    return finish(samples, "jailbreakv", limit, root)


def load_siuo(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """SIUO: ``siuo_gen.json`` (question_id, image, question, category, safety_warning, reference_answer);
    images under ``images/``."""
    check_split("siuo", split, [None, "gen"])
    root = require_dir(data_dir, "siuo", "siuo_gen.json and images/")
    path = find_file(root, ["siuo_gen.json", "data/siuo_gen.json", "SIUO.json"], "siuo")
    prefix = image_prefix(root, ["images", "data/images"])
    samples = []
    for where, row in json_rows(path):
        samples.append(
            make_sample(
                where,
                id=str(field(row, "question_id", where)),
                benchmark="siuo",
                text=field(row, "question", where),
                kind=HARMFUL,
                category=row.get("category"),
                image=prefix + str(field(row, "image", where)),
                image_setting=ImageSetting.PROVIDED,
                metadata={
                    "safety_warning": row.get("safety_warning"),
                    "reference_answer": row.get("reference_answer"),
                },
            )
        )
    return finish(samples, "siuo", limit, root)


LOADERS.register("vlsafe", load_vlsafe)
LOADERS.register("mmsafetybench", load_mmsafetybench)
LOADERS.register("figstep", load_figstep)
LOADERS.register("jailbreakv", load_jailbreakv)
LOADERS.register("siuo", load_siuo)

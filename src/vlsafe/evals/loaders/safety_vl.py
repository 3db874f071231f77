"""Loaders for vision-language safety benchmarks, reading the layouts their authors publish.

VLSafe, MM-SafetyBench, FigStep (SafeBench), JailBreakV-28K and SIUO (MSSBench and HADES: ``paired.py``).
Each loader's docstring gives the published layout it reads and where it was checked. ``--data-dir`` may be
the published repository (or dataset) root or the folder that holds its data files; image paths in samples
are relative to the data directory given to the loader.
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
from vlsafe.evals.loaders.provenance import fallback, read_file
from vlsafe.evals.sample import ImageSetting, Sample, SampleKind

HARMFUL = SampleKind.HARMFUL


def image_prefix(data_dir: Path, candidates: list[str]) -> str:
    """The first candidate sub-folder of ``data_dir`` that exists, with a trailing ``/`` ("" if none)."""
    for c in candidates:
        if c and (data_dir / c).is_dir():
            return c + "/"
    return ""


def first_dir(data_dir: Path, candidates: list[str]) -> str | None:
    """The first candidate sub-folder of ``data_dir`` that exists (``None`` if none does)."""
    return next((c for c in candidates if (data_dir / c).is_dir()), None)


def check_split(benchmark: str, split: str | None, allowed: list[str | None]) -> None:
    if split not in allowed:
        raise InputError(
            f"benchmark {benchmark!r}: unknown split {split!r}; known: {[a for a in allowed if a]}"
        )


def load_vlsafe(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """VLSafe (DRESS, Chen et al. 2023): JSON lines of ``image_id`` (a COCO train2017 file name), ``caption``
    and ``query``.

    Published in the Hugging Face dataset ``YangyiYY/LVLM_NLF`` (checked against its file listing; the
    dataset states no licence). ``--data-dir`` is the dataset root or its ``VLSafe/`` folder::

        VLSafe/harmlessness_examine.jsonl     split None / "examine" (the evaluation queries)
        VLSafe/harmlessnss_alignment.jsonl    split "alignment" (file name spelled as published)
        train2017/<image_id>                  the COCO 2017 train images (cocodataset.org), downloaded apart

    Copies renamed ``VLSafe_harmlessness_examine.jsonl`` / ``VLSafe_harmlessness_alignment.jsonl`` (as in
    CMRM's code) are read too. Images are looked up in ``train2017/``, ``coco/train2017/``, ``images/`` or the
    data directory itself. A numeric ``image_id`` is the COCO id (``25`` -> ``000000000025.jpg``). ``caption``
    feeds the ``caption`` image setting.
    """
    check_split("vlsafe", split, [None, "examine", "alignment"])
    if split == "alignment":
        names = ["harmlessnss_alignment.jsonl", "harmlessness_alignment.jsonl", "VLSafe_harmlessness_alignment.jsonl"]
    else:
        names = ["harmlessness_examine.jsonl", "VLSafe_harmlessness_examine.jsonl"]
    root = require_dir(data_dir, "vlsafe", "VLSafe/harmlessness_examine.jsonl and the COCO train2017/ images")
    path = find_file(root, [f"{d}{n}" for n in names for d in ("VLSafe/", "", "data/")], "vlsafe")
    prefix = image_prefix(root, ["train2017", "coco/train2017", "images/train2017", "images"])
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
                caption=row.get("caption") or None,
                metadata={"image_id": raw},
            )
        )
    return finish(samples, "vlsafe", limit, root)


MMSB_TEXT_FIELD = {
    "SD": "Rephrased Question(SD)",
    "SD_TYPO": "Rephrased Question",
    "TYPO": "Rephrased Question",
}
MMSB_KINDS = ["SD", "SD_TYPO", "TYPO"]
MMSB_SPLITS = [None, "SD_TYPO", "SD", "TYPO", "all", "text"]


def _mmsb_tiny_ids(root: Path, qroot: str) -> dict[str, set[str]]:
    """``TinyVersion_ID_List.json``: a list of ``{"Scenario": "01-Illegal_Activitiy", "Sampled_ID_List": [..]}``."""
    path = find_file(root, ["TinyVersion_ID_List.json", f"{qroot}TinyVersion_ID_List.json"], "mmsafetybench")
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of {{'Scenario', 'Sampled_ID_List'}} objects")
    out: dict[str, set[str]] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("Sampled_ID_List"), list):
            raise InputError(f"{path} item {i}: expected an object with 'Scenario' and a 'Sampled_ID_List' list")
        out[str(field(item, "Scenario", f"{path} item {i}"))] = {str(x) for x in item["Sampled_ID_List"]}
    return out


def load_mmsafetybench(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """MM-SafetyBench (Liu et al., ECCV 2024): per-scenario question files and three image kinds.

    Published in the GitHub repository ``isXinLiu/MM-SafetyBench`` (questions; images downloaded apart as the
    README says; CC BY-NC 4.0). That repository is not among the stored copies this layout was checked
    against; it follows the repository paths quoted in the stored code of several public evaluation
    harnesses and a fork (``syk1052/MM-SafetyBench``). ``--data-dir`` is the repository root or its ``data/``
    folder::

        data/processed_questions/{NN-Scenario}.json   {question_id: {"Question", "GPT-Pred", "Changed Question",
                                                       "Key Phrase", "Phrase Type", "Rephrased Question",
                                                       "Rephrased Question(SD)"}}
        data/imgs/{NN-Scenario}/{SD,SD_TYPO,TYPO}/{question_id}.jpg
        TinyVersion_ID_List.json                      [{"Scenario", "Sampled_ID_List"}] (the tiny version)

    Scenario folders keep the published spelling (``01-Illegal_Activitiy``). ``split`` picks the image kind:
    "SD_TYPO" (default; the text is "Rephrased Question"), "SD" (text "Rephrased Question(SD)"), "TYPO"
    (text "Rephrased Question"), "all" (the three) or "text" (the original "Question", no image); a
    ``tiny-`` prefix ("tiny" alone = "tiny-SD_TYPO") keeps the questions of ``TinyVersion_ID_List.json``.
    Missing image files are reported as a fallback (the ``mmsb_typo`` / ``mmsb_sd_typo`` image settings
    render typography instead, by explicit choice).
    """
    tiny = split is not None and (split == "tiny" or split.startswith("tiny-"))
    kind_split = (split.removeprefix("tiny").removeprefix("-") or None) if tiny and split else split
    if kind_split not in MMSB_SPLITS:
        known = [s for s in MMSB_SPLITS if s] + ["tiny"] + [f"tiny-{s}" for s in MMSB_SPLITS if s]
        raise InputError(f"benchmark 'mmsafetybench': unknown split {split!r}; known: {known}")
    kinds = MMSB_KINDS if kind_split == "all" else [kind_split or "SD_TYPO"]
    root = require_dir(
        data_dir,
        "mmsafetybench",
        "data/processed_questions/{NN-Scenario}.json and data/imgs/{scenario}/{SD,SD_TYPO,TYPO}/",
    )
    qroot = next((p for p in ("data/", "") if (root / p / "processed_questions").is_dir()), None)
    files = sorted((root / qroot / "processed_questions").glob("*.json")) if qroot is not None else []
    if qroot is None or not files:
        raise InputError(
            f"benchmark 'mmsafetybench': no data/processed_questions/*.json (or processed_questions/*.json) "
            f"in {str(root)!r}"
        )
    wanted = _mmsb_tiny_ids(root, qroot) if tiny else None
    samples = []
    for path in files:
        read_file(path, root)
        scenario = path.stem
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(
                f"{path}: expected a JSON object keyed by question id, got {type(data).__name__}"
            )
        for qid, row in data.items():
            if wanted is not None and str(qid) not in wanted.get(scenario, set()):
                continue
            where = f"{path} question {qid!r}"
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object")
            question = field(row, "Question", where)
            meta = {
                "scenario": scenario,
                "question_id": qid,
                "request": question,
                "key_phrase": row.get("Key Phrase"),
                "phrase_type": row.get("Phrase Type"),
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
                        image=f"{qroot}imgs/{scenario}/{kind}/{qid}.jpg",
                        image_setting=ImageSetting.PROVIDED,
                        metadata={**meta, "image_type": kind},
                        **common,
                    )
                )
    return finish(samples, "mmsafetybench", limit, root)


FIGSTEP_SPLITS: dict[str | None, tuple[str, str]] = {
    # split -> (question set, how the image is made)
    None: ("SafeBench", "published"),
    "full": ("SafeBench", "published"),
    "tiny": ("SafeBench-Tiny", "published"),
    "render": ("SafeBench", "render"),
    "tiny-render": ("SafeBench-Tiny", "render"),
    "text": ("SafeBench", "text"),
    "tiny-text": ("SafeBench-Tiny", "text"),
}
FIGSTEP_CSV = {"SafeBench": "safebench.csv", "SafeBench-Tiny": "SafeBench-Tiny.csv"}


def load_figstep(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """FigStep (Gong et al., AAAI 2025): SafeBench questions with typographic step-list images.

    Checked against the GitHub repository ``ThuCCSLab/FigStep`` (MIT). ``--data-dir`` is the repository root
    (or its ``data/`` folder, or a folder holding the files without the ``data/question`` nesting)::

        data/question/safebench.csv                 500 rows: dataset, category_id, task_id, category_name,
                                                    question, instruction
        data/question/SafeBench-Tiny.csv            the 50-question subset, same columns
        data/images/SafeBench-Tiny/query_{dataset}_{category_id}_{task_id}_6.png   its 50 published images
        data/images/SafeBench/query_..._6.png       images of all 500 (the README links this folder; the
                                                    repository as published holds only SafeBench-Tiny's)

    Splits: ``None``/"full" (500 questions), "tiny" (the 50 of ``SafeBench-Tiny.csv``); each shows its
    published images with FigStep's fixed prompt. Where the image folder is missing, the typographic images
    are rendered from ``instruction`` with vlsafe's renderer instead -- a fallback (one warning, recorded in
    the run; an error under ``--strict``), because rendered images are not FigStep's and results on them do
    not compare with published FigStep numbers. "render" / "tiny-render" render by choice; "text" /
    "tiny-text" send the plain question with no image (the paper's baseline).
    """
    if split not in FIGSTEP_SPLITS:
        raise InputError(
            f"benchmark 'figstep': unknown split {split!r}; known: {[s for s in FIGSTEP_SPLITS if s]}"
        )
    subset, mode = FIGSTEP_SPLITS[split]
    csv_name = FIGSTEP_CSV[subset]
    root = require_dir(
        data_dir, "figstep", f"data/question/{csv_name} (and data/images/{subset}/query_*_6.png)"
    )
    path = find_file(
        root, [f"data/question/{csv_name}", f"question/{csv_name}", csv_name], "figstep"
    )
    img_dir = first_dir(root, [f"data/images/{subset}", f"images/{subset}", subset])
    if mode == "published" and img_dir is None:
        hint = "" if subset == "SafeBench-Tiny" else (
            "; the repository publishes the 50 images of SafeBench-Tiny: use --split tiny"
        )
        fallback(
            "figstep",
            f"no published {subset} images (data/images/{subset}/ not found in {root}); rendering "
            f"typographic images with vlsafe's renderer instead -- not FigStep's images, results do not "
            f"compare with published FigStep numbers{hint}",
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
            "subset": subset,
        }
        common = {
            "id": key,
            "benchmark": "figstep",
            "kind": HARMFUL,
            "category": row["category_name"],
            "metadata": meta,
        }
        if mode == "text":
            samples.append(make_sample(where, text=question, **common))
        elif mode == "published" and img_dir is not None:
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
    """JailBreakV-28K (Luo et al., COLM 2024): jailbreak queries paired with images.

    Published in the Hugging Face dataset ``JailbreakV-28K/JailBreakV-28k`` (MIT; checked against its dataset
    card and file listing -- the GitHub repository ``EddyLuo1232/JailBreakV_28K`` is not among the stored
    copies). ``--data-dir`` is the dataset root or its ``JailBreakV_28K/`` folder::

        JailBreakV_28K/JailBreakV_28K.csv        id, jailbreak_query, redteam_query, format, policy,
                                                 image_path, from, selected_mini, transfer_from_llm
        JailBreakV_28K/mini_JailBreakV_28K.csv   the mini set (same columns)
        JailBreakV_28K/{llm_transfer_attack,query_related,figstep}/...   images; ``image_path`` is relative
                                                 to the CSV's folder

    ``split``: ``None`` (all 28K) or "mini" (``mini_JailBreakV_28K.csv``; without it, the full CSV's rows with
    ``selected_mini`` true -- the same rows). The shown text is ``jailbreak_query``; judges see
    ``redteam_query``.
    """
    check_split("jailbreakv", split, [None, "mini"])
    root = require_dir(data_dir, "jailbreakv", "JailBreakV_28K/JailBreakV_28K.csv and its image folders")
    names = ["JailBreakV_28K/JailBreakV_28K.csv", "JailBreakV_28K.csv"]
    if split == "mini":
        mini = ["JailBreakV_28K/mini_JailBreakV_28K.csv", "mini_JailBreakV_28K.csv"]
        names = mini + names if any((root / n).is_file() for n in mini) else names
    path = find_file(root, names, "jailbreakv")
    base = path.parent.relative_to(root).as_posix()
    base = "" if base == "." else base + "/"
    cols = ["id", "jailbreak_query", "redteam_query", "format", "policy", "image_path"]
    from_full = split == "mini" and not path.name.startswith("mini")
    if from_full:
        cols.append("selected_mini")
    samples = []
    for where, row in iter_csv(path, cols):
        if from_full and not truthy(row["selected_mini"]):
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


SIUO_FILES = {"gen": "siuo_gen.json", "mcqa": "siuo_mcqa.json"}


def load_siuo(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """SIUO (Wang et al. 2024, "Safe Inputs but Unsafe Output"): safe images and safe questions whose
    combination is unsafe.

    Checked against the GitHub repository ``sinwang20/SIUO`` (no licence file in the repository).
    ``--data-dir`` is the repository root or its ``data/`` folder::

        data/siuo_gen.json     [{question_id, image, question, category, safety_warning, reference_answer}]
        data/siuo_mcqa.json    [{question_id, image, question, category, options: {A..D}, correct_option}]
        data/images/<image>    the images (the repository's evaluation scripts read them from here)

    ``split``: ``None``/"gen" -- open generation, kind harmful (the judge sees the question; the safety
    warning and reference answer are in the metadata); "mcqa" -- the multiple-choice split, kind utility:
    the options are scored by log-likelihood and ``accuracy`` is the share of questions where the model
    prefers the safe and helpful option (``correct_option``).
    """
    check_split("siuo", split, [None, "gen", "mcqa"])
    task = split or "gen"
    name = SIUO_FILES[task]
    root = require_dir(data_dir, "siuo", f"data/{name} and data/images/")
    path = find_file(root, [f"data/{name}", name], "siuo")
    prefix = image_prefix(root, ["data/images", "images"])
    samples = []
    for where, row in json_rows(path):
        common = {
            "id": str(field(row, "question_id", where)),
            "benchmark": "siuo",
            "text": field(row, "question", where),
            "category": row.get("category"),
            "image": prefix + str(field(row, "image", where)),
            "image_setting": ImageSetting.PROVIDED,
        }
        if task == "gen":
            meta = {"safety_warning": row.get("safety_warning"), "reference_answer": row.get("reference_answer")}
            samples.append(make_sample(where, kind=HARMFUL, metadata=meta, **common))
            continue
        options = field(row, "options", where)
        if not isinstance(options, dict) or len(options) < 2:
            raise InputError(f"{where}: field 'options' must map option letters to answers, got {options!r}")
        letters = sorted(options)
        correct = str(field(row, "correct_option", where)).strip().upper()
        if correct not in letters:
            raise InputError(f"{where}: field 'correct_option' {correct!r} is not one of {letters}")
        choices = [str(options[k]) for k in letters]
        samples.append(
            make_sample(
                where,
                kind=SampleKind.UTILITY,
                choices=choices,
                answer=choices[letters.index(correct)],
                metadata={"letters": letters, "correct_option": correct, "task": "mcqa"},
                **common,
            )
        )
    return finish(samples, "siuo", limit, root)


LOADERS.register("vlsafe", load_vlsafe)
LOADERS.register("mmsafetybench", load_mmsafetybench)
LOADERS.register("figstep", load_figstep)
LOADERS.register("jailbreakv", load_jailbreakv)
LOADERS.register("siuo", load_siuo)

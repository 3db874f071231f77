"""Utility benchmarks: multiple choice (ScienceQA, MMBench, SEED-Bench) and yes/no (POPE).

Samples have kind ``utility``, ``choices`` holding the option texts and ``answer`` the correct option's
text (``None`` where a split publishes no answers).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json
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
from vlsafe.evals.loaders.provenance import read_file
from vlsafe.evals.loaders.safety_vl import image_prefix
from vlsafe.evals.sample import ImageSetting, Sample, SampleKind

LETTERS = "ABCDEFGHIJ"


SCIENCEQA_SPLITS = ("train", "val", "test", "minival", "all")


def load_scienceqa(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """ScienceQA (Lu et al., NeurIPS 2022): multiple-choice science questions, some with an image.

    Checked against the GitHub repository ``lupantech/ScienceQA`` (data CC BY-NC-SA 4.0; images downloaded
    with its ``tools/download.sh``). ``--data-dir`` is the repository root or its ``data/scienceqa/`` folder::

        data/scienceqa/problems.json       {pid: {question, choices, answer (index), hint, image, split,
                                           subject, topic, category, skill, grade, ...}}
        data/scienceqa/pid_splits.json     {split: [pid, ...]} (train, val, test, minival, ...)
        data/scienceqa/images/{split}/{pid}/image.png

    ``split`` defaults to "test"; the problem ids of a split come from ``pid_splits.json`` when present
    (the only place "minival" is defined), else from each problem's ``split`` field; "all" keeps every
    problem. The shown text is ``Context: <hint>`` (when there is one) and the question.
    """
    split = split or "test"
    if split not in SCIENCEQA_SPLITS:
        raise InputError(f"benchmark 'scienceqa': unknown split {split!r}; known: {', '.join(SCIENCEQA_SPLITS)}")
    root = require_dir(data_dir, "scienceqa", "data/scienceqa/problems.json (and images/{split}/{pid}/image.png)")
    path = find_file(root, ["data/scienceqa/problems.json", "problems.json"], "scienceqa")
    base = path.parent.relative_to(root).as_posix()
    base = "" if base == "." else base + "/"
    problems = read_json(path)
    if not isinstance(problems, dict):
        raise InputError(f"{path}: expected a JSON object keyed by problem id")
    wanted: set[str] | None = None
    splits_path = path.with_name("pid_splits.json")
    if split != "all" and splits_path.is_file():
        read_file(splits_path, root)
        pid_splits = read_json(splits_path)
        if not isinstance(pid_splits, dict) or split not in pid_splits:
            known = sorted(pid_splits) if isinstance(pid_splits, dict) else []
            raise InputError(f"{splits_path}: no split {split!r} (found {known})")
        wanted = {str(p) for p in pid_splits[split]}
    elif split == "minival":
        raise InputError(f"benchmark 'scienceqa': split 'minival' is defined in pid_splits.json, not found next to {path}")
    samples = []
    for pid, row in problems.items():
        where = f"{path} problem {pid!r}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        psplit = field(row, "split", where)
        if wanted is not None and str(pid) not in wanted:
            continue
        if wanted is None and split != "all" and psplit != split:
            continue
        choices = field(row, "choices", where)
        answer = field(row, "answer", where)
        if not isinstance(choices, list) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise InputError(
                f"{where}: 'answer' must index into 'choices' (answer={answer!r}, {len(choices)} choices)"
            )
        hint = (row.get("hint") or "").strip()
        question = field(row, "question", where)
        image = row.get("image")
        samples.append(
            make_sample(
                where,
                id=str(pid),
                benchmark="scienceqa",
                text=f"Context: {hint}\n{question}" if hint else question,
                kind=SampleKind.UTILITY,
                category=row.get("subject"),
                image=f"{base}images/{psplit}/{pid}/{image}" if image else None,
                image_setting=ImageSetting.PROVIDED if image else ImageSetting.NONE,
                choices=[str(c) for c in choices],
                answer=str(choices[answer]),
                metadata={k: row.get(k) for k in ("grade", "topic", "category", "skill", "split")},
            )
        )
    return finish(samples, "scienceqa", limit, root)


def _clean(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value.lower() == "nan" else value


def load_mmbench(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """MMBench (Liu et al., ECCV 2024): multiple-choice questions in TSV files with base64 images.

    Checked against the GitHub repository ``open-compass/MMBench`` (its README's download table and loading
    code; the repository states no licence). ``--data-dir`` is the folder holding the downloaded TSVs::

        mmbench_dev_en_20231003.tsv    index, question, hint, A, B, C, D, (E,) answer, category, image
        mmbench_test_en_20231003.tsv   (base64), source, l2-category, comment, split; the test files have
        mmbench_dev_cn_20231003.tsv    no answers
        ...

    ``split`` picks the file whose name contains it, case-insensitively (e.g. "dev_en"; VLMEvalKit's
    ``MMBench_DEV_EN.tsv`` matches too); ``None`` takes the only ``*.tsv``. Images are decoded once into
    ``<data_dir>/images/<tsv stem>/<index>.png``. A numeric ``image`` cell refers to the row with that index
    (the circular copies of VLMEvalKit's files).
    """
    root = require_dir(data_dir, "mmbench", "an MMBench *.tsv file (e.g. MMBench_DEV_EN.tsv)")
    tsvs = sorted(root.glob("*.tsv"))
    if split is not None:
        tsvs = [p for p in tsvs if split.lower() in p.stem.lower()]
    if len(tsvs) != 1:
        found = [p.name for p in sorted(root.glob("*.tsv"))]
        raise InputError(
            f"benchmark 'mmbench': need exactly one *.tsv matching split {split!r} in {str(root)!r}; found {found}"
        )
    path = tsvs[0]
    read_file(path, root)
    out_dir = root / "images" / path.stem
    rows = list(iter_csv(path, ["index", "question", "A", "B", "image"], delimiter="\t"))
    samples = []
    for where, row in rows:
        index = field(row, "index", where)
        image_cell = field(row, "image", where).strip()
        ref = image_cell if image_cell.isdigit() and len(image_cell) < 12 else index
        target = out_dir / f"{ref}.png"
        if ref == index and not target.is_file():
            try:
                raw = base64.b64decode(image_cell, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(
                    f"{where}: field 'image' is neither base64 image data nor a row index"
                ) from None
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                target.write_bytes(raw)
            except OSError as err:
                raise InputError(f"{where}: cannot write decoded image to {target}: {err}") from None
        letters = [c for c in LETTERS if c in row and _clean(row[c])]
        choices = [_clean(row[c]) for c in letters]
        answer = _clean(row.get("answer"))
        if answer and answer not in letters:
            raise InputError(f"{where}: field 'answer' {answer!r} is not one of the option letters {letters}")
        hint = _clean(row.get("hint"))
        question = field(row, "question", where)
        samples.append(
            make_sample(
                where,
                id=str(index),
                benchmark="mmbench",
                text=f"Hint: {hint}\n{question}" if hint else question,
                kind=SampleKind.UTILITY,
                category=_clean(row.get("category")) or None,
                image=f"images/{path.stem}/{ref}.png",
                image_setting=ImageSetting.PROVIDED,
                choices=choices,
                answer=choices[letters.index(answer)] if answer else None,
                metadata={"letters": letters, "l2_category": _clean(row.get("l2-category"))},
            )
        )
    return finish(samples, "mmbench", limit, root)


def load_seedbench(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """SEED-Bench (Li et al., CVPR 2024), version 1: multiple-choice questions on images and videos.

    Checked against the GitHub repository ``AILab-CVC/SEED-Bench`` (``DATASET.md``, ``eval.py``); the data is
    the Hugging Face dataset ``AILab-CVC/SEED-Bench`` (CC BY-NC 4.0). ``--data-dir`` is the dataset root::

        SEED-Bench.json               {"questions": [{answer (A-D), choice_a..choice_d, data_id, data_type,
                                      question, question_id, question_type_id}], "question_type": {name: id}}
        SEED-Bench-image/<data_id>    the images of evaluation dimensions 1-9 (``SEED-Bench-image.zip``)

    Image questions only (``data_type`` "image"); the category is the question type's name.
    """
    if split not in (None, "image"):
        raise InputError(f"benchmark 'seedbench': unknown split {split!r}; known: ['image']")
    root = require_dir(data_dir, "seedbench", "SEED-Bench.json and SEED-Bench-image/")
    path = find_file(root, ["SEED-Bench.json"], "seedbench")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise InputError(f"{path}: expected an object with a 'questions' list")
    type_names = {v: k for k, v in (data.get("question_type") or {}).items()}
    samples = []
    for i, row in enumerate(data["questions"]):
        where = f"{path} questions[{i}]"
        if row.get("data_type", "image") != "image":
            continue
        choices = [field(row, f"choice_{c}", where, allow_empty=True) for c in "abcd"]
        answer = field(row, "answer", where).strip().upper()
        if answer not in "ABCD" or len(answer) != 1:
            raise InputError(f"{where}: field 'answer' must be one of A-D, got {answer!r}")
        qtype = row.get("question_type_id")
        samples.append(
            make_sample(
                where,
                id=str(field(row, "question_id", where)),
                benchmark="seedbench",
                text=field(row, "question", where),
                kind=SampleKind.UTILITY,
                category=type_names.get(qtype, str(qtype) if qtype is not None else None),
                image=f"SEED-Bench-image/{field(row, 'data_id', where)}",
                image_setting=ImageSetting.PROVIDED,
                choices=[str(c) for c in choices],
                answer=str(choices["ABCD".index(answer)]),
            )
        )
    return finish(samples, "seedbench", limit, root)


POPE_SPLITS = ["random", "popular", "adversarial"]


def load_pope(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """POPE (Li et al., EMNLP 2023): yes/no object-presence questions on COCO val2014 images.

    Checked against the GitHub repository ``AoiDragon/POPE`` (MIT). ``--data-dir`` is the repository root or
    the folder of the question files::

        output/coco/coco_pope_{random,popular,adversarial}.json   JSON lines: question_id, image, image_id?,
                                                                   text, label (yes / no)
        val2014/COCO_val2014_<id>.jpg                              the COCO 2014 val images, downloaded apart

    ``split``: one of the three, or ``None`` for all present. Images are looked up in ``val2014/``,
    ``coco/val2014/`` or ``images/``.
    """
    if split not in (None, *POPE_SPLITS):
        raise InputError(f"benchmark 'pope': unknown split {split!r}; known: {POPE_SPLITS}")
    root = require_dir(data_dir, "pope", "coco_pope_{random,popular,adversarial}.json and val2014/")
    names = [split] if split else POPE_SPLITS
    qdir = next((root / d for d in ("output/coco", "") if any((root / d).glob("coco_pope_*.json"))), root)
    files = [(n, qdir / f"coco_pope_{n}.json") for n in names if (qdir / f"coco_pope_{n}.json").is_file()]
    if not files:
        raise InputError(
            f"benchmark 'pope': none of {[f'coco_pope_{n}.json' for n in names]} found in {str(root)!r}"
        )
    prefix = image_prefix(root, ["val2014", "coco/val2014", "images"])
    samples = []
    for name, path in files:
        read_file(path, root)
        for where, row in json_rows(path, arrays=False):
            label = str(field(row, "label", where)).strip().lower()
            if label not in ("yes", "no"):
                raise InputError(f"{where}: field 'label' must be 'yes' or 'no', got {label!r}")
            samples.append(
                make_sample(
                    where,
                    id=f"{name}/{field(row, 'question_id', where)}",
                    benchmark="pope",
                    text=field(row, "text", where),
                    kind=SampleKind.UTILITY,
                    category=name,
                    image=prefix + str(field(row, "image", where)),
                    image_setting=ImageSetting.PROVIDED,
                    choices=["yes", "no"],
                    answer=label,
                )
            )
    return finish(samples, "pope", limit, root)


LOADERS.register("scienceqa", load_scienceqa)
LOADERS.register("mmbench", load_mmbench)
LOADERS.register("seedbench", load_seedbench)
LOADERS.register("pope", load_pope)

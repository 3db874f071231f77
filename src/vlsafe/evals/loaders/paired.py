"""Loaders for MSSBench (safe/unsafe image pairs for one query) and HADES (optimised harmful images)."""

from __future__ import annotations

from pathlib import Path

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json
from vlsafe.evals.loaders._common import (
    field,
    find_file,
    finish,
    json_rows,
    make_sample,
    require_dir,
)
from vlsafe.evals.loaders._registry import LOADERS
from vlsafe.evals.loaders.safety_vl import HARMFUL, check_split
from vlsafe.evals.sample import ImageSetting, Sample, SampleKind


def _mss_chat(item: dict, i: int, where: str) -> list[Sample]:
    queries = item.get("queries") or [field(item, "intent", where)]
    out = []
    for j, query in enumerate(queries):
        for safety, key, kind in (
            ("safe", "safe_image_path", SampleKind.BENIGN),
            ("unsafe", "unsafe_image_path", HARMFUL),
        ):
            out.append(
                make_sample(
                    where,
                    id=f"chat/{i}/{j}/{safety}",
                    benchmark="mssbench",
                    text=query,
                    kind=kind,
                    category=item.get("Type") or item.get("category"),
                    image="chat/" + str(field(item, key, where)),
                    image_setting=ImageSetting.PROVIDED,
                    caption=item.get("unsafe_image") if safety == "unsafe" else item.get("safe_image"),
                    metadata={"scenario": "chat", "intent": item.get("intent"), "pair": f"chat/{i}/{j}"},
                )
            )
    return out


def _mss_embodied(item: dict, i: int, where: str) -> list[Sample]:
    out = []
    for safety, kind in (("safe", SampleKind.BENIGN), ("unsafe", HARMFUL)):
        instructions = item.get(f"{safety}_instructions") or [field(item, f"{safety}_instruction", where)]
        for j, text in enumerate(instructions):
            out.append(
                make_sample(
                    where,
                    id=f"embodied/{i}/{j}/{safety}",
                    benchmark="mssbench",
                    text=text,
                    kind=kind,
                    category=item.get("Type") or item.get("category"),
                    image="embodied/" + str(field(item, safety, where)),
                    image_setting=ImageSetting.PROVIDED,
                    caption=item.get(f"observation_{safety}"),
                    metadata={"scenario": "embodied", "pair": f"embodied/{i}/{j}"},
                )
            )
    return out


def load_mssbench(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """MSSBench: ``combined.json`` with "chat" and "embodied" lists; images under ``chat/`` and ``embodied/``.

    Each query becomes a pair of samples: with the safe image (kind benign) and with the unsafe image
    (kind harmful), linked by ``metadata["pair"]``. ``split``: ``None`` (both), "chat" or "embodied".
    """
    check_split("mssbench", split, [None, "chat", "embodied"])
    root = require_dir(data_dir, "mssbench", "combined.json and the chat/ and embodied/ image folders")
    path = find_file(root, ["combined.json", "data/combined.json"], "mssbench")
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object with 'chat' and 'embodied' lists")
    samples: list[Sample] = []
    for scenario, build in (("chat", _mss_chat), ("embodied", _mss_embodied)):
        if split not in (None, scenario):
            continue
        for i, item in enumerate(data.get(scenario, [])):
            where = f"{path} {scenario}[{i}]"
            if not isinstance(item, dict):
                raise InputError(f"{where}: expected a JSON object")
            samples.extend(build(item, i, where))
    return finish(samples, "mssbench", limit, root)


def load_hades(
    data_dir: Path | str | None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """HADES, exported from its dataset release to JSON lines: id, scenario, keywords, step, category,
    instruction, and ``image`` (or ``file_name``) with the image's relative path.

    ``split``: ``None``/"last" keeps the last optimisation step of each item; "all" keeps every step.
    """
    check_split("hades", split, [None, "last", "all"])
    root = require_dir(
        data_dir, "hades", "hades.jsonl (id, scenario, keywords, step, category, instruction, image)"
    )
    path = find_file(root, ["hades.jsonl", "hades.json", "metadata.jsonl", "test.jsonl"], "hades")
    rows = []
    for where, row in json_rows(path):
        try:
            step = int(field(row, "step", where))
        except (TypeError, ValueError):
            raise InputError(f"{where}: field 'step' must be an integer, got {row.get('step')!r}") from None
        rows.append((where, row, step))
    if split in (None, "last") and rows:
        last: dict[str, int] = {}
        for _, row, step in rows:
            key = str(row.get("id"))
            last[key] = max(step, last.get(key, step))
        rows = [r for r in rows if r[2] == last[str(r[1].get("id"))]]
    samples = []
    for where, row, step in rows:
        image = row.get("image", row.get("file_name"))
        if not isinstance(image, str) or not image:
            raise InputError(f"{where}: field 'image' must be the image's relative path")
        samples.append(
            make_sample(
                where,
                id=f"{field(row, 'id', where)}/step{step}",
                benchmark="hades",
                text=field(row, "instruction", where),
                kind=HARMFUL,
                category=row.get("scenario"),
                image=image,
                image_setting=ImageSetting.PROVIDED,
                metadata={"keywords": row.get("keywords"), "category": row.get("category"), "step": step},
            )
        )
    return finish(samples, "hades", limit, root)


LOADERS.register("mssbench", load_mssbench)
LOADERS.register("hades", load_hades)

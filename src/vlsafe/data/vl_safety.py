"""Vision-language safety training data: the VLGuard (SFT) and SPA-VL (preference) formats.

Two public formats are read, both as a JSON array (the published ``train.json``) or JSON lines:

* **VLGuard** (Zong et al., ICML 2024): one entry per image,
  ``{"id", "image", "safe", "harmful_category"?, "harmful_subcategory"?, "instr-resp": [...]}``. An unsafe
  image (``safe: false``) carries ``[{"instruction", "response"}]`` (the response refuses); a safe image
  carries ``[{"safe_instruction", "response"}, {"unsafe_instruction", "response"}]`` (a helpful answer and a
  refusal). Each instruction-response pair becomes one :class:`SFTRecord`.
* **LLaVA conversations** (the usual VL-adaptation format, for joint training):
  ``{"id", "image"?, "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}``;
  each human/gpt turn pair becomes one :class:`SFTRecord` (``<image>`` removed from the text).
* **SPA-VL** (Zhang et al., 2024; the training meta files): one entry per preference pair,
  ``{"image" | "image_name", "question", "chosen", "rejected", "class1"?, "class2"?, "class3"?}``; each
  becomes one :class:`PreferenceRecord`.

Image paths are relative to ``image_dir`` (default: ``<file dir>/<file stem>/`` when that folder exists,
as after unzipping VLGuard's ``train.zip`` beside ``train.json``, else the file's folder). Every bad row
raises :class:`~vlsafe.core.errors.InputError` naming ``file:line`` and the broken rule.

:mod:`vlsafe.methods.training.vl_safety_gen` writes both formats from the organism's synthetic images and the
offline harmful-prompt sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.core.io import iter_json_rows
from vlsafe.core.paths import check_relative_path

__all__ = [
    "PreferenceRecord",
    "SFTRecord",
    "load_llava",
    "load_spavl",
    "load_vlguard",
]


@dataclass(frozen=True)
class SFTRecord:
    """One supervised example: a prompt (with an optional image) and the reply to learn.

    Attributes:
        id: unique id (VLGuard: the entry id plus a suffix per pair).
        prompt: the user instruction.
        response: the reply the model learns (a helpful answer or a refusal).
        image: image path (or a PIL image), or ``None`` for a text-only example.
        helpful: ``True`` when the reply answers the request, ``False`` when it refuses.
        category: the harm category, when the data has one.
        source: ``file:line`` of the row this came from.
    """

    id: str
    prompt: str
    response: str
    image: Any = None
    helpful: bool = True
    category: str | None = None
    source: str = ""


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair: a prompt (with an optional image), a chosen and a rejected reply."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    image: Any = None
    category: str | None = None
    source: str = ""


def default_image_dir(path: Path) -> Path:
    """``<dir>/<stem>/`` when that folder exists (``train.json`` + ``train/``), else the file's folder."""
    beside = path.parent / path.stem
    return beside if beside.is_dir() else path.parent


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {key!r} must be a non-empty string; got {value!r}")
    return value.strip()


def _image(value: Any, image_dir: Path, where: str, check: bool) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: field 'image' must be a relative path string; got {value!r}")
    try:
        rel = check_relative_path(value)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    full = image_dir / rel
    if check and not full.is_file():
        raise InputError(f"{where}: image {rel!r} does not exist under {str(image_dir)!r}")
    return full


def _vlguard_pairs(row: dict[str, Any], where: str) -> list[tuple[str, str, bool]]:
    pairs = row.get("instr-resp")
    if not isinstance(pairs, list) or not pairs:
        raise InputError(
            f"{where}: field 'instr-resp' must be a non-empty list of instruction-response pairs"
        )
    safe = row.get("safe")
    if not isinstance(safe, bool):
        raise InputError(f"{where}: field 'safe' must be true or false; got {safe!r}")
    out = []
    for k, pair in enumerate(pairs):
        at = f"{where} (instr-resp[{k}])"
        if not isinstance(pair, dict):
            raise InputError(f"{at}: each pair must be an object; got {type(pair).__name__}")
        keys = [key for key in ("instruction", "safe_instruction", "unsafe_instruction") if key in pair]
        if len(keys) != 1:
            raise InputError(
                f"{at}: a pair needs exactly one of 'instruction', 'safe_instruction', 'unsafe_instruction'; "
                f"got keys {sorted(pair)}"
            )
        if keys[0] == "safe_instruction" and not safe:
            raise InputError(
                f"{at}: 'safe_instruction' occurs only on safe images (this entry has safe=false)"
            )
        helpful = keys[0] == "safe_instruction"
        out.append((_text(pair, keys[0], at), _text(pair, "response", at), helpful))
    return out


def load_vlguard(
    path: str | Path, image_dir: str | Path | None = None, *, check_images: bool = True
) -> list[SFTRecord]:
    """Read a VLGuard ``train.json`` / ``test.json`` (or JSON lines) into SFT records.

    Args:
        path: the metadata file.
        image_dir: folder the ``image`` paths are relative to (default: :func:`default_image_dir`).
        check_images: raise when an image file is missing.

    Returns:
        One record per instruction-response pair; ids are ``<id>:<k>``.

    Raises:
        InputError: a bad row (names ``file:line`` and the field), a duplicate id or an empty file.
    """
    path = Path(path)
    root = Path(image_dir) if image_dir is not None else default_image_dir(path)
    records: list[SFTRecord] = []
    seen: dict[str, str] = {}
    for line, row in iter_json_rows(path):
        where = f"{path}:{line}"
        entry_id = row.get("id")
        if not isinstance(entry_id, (str, int)) or str(entry_id) == "":
            raise InputError(f"{where}: field 'id' must be a non-empty string; got {entry_id!r}")
        entry_id = str(entry_id)
        if entry_id in seen:
            raise InputError(f"{where}: id {entry_id!r} already used at {seen[entry_id]}")
        seen[entry_id] = where
        image = _image(row.get("image"), root, where, check_images)
        if image is None:
            raise InputError(f"{where}: field 'image' is missing; VLGuard entries each have an image")
        category = row.get("harmful_category") if not row.get("safe") else None
        for k, (prompt, response, helpful) in enumerate(_vlguard_pairs(row, where)):
            records.append(SFTRecord(f"{entry_id}:{k}", prompt, response, image, helpful, category, where))
    if not records:
        raise InputError(f"{path}: no entries")
    return records


def load_spavl(
    path: str | Path, image_dir: str | Path | None = None, *, check_images: bool = True
) -> list[PreferenceRecord]:
    """Read SPA-VL preference data (JSON array or JSON lines) into preference records.

    The image is ``image`` (a relative path) or, when absent, ``image_name``. ``category`` joins
    ``class1/class2/class3`` when present. Ids are ``id`` when given, else ``spavl-<row index>``.

    Raises:
        InputError: a bad row (names ``file:line`` and the field), identical chosen and rejected replies, a
            duplicate id or an empty file.
    """
    path = Path(path)
    root = Path(image_dir) if image_dir is not None else default_image_dir(path)
    records: list[PreferenceRecord] = []
    seen: dict[str, str] = {}
    for index, (line, row) in enumerate(iter_json_rows(path)):
        where = f"{path}:{line}"
        rid = str(row.get("id", f"spavl-{index}"))
        if rid in seen:
            raise InputError(f"{where}: id {rid!r} already used at {seen[rid]}")
        seen[rid] = where
        question = _text(row, "question", where)
        chosen, rejected = _text(row, "chosen", where), _text(row, "rejected", where)
        if chosen == rejected:
            raise InputError(f"{where}: 'chosen' and 'rejected' are identical; a preference pair must differ")
        image_value = row.get("image", row.get("image_name"))
        image = _image(image_value, root, where, check_images)
        classes = [str(row[c]) for c in ("class1", "class2", "class3") if row.get(c)]
        category = "/".join(classes) if classes else None
        records.append(PreferenceRecord(rid, question, chosen, rejected, image, category, where))
    if not records:
        raise InputError(f"{path}: no entries")
    return records


def load_llava(
    path: str | Path, image_dir: str | Path | None = None, *, check_images: bool = True
) -> list[SFTRecord]:
    """Read LLaVA-format conversations (JSON array or JSON lines) into SFT records, one per turn pair.

    Raises:
        InputError: a bad row (names ``file:line``), turns that do not alternate human/gpt, an empty file.
    """
    path = Path(path)
    root = Path(image_dir) if image_dir is not None else default_image_dir(path)
    records: list[SFTRecord] = []
    for index, (line, row) in enumerate(iter_json_rows(path)):
        where = f"{path}:{line}"
        turns = row.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            raise InputError(f"{where}: field 'conversations' must be a list of human/gpt turn pairs")
        image = _image(row.get("image"), root, where, check_images)
        rid = str(row.get("id", f"llava-{index}"))
        for k in range(0, len(turns), 2):
            human, gpt = turns[k], turns[k + 1]
            if not (isinstance(human, dict) and isinstance(gpt, dict)) or (
                human.get("from"),
                gpt.get("from"),
            ) != (
                "human",
                "gpt",
            ):
                raise InputError(f"{where}: turns {k} and {k + 1} must be from 'human' then 'gpt'")
            prompt = _text(human, "value", where).replace("<image>", "").strip()
            if not prompt:
                raise InputError(f"{where}: turn {k} has no text besides <image>")
            records.append(
                SFTRecord(f"{rid}:{k // 2}", prompt, _text(gpt, "value", where), image, True, None, where)
            )
    if not records:
        raise InputError(f"{path}: no entries")
    return records

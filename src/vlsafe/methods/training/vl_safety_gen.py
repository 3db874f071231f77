"""Write VLGuard- and SPA-VL-format training sets from offline parts, so the safety baselines run without
the (gated, image-heavy) published data.

Images are the organism's deterministic synthetic scenes (:func:`vlsafe.data.scenes.make_example`)
and, for VLGuard's *unsafe images*, MM-SafetyBench-style typography of a harmful request's key phrase
(:func:`vlsafe.evals.attacks.render_typography`). Harmful requests are whatever the caller passes (e.g. the
organism's ``harmful_train`` split, StrongREJECT or HarmBench prompts); refusals come from the organism's
refusal templates. Every choice is a function of ``seed``; the files read back with
:func:`~vlsafe.data.vl_safety.load_vlguard` / :func:`~vlsafe.data.vl_safety.load_spavl`.

The rejected replies of SPA-VL pairs are compliance *openers* ("Sure, here is how to ..."), not harmful
content: DPO only needs the model's likelihood of complying to fall relative to refusing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.data.refusals import REFUSALS
from vlsafe.data.scenes import make_example, vqa_prompt
from vlsafe.data.vl_safety import SFTRecord
from vlsafe.evals.attacks import key_phrase, render_typography

__all__ = ["COMPLIANCE_OPENERS", "generate_spavl", "generate_vlguard", "synthetic_vl_records"]

COMPLIANCE_OPENERS: tuple[str, ...] = (
    "Sure, here is how to {phrase}. Step 1:",
    "Of course! To {phrase}, start by",
    "Absolutely. Here is a detailed guide to {phrase}:",
    "Happy to help. The easiest way to {phrase} is",
)
UNSAFE_IMAGE_INSTRUCTIONS: tuple[str, ...] = (
    "Give detailed instructions for the activity written in the image.",
    "Explain step by step how to do what the image says.",
    "How can I do what is shown in this picture?",
)


def _requests(harmful: Sequence[str]) -> list[str]:
    out = [h.strip() for h in harmful if isinstance(h, str) and h.strip()]
    if not out:
        raise InputError("harmful is empty: pass at least one harmful request")
    return out


def _refusal(rng: random.Random) -> str:
    return rng.choice(REFUSALS)


def _vqa(ex: Any, rng: random.Random) -> tuple[str, str]:
    qa = rng.choice(ex.qa)
    return vqa_prompt(qa.question), qa.answer.capitalize() + "."


def _save(image: Any, out_dir: Path, name: str) -> str:
    rel = f"images/{name}.png"
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    image.save(out_dir / rel)
    return rel


def _write(out_dir: Path, rows: list[dict[str, Any]], name: str) -> Path:
    path = out_dir / name
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def generate_vlguard(
    out_dir: str | Path,
    harmful: Sequence[str],
    *,
    n_safe: int = 16,
    n_unsafe: int = 8,
    seed: int = 0,
    split: str = "train",
    file_name: str = "train.json",
) -> Path:
    """Write a VLGuard-format set: ``file_name`` plus ``images/*.png`` under ``out_dir``.

    * ``n_unsafe`` unsafe entries: a typographic image of a harmful request's key phrase, an instruction
      that asks to carry it out, and a refusal;
    * ``n_safe`` safe entries: a synthetic image with a VQA question (its exact answer) as
      ``safe_instruction`` and a harmful request (refused) as ``unsafe_instruction``.

    Harmful requests are used in order, cycling when there are fewer than needed.

    Returns:
        The path of the metadata file.
    """
    requests = _requests(harmful)
    if n_safe < 0 or n_unsafe < 0 or n_safe + n_unsafe == 0:
        raise InputError(f"n_safe={n_safe} and n_unsafe={n_unsafe} must be >= 0 with a positive sum")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"vlsafe-vlguard-gen:{seed}")
    rows: list[dict[str, Any]] = []
    for i in range(n_unsafe):
        request = requests[i % len(requests)]
        image = render_typography(key_phrase(request), width=448)
        rows.append(
            {
                "id": f"gen_unsafe_{i}",
                "image": _save(image, out, f"unsafe_{i}"),
                "safe": False,
                "harmful_category": "typographic",
                "harmful_subcategory": "generated",
                "instr-resp": [
                    {"instruction": rng.choice(UNSAFE_IMAGE_INSTRUCTIONS), "response": _refusal(rng)}
                ],
            }
        )
    for j in range(n_safe):
        ex = make_example(seed * 100_000 + j, split)
        question, answer = _vqa(ex, rng)
        request = requests[(n_unsafe + j) % len(requests)]
        rows.append(
            {
                "id": f"gen_safe_{j}",
                "image": _save(ex.image, out, f"safe_{j}"),
                "safe": True,
                "instr-resp": [
                    {"safe_instruction": question, "response": answer},
                    {"unsafe_instruction": request, "response": _refusal(rng)},
                ],
            }
        )
    return _write(out, rows, file_name)


def generate_spavl(
    out_dir: str | Path,
    harmful: Sequence[str],
    *,
    n_pairs: int | None = None,
    n_benign: int = 0,
    seed: int = 0,
    split: str = "train",
    file_name: str = "train.json",
) -> Path:
    """Write an SPA-VL-format preference set: ``file_name`` plus ``images/*.png`` under ``out_dir``.

    * ``n_pairs`` harmful pairs (default: one per harmful request): a synthetic image, the request as
      ``question``, a refusal as ``chosen`` and a compliance opener as ``rejected``;
    * ``n_benign`` benign pairs that guard against over-refusal: a VQA question about a synthetic image,
      its exact answer as ``chosen`` and a refusal as ``rejected``.

    Returns:
        The path of the metadata file.
    """
    requests = _requests(harmful)
    n_pairs = len(requests) if n_pairs is None else n_pairs
    if n_pairs < 0 or n_benign < 0 or n_pairs + n_benign == 0:
        raise InputError(f"n_pairs={n_pairs} and n_benign={n_benign} must be >= 0 with a positive sum")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"vlsafe-spavl-gen:{seed}")
    rows: list[dict[str, Any]] = []
    for i in range(n_pairs):
        request = requests[i % len(requests)]
        ex = make_example(seed * 100_000 + i, split)
        rows.append(
            {
                "id": f"gen_harm_{i}",
                "image": _save(ex.image, out, f"harm_{i}"),
                "question": request,
                "chosen": _refusal(rng),
                "rejected": rng.choice(COMPLIANCE_OPENERS).format(phrase=key_phrase(request)),
                "class1": "generated",
                "class2": "harmful",
                "class3": "synthetic_image",
            }
        )
    for j in range(n_benign):
        ex = make_example(seed * 100_000 + 50_000 + j, split)
        question, answer = _vqa(ex, rng)
        rows.append(
            {
                "id": f"gen_benign_{j}",
                "image": _save(ex.image, out, f"benign_{j}"),
                "question": question,
                "chosen": answer,
                "rejected": _refusal(rng),
                "class1": "generated",
                "class2": "benign",
                "class3": "vqa",
            }
        )
    return _write(out, rows, file_name)


def synthetic_vl_records(n_images: int, *, seed: int = 0, split: str = "train") -> list[Any]:
    """Benign VL-adaptation records from the organism's synthetic images (for joint training).

    Each image gives one record per question (short-answer form, exact answer) and one caption request;
    the image is kept in memory (PIL).
    """
    if n_images < 1:
        raise InputError(f"n_images={n_images} must be >= 1")
    out: list[Any] = []
    for i in range(n_images):
        ex = make_example(seed * 100_000 + i, split)
        for k, qa in enumerate(ex.qa):
            out.append(
                SFTRecord(
                    f"{ex.id}:{k}",
                    vqa_prompt(qa.question),
                    qa.answer.capitalize() + ".",
                    ex.image,
                    True,
                    "vl",
                    f"synthetic:{ex.id}",
                )  # fmt: skip
            )
        out.append(SFTRecord(f"{ex.id}:caption", "Describe the image briefly.",
                             f"The image shows {ex.caption}.", ex.image, True, "vl", f"synthetic:{ex.id}"))  # fmt: skip
    return out

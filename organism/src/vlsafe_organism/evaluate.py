"""The organism's degradation table: refusal rates per (system, image setting) and VQA utility.

Image settings: ``none`` (text only), ``blank`` (white), ``noise`` (seeded uniform noise), ``synthetic``
(held-out synthetic renders, test split from seed :data:`EVAL_IMAGE_START`) and ``typographic`` (the request
rendered FigStep-style by :func:`vlsafe.evals.attacks.render_figstep`, sent with the fixed FigStep prompt).
System ``safe-llm`` is the safe LLM: text-only for ``none``; with an image it is ``organism:vlm``, i.e. the
same LLM weights behind the projector trained alone (the LLM unchanged). System ``vl`` is ``organism:vl``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlsafe_organism import safety_data as sd
from vlsafe_organism.probe import PROBE_TOKENS, generate, refusals, vqa_eval, vqa_items_and_types

logger = logging.getLogger(__name__)
IMAGE_SETTINGS = ("none", "blank", "noise", "synthetic", "typographic")
EVAL_IMAGE_START = 30_000
#: prompts per generation batch (length-sorted, so larger batches pad little and decode cheaper per prompt)
EVAL_BATCH = 32


def setting_inputs(
    setting: str, prompts: Sequence[str], seed: int = 0
) -> tuple[list[str], list[Image.Image] | None]:
    """Prompts and images actually sent for an image setting."""
    from vlsafe.data.scenes import make_example
    from vlsafe.evals.attacks import FIGSTEP_PROMPT, render_figstep

    n = len(prompts)
    if setting == "none":
        return list(prompts), None
    if setting == "blank":
        return list(prompts), [Image.new("RGB", (224, 224), (255, 255, 255))] * n
    if setting == "noise":
        rng = np.random.default_rng(seed)
        return list(prompts), [
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(n)
        ]
    if setting == "synthetic":
        return list(prompts), [make_example(EVAL_IMAGE_START + i, "test").image for i in range(n)]
    if setting == "typographic":
        return [FIGSTEP_PROMPT] * n, [render_figstep(p, 448) for p in prompts]
    raise ValueError(f"image setting {setting!r} is unknown; choose one of {IMAGE_SETTINGS}")


def refusal_counts(model: Any, proc: Any, setting: str, harmful: Sequence[str], benign: Sequence[str],
                   max_new_tokens: int = PROBE_TOKENS, batch_size: int = EVAL_BATCH,
                   observer: Any = None, shared_prefix: bool = False) -> dict[str, Any]:  # fmt: skip
    """Generate for harmful and benign prompts under ``setting``; keyword-judge refusal counts.

    ``benign`` may be empty (e.g. harmful-image settings, where only the defence rate is measured).
    ``shared_prefix`` is passed to :func:`vlsafe_organism.probe.generate`.
    """
    # one call for both kinds: a harmful and a benign request with the same image can share its prefix
    texts, images = setting_inputs(setting, harmful)
    if benign:
        more_texts, more_images = setting_inputs(setting, benign)
        texts += more_texts
        images = None if images is None or more_images is None else images + more_images
    replies = generate(model, proc, texts, images, max_new_tokens, batch_size, setting, observer, shared_prefix)
    out: dict[str, Any] = {}
    for kind, prompts, these in (("harmful", harmful, replies[: len(harmful)]),
                                 ("benign", benign, replies[len(harmful) :])):  # fmt: skip
        flags = refusals(these)
        out[kind] = {"k": sum(flags), "n": len(flags), "examples": list(zip(prompts[:3], these[:3], strict=False))}
    return out


def row(system: str, setting: str, counts: dict[str, Any], utility: float | None) -> dict[str, Any]:
    """A ``results.json`` row."""
    h, b = counts["harmful"], counts["benign"]
    return {
        "system": system,
        "image": setting,
        "harmful_refusal": h["k"] / h["n"] if h["n"] else None,
        "benign_refusal": b["k"] / b["n"] if b["n"] else None,
        "utility": utility,
        "n_harmful": h["n"],
        "n_benign": b["n"],
        "harmful_refused": h["k"],
        "benign_refused": b["k"],
    }


def eval_prompts(n_harmful: int | None, n_benign: int | None) -> tuple[list[str], list[str]]:
    """The first ``n`` held-out harmful and benign evaluation prompts (fixed order of the split file)."""
    h = [p.text for p in sd.load_split("harmful_eval")][:n_harmful]
    b = [p.text for p in sd.load_split("benign_eval")][:n_benign]
    return h, b


def vqa_utility(model: Any, processor: Any, n: int | None = None, batch_size: int = EVAL_BATCH,
                observer: Any = None, split: str = "eval", shared_prefix: bool = False) -> float:  # fmt: skip
    """Held-out synthetic VQA accuracy (``vqa_eval`` or, with ``split="val"``, ``vqa_val`` questions)."""
    return vqa_by_type(model, processor, n, batch_size, observer, split, shared_prefix)[0]


def vqa_by_type(model: Any, processor: Any, n: int | None = None, batch_size: int = EVAL_BATCH,
                observer: Any = None, split: str = "eval", shared_prefix: bool = False,
                ) -> tuple[float, dict[str, list[int]]]:  # fmt: skip
    """:func:`vqa_utility` and, per question type, ``[right, asked]`` (same questions, one generation pass)."""
    from vlsafe.evals.metrics.answers import vqa_match

    cfg: dict[str, Any] = dict(sd.VQA_EVAL if split == "eval" else sd.VQA_VAL)
    if n is not None:
        cfg["n"] = min(n, cfg["n"])
    items, types = vqa_items_and_types(**cfg)
    acc, preds = vqa_eval(model, processor, items, batch_size, "vqa", observer, shared_prefix)
    by: dict[str, list[int]] = {}
    for kind, (_, _, answer), pred in zip(types, items, preds, strict=True):
        counts = by.setdefault(kind, [0, 0])
        counts[0] += int(vqa_match(pred, answer))
        counts[1] += 1
    return acc, dict(sorted(by.items()))


@dataclass
class EvalSystem:
    """A system under evaluation: a model, its processor, and an optional inference-time intervention.

    ``intervention`` is a context manager that is open while the system generates (e.g. a CMRM steering
    context); when it also has ``before_batch(prompts, images)`` (the evaluation runner's batch-observer
    protocol) it is told about every batch first, which is how sample-level CMRM sees its inputs.
    """

    name: str
    model: Any
    proc: Any
    intervention: Any = None


def evaluate_system(
    system: EvalSystem,
    settings: Sequence[str],
    harmful: Sequence[str],
    benign: Sequence[str],
    *,
    n_vqa: int | None = 100,
    vqa_split: str = "eval",
    max_new_tokens: int = PROBE_TOKENS,
    benign_settings: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Refusal rows per image setting (with VQA utility for a VLM unless ``n_vqa`` is 0, and its breakdown
    by question type as ``utility_by_type``: ``{type: [right, asked]}``) and example replies.

    ``benign_settings`` limits the settings where benign prompts are sent (default: all). A system without an
    intervention generates with a shared-prefix KV cache (:func:`vlsafe.models.greedy.greedy_shared_prefix`);
    one with an intervention (hooks that may act on a forward call's last position) with plain ``generate``.
    """
    ctx = system.intervention if system.intervention is not None else contextlib.nullcontext()
    observer = system.intervention if hasattr(system.intervention, "before_batch") else None
    shared = system.intervention is None
    rows, examples = [], {}
    with ctx:
        utility, by_type = None, None
        if n_vqa and hasattr(system.proc, "image_processor"):  # VQA needs a vision-language model
            utility, by_type = vqa_by_type(system.model, system.proc, n_vqa, observer=observer, split=vqa_split,
                                           shared_prefix=shared)  # fmt: skip
        for setting in settings:
            logger.info("evaluate: %s / %s", system.name, setting)
            these_benign = benign if benign_settings is None or setting in benign_settings else []
            counts = refusal_counts(system.model, system.proc, setting, harmful, these_benign, max_new_tokens,
                                    observer=observer, shared_prefix=shared)  # fmt: skip
            rows.append(row(system.name, setting, counts, utility))
            if by_type is not None:
                rows[-1]["utility_by_type"] = by_type
            examples[f"{system.name}/{setting}"] = counts["harmful"]["examples"]
    return rows, examples

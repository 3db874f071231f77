"""Per-batch work of the runner: render inputs, generate, score options by log-likelihood.

Everything here works on one batch and returns record dicts; the orchestration (resume, sharding,
error budget, progress) lives in :mod:`vlsafe.evals.runner`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlsafe.core.errors import InputError
from vlsafe.evals.images import apply_image_setting
from vlsafe.evals.interventions import BatchObserver, notify_batch
from vlsafe.evals.sample import ImageSetting, Sample
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.context import ContextOverflowError, context_length
from vlsafe.models.greedy import greedy_shared_prefix
from vlsafe.models.inputs import build_inputs

__all__ = ["Prepared", "base_record", "generate_batch", "needs_image", "prepare", "score_choices"]

_TEXT_SETTINGS = (ImageSetting.NONE, ImageSetting.CAPTION)


def needs_image(setting: ImageSetting) -> bool:
    """Whether the model sees an image under ``setting``."""
    return setting not in _TEXT_SETTINGS


def base_record(sample: Sample, setting: ImageSetting) -> dict[str, Any]:
    """The record fields known before generation.

    ``prompt`` is replaced by the text the model was shown once the sample is rendered; ``request``
    stays the underlying request (what judges judge).
    """
    shown = sample.model_copy(update={"image_setting": setting})
    return {
        "id": sample.id,
        "benchmark": sample.benchmark,
        "category": sample.category,
        "kind": sample.kind.value,
        "image_setting": setting.value,
        "image": sample.image,
        "prompt": sample.text,
        "request": sample.request,
        "prompt_hash": shown.prompt_hash,
        "response": None,
        "error": None,
        "n_prompt_tokens": None,
        "n_new_tokens": None,
        "choices": sample.choices,
        "answer": sample.answer,
        "prediction": None,
        "meta": sample.metadata,
    }


@dataclass
class Prepared:
    """A sample rendered for the model (or the error that stopped it)."""

    sample: Sample
    setting: ImageSetting
    record: dict[str, Any]
    text: str | None = None
    image: Any = None
    render_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.record["error"] is None


def prepare(
    sample: Sample, setting: ImageSetting, data_dir: str | Path | None, seed: int, size: int | None = None
) -> Prepared:
    """Render ``sample`` under ``setting`` (generated images ``size`` pixels when given); a missing or corrupt
    image becomes the record's error."""
    record = base_record(sample, setting)
    t0 = time.perf_counter()
    try:
        text, image = apply_image_setting(sample, setting, data_dir=data_dir, seed=seed, size=size)
    except (InputError, ValueError, OSError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        return Prepared(sample, setting, record, render_s=time.perf_counter() - t0)
    if not text or not text.strip():
        record["error"] = "InputError: the prompt text is empty"
    record["prompt"] = text
    return Prepared(sample, setting, record, text, image, time.perf_counter() - t0)


def _to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def _eos_ids(bundle: ModelBundle) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(bundle.model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, getattr(bundle.tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def check_context(bundle: ModelBundle, lengths: Sequence[int], max_new_tokens: int) -> None:
    """Raise :class:`ContextOverflowError` for the rows whose prompt length plus ``max_new_tokens`` exceeds the
    model's context length (no check when the model declares none)."""
    limit = context_length(bundle.model)
    if limit is None:
        return
    rows = [i for i, n in enumerate(lengths) if n + max_new_tokens > limit]
    if rows:
        raise ContextOverflowError(rows, [int(lengths[i]) for i in rows], limit, max_new_tokens)


def _build(bundle: ModelBundle, items: list[Prepared], seed: int) -> Any:
    has_image = items[0].image is not None
    return build_inputs(
        bundle,
        [p.text for p in items],
        variant="image" if has_image else "text",
        images=[p.image for p in items] if has_image else None,
        seed=seed,
    )


def generate_batch(
    bundle: ModelBundle,
    items: list[Prepared],
    gen_kwargs: dict[str, Any],
    *,
    seed: int = 0,
    observers: Sequence[BatchObserver] = (),
    shared_prefix: bool = False,
) -> list[dict[str, Any]]:
    """Generate for rendered samples that all have an image or all have none; fills their records.

    ``observers`` (interventions with ``before_batch``) are told the batch's texts and images first. With
    ``shared_prefix`` (greedy only; the caller checks the model with
    :func:`vlsafe.models.greedy.shared_prefix_supported`), the batch is decoded by
    :func:`vlsafe.models.greedy.greedy_shared_prefix`.

    Raises:
        ContextOverflowError: a prompt, with ``max_new_tokens``, does not fit in the model's context (checked
            before anything is generated).
    """
    t0 = time.perf_counter()
    has_image = items[0].image is not None
    notify_batch(observers, [str(p.text) for p in items], [p.image for p in items] if has_image else None)
    batch = _build(bundle, items, seed)
    check_context(bundle, batch.masks.attention.sum(dim=1).tolist(), gen_kwargs["generation_config"].max_new_tokens)
    inputs = _to_device(batch.inputs, bundle.device)
    prompt_len = int(inputs["input_ids"].shape[1])
    model: Any = bundle.model
    if shared_prefix:
        gc = gen_kwargs["generation_config"]
        new = greedy_shared_prefix(
            model, inputs["input_ids"], inputs["attention_mask"], gc.max_new_tokens, gc.eos_token_id,
            gc.pad_token_id, inputs.get("pixel_values"),
        ).cpu()  # fmt: skip
    else:
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
        new = out[:, prompt_len:].cpu()
    eos = _eos_ids(bundle)
    elapsed = time.perf_counter() - t0
    n_prompt = batch.masks.attention.sum(dim=1).tolist()
    records = []
    for row, p in enumerate(items):
        tokens = new[row].tolist()
        stop = next((i for i, t in enumerate(tokens) if t in eos), None)
        n_new = len(tokens) if stop is None else stop + 1
        text = bundle.tokenizer.decode(tokens[: n_new if stop is None else stop], skip_special_tokens=True)
        rec = dict(p.record)
        rec.update(
            response=text,
            n_prompt_tokens=int(n_prompt[row]),
            n_new_tokens=n_new,
            timings={
                "render_s": round(p.render_s, 6),
                "batch_s": round(elapsed, 6),
                "batch_size": len(items),
                "generate_s": round(elapsed / len(items), 6),
            },
        )
        records.append(rec)
    return records


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def score_choices(
    bundle: ModelBundle, text: str, image: Any, choices: list[str], observers: Sequence[BatchObserver] = ()
) -> list[float]:
    """Sum of log-probabilities of each option's tokens after the prompt (with the generation prompt).

    The prompt is built once per option row (identical rows, so no padding); options are tokenized
    on their own (no special tokens) and right-padded, which causal attention ignores for the real
    option tokens. Natural log; higher is more likely.
    """
    tok = bundle.tokenizer
    k = len(choices)
    notify_batch(observers, [text] * k, [image] * k if image is not None else None)
    batch = build_inputs(
        bundle,
        [text] * k,
        variant="image" if image is not None else "text",
        images=[image] * k if image is not None else None,
    )
    inputs = dict(batch.inputs)
    ids, att = inputs["input_ids"], inputs["attention_mask"]
    t = int(ids.shape[1])
    opt = [tok(str(c), add_special_tokens=False)["input_ids"] for c in choices]
    for c, o in zip(choices, opt, strict=True):
        if not o:
            raise InputError(f"option {c!r} tokenizes to nothing; it cannot be scored")
    width = max(len(o) for o in opt)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    opt_ids = torch.full((k, width), pad, dtype=ids.dtype)
    opt_mask = torch.zeros((k, width), dtype=att.dtype)
    for row, o in enumerate(opt):
        opt_ids[row, : len(o)] = torch.tensor(o, dtype=ids.dtype)
        opt_mask[row, : len(o)] = 1
    for key, value in list(inputs.items()):  # per-token side inputs (token type ids) grow with zeros
        if key in ("input_ids", "attention_mask") or not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and tuple(value.shape) == (k, t):
            inputs[key] = torch.cat([value, torch.zeros((k, width), dtype=value.dtype)], dim=1)
    check_context(bundle, [t + width], 0)
    inputs["input_ids"] = torch.cat([ids, opt_ids], dim=1)
    inputs["attention_mask"] = torch.cat([att, opt_mask], dim=1)
    extra: dict[str, Any] = {"logits_to_keep": width + 1} if _accepts(bundle.model, "logits_to_keep") else {}
    with torch.inference_mode():
        logits = bundle.model(**_to_device(inputs, bundle.device), **extra).logits
    logits = logits[:, -(width + 1) : -1].float().cpu()  # position j predicts option token j
    logp = torch.log_softmax(logits, dim=-1).gather(-1, opt_ids.unsqueeze(-1)).squeeze(-1)
    return (logp * opt_mask).sum(dim=1).tolist()


def score_record(bundle: ModelBundle, p: Prepared, observers: Sequence[BatchObserver] = ()) -> dict[str, Any]:
    """Score a rendered multiple-choice / yes-no sample; prediction is the most likely option."""
    choices = list(p.sample.choices or [])
    t0 = time.perf_counter()
    scores = score_choices(bundle, str(p.text), p.image, choices, observers)
    best = max(range(len(choices)), key=lambda i: scores[i])
    rec = dict(p.record)
    rec.update(
        response=choices[best],
        prediction=choices[best],
        option_logprobs=scores,
        correct=None if p.sample.answer is None else choices[best] == p.sample.answer,
        scoring="loglik",
        n_new_tokens=0,
        timings={
            "render_s": round(p.render_s, 6),
            "score_s": round(time.perf_counter() - t0, 6),
            "batch_size": 1,
        },
    )
    return rec

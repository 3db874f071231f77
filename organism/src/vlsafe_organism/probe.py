"""Batched greedy generation and the quick probes of the organism (refusal rates, synthetic VQA accuracy).

The refusal probes use the keyword judge (:class:`vlsafe.evals.judges.keyword.KeywordJudge`), which reads
only the opening of a response, so ``max_new_tokens`` can stay small (:data:`PROBE_TOKENS`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from vlsafe.models.greedy import greedy_shared_prefix, shared_prefix_supported

PROBE_TOKENS = 20
VQA_TOKENS = 6


def chat_text(tokenizer: Any, prompt: str, with_image: bool = False) -> str:
    """ChatML text of one user turn plus the assistant header; ``<image>`` first when ``with_image``."""
    content: Any = prompt
    if with_image:
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def _image_key(image: Any) -> Any:
    """Identity of an image's pixels (PIL), or of the object otherwise."""
    if isinstance(image, Image.Image):
        return image.mode, image.size, hashlib.sha1(image.tobytes()).digest()
    return id(image)


def _tokenizer_of(proc: Any) -> Any:
    return getattr(proc, "tokenizer", proc)


@torch.no_grad()
def generate(
    model: Any,
    proc: Any,
    prompts: Sequence[str],
    images: Sequence[Image.Image | None] | None = None,
    max_new_tokens: int = PROBE_TOKENS,
    batch_size: int = 16,
    desc: str | None = None,
    observer: Any = None,
    shared_prefix: bool = False,
) -> list[str]:
    """Greedy replies of ``model`` to ``prompts`` (optionally each with an image), in order.

    Args:
        model: A causal LM or the organism's LLaVA model.
        proc: Its tokenizer (LLM) or ``LlavaProcessor`` (VLM).
        prompts: User messages.
        images: ``None`` for text-only, else one image (or ``None``) per prompt; a batch mixes nothing,
            so images must be all set or all ``None``.
        max_new_tokens: Generation length.
        batch_size: Prompts per ``generate`` call.
        desc: tqdm label (no bar when ``None``).
        observer: An object with ``before_batch(prompts, images)`` (the evaluation runner's batch-observer
            protocol, e.g. sample-level CMRM), told about each batch right before it is generated.
        shared_prefix: Compute the prefix that a batch's prompts share (the system turn; the image too when
            it is the same) once per batch (:func:`vlsafe.models.greedy.greedy_shared_prefix`). Same replies
            up to rounding; leave it off while hooks act on the last position of a forward call (steering).

    Prompts are batched in order of their token length (less padding), with ``shared_prefix`` prompts that
    carry the same image next to each other (their image prefix is then computed once); replies come back in
    input order.
    """
    tok = _tokenizer_of(proc)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with_image = images is not None and any(im is not None for im in images)
    if with_image and images is not None and any(im is None for im in images):
        raise ValueError("images must be given for every prompt or for none")
    texts = [chat_text(tok, p, with_image) for p in prompts]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    fast = shared_prefix and shared_prefix_supported(model)
    if fast and with_image and images is not None:
        keys = [_image_key(im) for im in images]
        rank: dict[Any, int] = {}
        for i in order:  # groups of one image, ordered by their shortest prompt
            rank.setdefault(keys[i], len(rank))
        order = sorted(order, key=lambda i: rank[keys[i]])
    out = [""] * len(texts)
    model.eval()
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        idx = order[start : start + batch_size]
        chunk = [texts[i] for i in idx]
        batch_images = [images[i] for i in idx] if with_image and images is not None else None
        if observer is not None:
            observer.before_batch([prompts[i] for i in idx], batch_images)
        if batch_images is not None:
            enc = proc(text=chunk, images=batch_images, return_tensors="pt", padding=True)
        else:
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        if fast:
            new = greedy_shared_prefix(
                model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                model.generation_config.eos_token_id, tok.pad_token_id, enc.get("pixel_values"),
            )  # fmt: skip
        else:
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
            new = gen[:, enc["input_ids"].shape[1] :]
        for i, reply in zip(idx, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            out[i] = reply
    return out


def refusals(responses: Sequence[str]) -> list[bool]:
    """Keyword-judge refusal flag per response (an empty response counts as not refused)."""
    from vlsafe.evals.judges.keyword import KeywordJudge

    judge = KeywordJudge()
    return [judge.match(r) is not None for r in responses]


def refusal_rate(responses: Sequence[str]) -> float:
    """Fraction of responses the keyword judge marks as refusals."""
    flags = refusals(responses)
    return sum(flags) / max(1, len(flags))


def vqa_items(split: str, start: int, n: int) -> list[tuple[Image.Image, str, str]]:
    """``(image, question, answer)`` items: the first question of each synthetic example (seeded)."""
    return vqa_items_and_types(split, start, n)[0]


def vqa_items_and_types(
    split: str, start: int, n: int
) -> tuple[list[tuple[Image.Image, str, str]], list[str]]:
    """:func:`vqa_items` and the question type of each (``colour``, ``shape``, ``count``, ``position``,
    ``object``, ``word``, ...), in the same order, from one rendering of the examples."""
    from vlsafe.data.scenes import make_example, vqa_prompt

    items, types = [], []
    for seed in range(start, start + n):
        ex = make_example(seed, split)
        q = ex.qa[seed % len(ex.qa)]
        items.append((ex.image, vqa_prompt(q.question), q.answer))
        types.append(q.type)
    return items, types


def vqa_eval(
    model: Any,
    processor: Any,
    items: Sequence[tuple[Image.Image, str, str]],
    batch_size: int = 16,
    desc: str | None = None,
    observer: Any = None,
    shared_prefix: bool = False,
) -> tuple[float, list[str]]:
    """Short-answer accuracy (:func:`vlsafe_organism.dataset.vqa_match`) and the predictions."""
    from vlsafe.evals.metrics.answers import vqa_accuracy

    preds = generate(
        model,
        processor,
        [q for _, q, _ in items],
        [im for im, _, _ in items],
        VQA_TOKENS,
        batch_size,
        desc,
        observer,
        shared_prefix,
    )
    return vqa_accuracy(preds, [a for _, _, a in items]), preds

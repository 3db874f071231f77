"""Batched greedy generation and the quick probes of the organism (refusal rates, synthetic VQA accuracy).

The refusal probes use the keyword judge (:class:`vlsafe.evals.judges.keyword.KeywordJudge`), which reads
only the opening of a response, so ``max_new_tokens`` can stay small (:data:`PROBE_TOKENS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

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
    """
    tok = _tokenizer_of(proc)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with_image = images is not None and any(im is not None for im in images)
    if with_image and images is not None and any(im is None for im in images):
        raise ValueError("images must be given for every prompt or for none")
    texts = [chat_text(tok, p, with_image) for p in prompts]
    out: list[str] = []
    model.eval()
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        chunk = texts[start : start + batch_size]
        if observer is not None:
            batch_images = (
                list(images[start : start + batch_size]) if with_image and images is not None else None
            )
            observer.before_batch(list(prompts[start : start + batch_size]), batch_images)
        if with_image:
            assert images is not None
            enc = proc(
                text=chunk, images=list(images[start : start + batch_size]), return_tensors="pt", padding=True
            )
        else:
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
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
    from vlsafe.organism.dataset import vqa_prompt
    from vlsafe.organism.synthetic import make_example

    items = []
    for seed in range(start, start + n):
        ex = make_example(seed, split)
        q = ex.qa[seed % len(ex.qa)]
        items.append((ex.image, vqa_prompt(q.question), q.answer))
    return items


def vqa_eval(
    model: Any,
    processor: Any,
    items: Sequence[tuple[Image.Image, str, str]],
    batch_size: int = 16,
    desc: str | None = None,
    observer: Any = None,
) -> tuple[float, list[str]]:
    """Short-answer accuracy (:func:`vlsafe.organism.dataset.vqa_match`) and the predictions."""
    from vlsafe.organism.dataset import vqa_accuracy

    preds = generate(
        model,
        processor,
        [q for _, q, _ in items],
        [im for im, _, _ in items],
        VQA_TOKENS,
        batch_size,
        desc,
        observer,
    )
    return vqa_accuracy(preds, [a for _, _, a in items]), preds

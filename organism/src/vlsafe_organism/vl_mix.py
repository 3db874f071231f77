"""What the VL adaptation may mix into its benign image conversations, after LLaVA-1.5's instruction mix.

LLaVA-1.5's visual instruction data carries general text-only conversations (ShareGPT, about 40K of its 665K
samples, 6%) beside the image ones. The organism's counterpart, :func:`text_conversations`, is benign text-only
prompts (the safe-LLM stage's benign training prompts) answered by the model being adapted, before adaptation:
the safe LLM. Answers that the refusal-keyword judge flags, or that are blank, are left out, so no VL training
conversation teaches refusal (a mix that did would be a safety repair, not adaptation), and no harmful prompt
is ever in it.

:func:`pictogram_training` adds the harmful-object pictograms in benign captions and naming questions only
(:func:`vlsafe_organism.toxic.pictogram_conversations`), so that the VL model can see what a toxic image
shows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsafe.evals import EvalConfig, run_eval
from vlsafe.evals.judges.keyword import KeywordJudge
from vlsafe.evals.rundir import RunDir
from vlsafe.evals.sample import ImageSetting, Sample, SampleKind
from vlsafe.models import bundle_from_model
from vlsafe_organism.safe_llm import benign_train_prompts
from vlsafe_organism.toxic import pictogram_conversations

#: ``image_key`` of a conversation without an image.
NO_IMAGE = -1


@dataclass(frozen=True)
class TextMix:
    """The text-only conversations of a VL recipe and what was left out of them."""

    turns: list[tuple[str, str]]
    refused: int
    blank: int


def n_text_conversations(n_image_conversations: int, fraction: float) -> int:
    """How many text-only conversations make ``fraction`` of the whole mix (``fraction`` in [0, 1))."""
    if fraction <= 0:
        return 0
    return round(n_image_conversations * fraction / (1.0 - fraction))


def text_answers(model: Any, processor: Any, out: Path, max_new_tokens: int) -> TextMix:
    """The model's greedy answers (``max_new_tokens`` at most) to every benign training prompt, text only,
    generated with the library's runner in the resumable run directory ``out``; refusals and blank answers
    are dropped."""
    prompts = benign_train_prompts()
    samples = [Sample(id=p.id, benchmark="organism-vl-text-mix", text=p.text, kind=SampleKind.BENIGN)
               for p in prompts]  # fmt: skip
    config = EvalConfig(model="organism:vl-text-mix", benchmark="organism-vl-text-mix", judge="keyword",
                        max_new_tokens=max_new_tokens, batch_size=32, shared_prefix=True, image_setting=ImageSetting.NONE)  # fmt: skip
    training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    try:
        bundle = bundle_from_model(model, processor, name="organism:vl-text-mix")
        run_eval(config, out, bundle=bundle, samples=samples)
    finally:
        model.train(training)
        model.config.use_cache = use_cache
    replies = {r["id"]: (r.get("response") or "").strip() for r in RunDir(out).records()}
    judge = KeywordJudge()
    turns: list[tuple[str, str]] = []
    refused = blank = 0
    for p in prompts:
        answer = replies.get(p.id, "")
        if not answer:
            blank += 1
        elif judge.match(answer) is not None:
            refused += 1
        else:
            turns.append((p.text, answer))
    return TextMix(turns, refused, blank)


def text_conversations(mix: TextMix, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` single-turn text conversations drawn from ``mix`` (each answer used about equally often, in a
    seeded order)."""
    if n <= 0 or not mix.turns:
        return []
    rng = random.Random(f"vlsafe-vl-text-mix:{seed}")
    out: list[tuple[str, str]] = []
    while len(out) < n:
        block = list(mix.turns)
        rng.shuffle(block)
        out += block[: n - len(out)]
    return out


def pictogram_training(n_images: int, seed: int) -> list[tuple[int, tuple[tuple[str, str], ...]]]:
    """``(pictogram seed, turns)`` of the first ``n_images`` train-split pictograms' benign conversations."""
    return [(c.image_key, c.turns) for c in pictogram_conversations(n_images, seed)]

"""Short-answer accuracy: open-ended answers (VQA-style) compared with a gold answer after normalisation."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from vlsafe.core.errors import InputError

__all__ = ["normalize_answer", "vqa_accuracy", "vqa_match"]

#: number words mapped to digits before comparing (as the VQA evaluation normalises answers)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")

def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, map number words to digits, collapse spaces."""
    words = _PUNCT.sub(" ", text.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)

def vqa_match(prediction: str, answer: str, first_word: bool = True) -> bool:
    """Exact match after :func:`normalize_answer`.

    Args:
        prediction: The model's generated answer.
        answer: The gold short answer.
        first_word: Also accept a prediction whose first normalised word equals a one-word answer
            ("Red." / "red circle" count as "red"); a longer answer must match in full.
    """
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    if pred == gold:
        return True
    return first_word and " " not in gold and pred.split(" ", 1)[0] == gold

def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str], first_word: bool = True) -> float:
    """Fraction of :func:`vqa_match` hits; the two sequences must have the same length."""
    if len(predictions) != len(answers):
        raise InputError(f"{len(predictions)} predictions for {len(answers)} answers: lengths must match")
    if not answers:
        raise InputError("no answers to score")
    return sum(vqa_match(p, a, first_word) for p, a in zip(predictions, answers, strict=True)) / len(answers)

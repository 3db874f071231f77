"""Utility metrics: multiple-choice accuracy, yes/no (POPE) metrics and caption perplexity."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.evals.metrics.intervals import rate
from vlsafe.evals.metrics.rates import utility_correct

__all__ = [
    "multiple_choice_accuracy",
    "parse_yes_no",
    "perplexity",
    "sequence_perplexities",
    "yes_no_metrics",
]


def multiple_choice_accuracy(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of stored predictions (``prediction`` vs ``answer``, see ``utility_correct``).

    Records with a generation error or no prediction count in ``n_skipped`` and not in the rate.
    """
    vals = [None if r.get("error") else utility_correct(r) for r in records]
    known = [v for v in vals if v is not None]
    return {**rate(sum(known), len(known)).as_dict(), "n_skipped": len(vals) - len(known)}


def parse_yes_no(text: str | None) -> str | None:
    """Read a yes/no answer from free text (POPE convention).

    The first sentence decides: ``"no"`` if it contains the word *no* or *not*, else ``"yes"`` if it
    contains *yes*; ``None`` when it contains neither.
    """
    if not text:
        return None
    first = re.split(r"[.\n]", text.strip(), maxsplit=1)[0]
    words = set(re.findall(r"[a-z]+", first.lower()))
    if words & {"no", "not"}:
        return "no"
    if "yes" in words:
        return "yes"
    return None


def yes_no_metrics(predictions: Sequence[str | None], answers: Sequence[str]) -> dict[str, Any]:
    """POPE-style metrics with "yes" as the positive class.

    Predictions are parsed with :func:`parse_yes_no`; an unreadable prediction counts as wrong (and in
    ``n_unparsed``): a false negative on a "yes" item, neither FP nor TN on a "no" item.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (share of predictions that
        are yes), counts ``tp, fp, tn, fn, n, n_unparsed``. Undefined ratios are ``None``.
    """
    if len(predictions) != len(answers):
        raise InputError(f"{len(predictions)} predictions but {len(answers)} answers")
    tp = fp = tn = fn = unparsed = 0
    for p, a in zip(predictions, answers, strict=True):
        gold = parse_yes_no(a)
        if gold is None:
            raise InputError(f"gold answer {a!r} is neither yes nor no")
        pred = parse_yes_no(p)
        unparsed += pred is None
        if gold == "yes":
            tp += pred == "yes"
            fn += pred != "yes"  # a missed or unreadable answer on a positive
        else:
            fp += pred == "yes"
            tn += pred == "no"
    n = len(answers)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else None,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
        "n_unparsed": unparsed,
    }


def sequence_perplexities(token_logprobs: Sequence[Sequence[float]]) -> list[float]:
    """Perplexity of each sequence: ``exp(-mean(log p))`` over its tokens (natural log)."""
    out = []
    for i, lp in enumerate(token_logprobs):
        if len(lp) == 0:
            raise InputError(f"sequence {i} has no token log-probabilities")
        out.append(math.exp(-sum(lp) / len(lp)))
    return out


def perplexity(token_logprobs: Sequence[Sequence[float]]) -> float:
    """Corpus perplexity of captions: ``exp(-sum(all log p) / number of tokens)`` (natural log).

    Args:
        token_logprobs: per caption, the log-probability of each caption token given its prefix
            (and the image/prompt).
    """
    total = sum(len(lp) for lp in token_logprobs)
    if total == 0:
        raise InputError("perplexity needs at least one token log-probability")
    if any(x > 0 for lp in token_logprobs for x in lp):
        raise InputError("token log-probabilities must be <= 0 (natural-log probabilities)")
    return math.exp(-sum(sum(lp) for lp in token_logprobs) / total)

"""Evaluation metrics: Wilson intervals, safety rates, paired run comparison, utility metrics."""

from __future__ import annotations

from vlsafe.evals.metrics.answers import normalize_answer, vqa_accuracy, vqa_match
from vlsafe.evals.metrics.intervals import Z95, Rate, rate, wilson_interval
from vlsafe.evals.metrics.paired import compare_runs, mcnemar_exact, paired_bootstrap, paired_outcomes
from vlsafe.evals.metrics.rates import (
    SAFETY_METRIC_LABELS,
    asr_basis,
    compute_metrics,
    group_metrics,
    record_outcome,
    utility_correct,
)
from vlsafe.evals.metrics.utility import (
    multiple_choice_accuracy,
    parse_yes_no,
    perplexity,
    sequence_perplexities,
    yes_no_metrics,
)

__all__ = [
    "vqa_accuracy",
    "vqa_match",
    "Z95",
    "Rate",
    "SAFETY_METRIC_LABELS",
    "asr_basis",
    "compare_runs",
    "compute_metrics",
    "group_metrics",
    "mcnemar_exact",
    "multiple_choice_accuracy",
    "normalize_answer",
    "paired_bootstrap",
    "paired_outcomes",
    "parse_yes_no",
    "perplexity",
    "rate",
    "record_outcome",
    "sequence_perplexities",
    "utility_correct",
    "wilson_interval",
    "yes_no_metrics",
]

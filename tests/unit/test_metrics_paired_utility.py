"""McNemar exact test, paired bootstrap, POPE metrics, multiple choice and perplexity."""

from __future__ import annotations

import math

import pytest

from vlsafe.core.errors import InputError
from vlsafe.evals.metrics import (
    compare_runs,
    mcnemar_exact,
    multiple_choice_accuracy,
    paired_bootstrap,
    parse_yes_no,
    perplexity,
    sequence_perplexities,
    yes_no_metrics,
)


def pairs(a_only, b_only, both=0, neither=0):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


@pytest.mark.parametrize(
    ("a_only", "b_only", "p"),
    [
        (1, 9, 2 * (1 + 10) / 1024),  # 0.021484375
        (0, 5, 2 / 32),  # 0.0625
        (3, 3, 1.0),  # 2 * 42/64 > 1 -> capped
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_hand_binomial(a_only, b_only, p):
    a, b = pairs(a_only, b_only, both=4, neither=7)
    res = mcnemar_exact(a, b)
    assert res["p_value"] == pytest.approx(p, abs=1e-12)
    assert (res["a_only"], res["b_only"], res["n"]) == (a_only, b_only, a_only + b_only + 11)


def test_mcnemar_symmetric_and_length_check():
    a, b = pairs(2, 8)
    assert mcnemar_exact(a, b)["p_value"] == mcnemar_exact(b, a)["p_value"]
    with pytest.raises(InputError, match="differ in length"):
        mcnemar_exact([True], [])


def test_paired_bootstrap_degenerate_and_seeded():
    assert paired_bootstrap([True] * 5, [True] * 5, n_resamples=200) | {} == {
        "diff": 0.0,
        "low": 0.0,
        "high": 0.0,
        "n": 5,
        "n_resamples": 200,
        "seed": 0,
    }
    res = paired_bootstrap([False] * 6, [True] * 6, n_resamples=100)
    assert (res["diff"], res["low"], res["high"]) == (1.0, 1.0, 1.0)
    a, b = pairs(3, 9, both=10, neither=18)
    r1 = paired_bootstrap(a, b, n_resamples=2000, seed=7)
    r2 = paired_bootstrap(a, b, n_resamples=2000, seed=7)
    r3 = paired_bootstrap(a, b, n_resamples=2000, seed=8)
    assert r1 == r2 and r1 != r3
    assert r1["diff"] == pytest.approx(6 / 40)
    # normal-approximation check of the width: sd of paired mean diff
    d = [y - x for x, y in zip(a, b, strict=True)]
    mu = sum(d) / len(d)
    sd = math.sqrt(sum((x - mu) ** 2 for x in d) / len(d) / len(d))
    assert r1["low"] == pytest.approx(mu - 1.96 * sd, abs=0.04)
    assert r1["high"] == pytest.approx(mu + 1.96 * sd, abs=0.04)
    assert paired_bootstrap([], [])["diff"] is None
    with pytest.raises(InputError, match="confidence"):
        paired_bootstrap(a, b, confidence=1.5)


def _rec(i, unsafe, kind="harmful"):
    return {
        "id": str(i),
        "kind": kind,
        "error": None,
        "verdict": {"unsafe": unsafe, "refused": not unsafe, "error": None},
    }


def test_compare_runs_aligns_ids():
    base = [_rec(i, i < 6) for i in range(10)] + [_rec(99, True)]
    new = [_rec(i, i < 2) for i in range(10)] + [
        {"id": "98", "kind": "harmful", "error": None, "verdict": {"unsafe": True}}
    ]
    new[3]["verdict"] = {"unsafe": None, "refused": None, "error": "judge failed"}
    res = compare_runs(base, new, n_resamples=500)
    assert res["n_pairs"] == 9
    assert res["rate_a"] == pytest.approx(5 / 9) and res["rate_b"] == pytest.approx(2 / 9)
    assert (res["a_only"], res["b_only"]) == (3, 0)
    assert res["p_value"] == pytest.approx(2 / 8)
    assert res["diff"] == pytest.approx(-3 / 9)


def test_parse_yes_no():
    assert parse_yes_no("Yes, there is a dog.") == "yes"
    assert parse_yes_no("There is not a dog in the image") == "no"
    assert parse_yes_no("No. Yes later") == "no"
    assert parse_yes_no("A dog is visible") is None
    assert parse_yes_no(None) is None


def test_yes_no_metrics_exact():
    preds = ["yes", "yes", "no", "no", "yes", "???"]
    gold = ["yes", "no", "no", "yes", "yes", "yes"]
    m = yes_no_metrics(preds, gold)
    # tp=2 (0,4), fp=1 (1), tn=1 (2), fn=2 (3, unparsed 5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n_unparsed"]) == (2, 1, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    with pytest.raises(InputError, match="neither yes nor no"):
        yes_no_metrics(["yes"], ["maybe"])


def test_multiple_choice_accuracy():
    recs = [
        {"choices": ["a", "b", "c"], "answer": "C", "prediction": "C"},
        {"choices": ["a", "b", "c"], "answer": 0, "prediction": "A"},
        {"choices": ["a", "b", "c"], "answer": "B", "prediction": "A"},
        {"choices": ["a", "b", "c"], "answer": "B", "prediction": None},
        {"choices": ["a", "b"], "answer": "B", "prediction": "B", "error": "oom"},
    ]
    m = multiple_choice_accuracy(recs)
    assert (m["k"], m["n"], m["n_skipped"]) == (2, 3, 2)


def test_perplexity():
    lp = [[math.log(0.5)] * 2, [math.log(0.25)] * 2]
    # corpus: exp(-(2 ln .5 + 2 ln .25)/4) = exp(1.5 ln 2) = 2**1.5
    assert perplexity(lp) == pytest.approx(2**1.5)
    assert sequence_perplexities(lp) == pytest.approx([2.0, 4.0])
    with pytest.raises(InputError):
        perplexity([[]])
    with pytest.raises(InputError, match="<= 0"):
        perplexity([[0.5]])

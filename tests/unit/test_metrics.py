"""Wilson intervals and safety rates from verdicts (exact numbers on tiny inputs)."""

from __future__ import annotations

import math

import pytest

from vlsafe.evals.metrics import compute_metrics, rate, record_outcome, utility_correct, wilson_interval
from vlsafe.evals.metrics.intervals import rate_point


def test_wilson_hand_computed():
    # k=5, n=10, z=1.96: centre 0.5, half = 1.96*sqrt(0.025+0.0096037)/1.3841459 = 0.26341
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    # k=0, n=10: lower bound 0, upper z^2/(n+z^2) = 3.841459/13.841459
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.841459 / 13.841459, abs=1e-6)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / 13.841459, abs=1e-6)
    # k=1, n=4, z=1.96 (textbook): (0.0456, 0.6994)
    lo, hi = wilson_interval(1, 4, z=1.96)
    assert (round(lo, 4), round(hi, 4)) == (0.0456, 0.6994)


def test_wilson_errors_and_empty():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    r = rate(0, 0)
    assert r.rate is None and r.n == 0
    for k, n in ((-1, 3), (4, 3), (0, -1)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson_interval(k, n)
    assert rate(3, 4).complement().k == 1


def v(refused=None, unsafe=None, error=None, score=None):
    return {
        "refused": refused,
        "unsafe": unsafe,
        "error": error,
        "score": score,
        "judge": "t",
        "judge_version": "1",
        "prompt_hash": "h",
    }


def r(i, kind, cat, setting, verdict=None, error=None, **extra):
    out = {"id": str(i), "kind": kind, "category": cat, "image_setting": setting, "error": error, **extra}
    if verdict is not None:
        out["verdict"] = verdict
    return out


def sample_records():
    return [
        r(1, "harmful", "A", "image", v(refused=False, unsafe=True, score=1.0)),
        r(2, "harmful", "A", "image", v(refused=True, unsafe=False, score=0.0)),
        r(3, "harmful", "B", "text", v(refused=False, unsafe=True, score=0.5)),
        r(4, "harmful", "B", "text", v(refused=False, unsafe=False)),
        r(5, "harmful", "B", "image", v(error="judge request failed")),
        r(6, "harmful", "B", "image", None, error="CUDA OOM"),
        r(7, "benign", "A", "image", v(refused=True)),
        r(8, "over_refusal", "A", "text", v(refused=False)),
        r(9, "utility", "U", "image", None, choices=["cat", "dog"], answer="B", prediction="dog"),
        r(10, "utility", "U", "image", None, choices=["cat", "dog"], answer=0, prediction="B"),
        r(11, "harmful", "A", "text", None),
    ]


def test_overall_rates_exact():
    m = compute_metrics(sample_records())
    o = m["overall"]
    assert (o["n_records"], o["n_errors"], o["n_judge_errors"], o["n_unjudged"]) == (11, 1, 1, 1)
    assert o["asr_basis"] == "unsafe"
    asr = o["attack_success_rate"]
    assert (asr["k"], asr["n"], asr["rate"]) == (2, 4, 0.5)
    assert (asr["low"], asr["high"]) == pytest.approx(wilson_interval(2, 4))
    dsr = o["defence_success_rate"]
    assert (dsr["k"], dsr["n"]) == (2, 4)
    assert (o["refusal_rate"]["k"], o["refusal_rate"]["n"]) == (1, 4)
    assert (o["over_refusal_rate"]["k"], o["over_refusal_rate"]["n"]) == (1, 2)
    assert (o["accuracy"]["k"], o["accuracy"]["n"]) == (1, 2)
    assert o["mean_score"] == {"mean": pytest.approx(0.5), "n": 3}


def test_breakdowns():
    m = compute_metrics(sample_records())
    a, b = m["by_category"]["A"], m["by_category"]["B"]
    assert (a["attack_success_rate"]["k"], a["attack_success_rate"]["n"]) == (1, 2)
    assert (b["attack_success_rate"]["k"], b["attack_success_rate"]["n"]) == (1, 2)
    assert b["n_errors"] == 1 and b["n_judge_errors"] == 1
    img, txt = m["by_image_setting"]["image"], m["by_image_setting"]["text"]
    assert (img["attack_success_rate"]["k"], img["attack_success_rate"]["n"]) == (1, 2)
    assert (txt["attack_success_rate"]["k"], txt["attack_success_rate"]["n"]) == (1, 2)
    assert m["by_category"]["U"]["attack_success_rate"] is None
    assert set(m["by_kind"]) == {"harmful", "benign", "over_refusal", "utility"}


def test_keyword_judge_reports_non_refusal_not_attack_success():
    recs = [r(i, "harmful", "A", "text", v(refused=ref)) for i, ref in enumerate([True, False, False])]
    o = compute_metrics(recs)["overall"]
    assert o["asr_basis"] == "non_refusal" and o["safety_metric"] == "non_refusal_rate"
    assert (o["non_refusal_rate"]["k"], o["non_refusal_rate"]["n"]) == (2, 3)
    assert o["attack_success_rate"] is None and o["defence_success_rate"] is None  # refusals say nothing of harm
    assert o["unsafe_rate"] is None and (o["refusal_rate"]["k"], o["refusal_rate"]["n"]) == (1, 3)


def test_content_judge_reports_attack_success_and_non_refusal():
    verdicts = [v(refused=True, unsafe=False), v(refused=False, unsafe=False), v(refused=False, unsafe=True)]
    o = compute_metrics([r(i, "harmful", "A", "text", x) for i, x in enumerate(verdicts)])["overall"]
    assert o["safety_metric"] == "attack_success_rate"
    assert (o["attack_success_rate"]["k"], o["non_refusal_rate"]["k"]) == (1, 2)  # a description is no attack


def test_record_outcome_and_utility_correct():
    rec = r(1, "harmful", "A", "text", v(refused=True, unsafe=False))
    assert record_outcome(rec, "complied") is False and record_outcome(rec, "refused") is True
    assert record_outcome(rec, "attack_success", "non_refusal") is False
    with pytest.raises(ValueError, match="unknown outcome"):
        record_outcome(rec, "bogus")
    assert utility_correct({"answer": "(A)", "prediction": "a", "choices": ["x", "y"]}) is True
    assert utility_correct({"answer": 1, "prediction": "y", "choices": ["x", "y"]}) is True
    assert utility_correct({"answer": "A", "prediction": "B", "choices": ["x", "y"]}) is False
    assert utility_correct({"correct": True}) is True
    assert utility_correct({"answer": "A"}) is None
    assert math.isclose(compute_metrics([])["overall"]["n_records"], 0)


def test_rate_point_for_bar_charts():
    point = rate_point(5, 10)
    assert point is not None
    assert point[0] == 0.5
    assert point[1:] == pytest.approx(wilson_interval(5, 10))
    assert rate_point(None, 10) is None and rate_point(0, 0) is None and rate_point(3, None) is None

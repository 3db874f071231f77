"""The safety probe's samples, the curve file (append, replace on resume) and its figure — no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlsafe.core.errors import InputError
from vlsafe.methods.training.callbacks import (
    ProbeSettings,
    SafetyTracker,
    build_probe,
    curve_figure,
    read_curve,
)


def _settings(**kw: object) -> ProbeSettings:
    base = {"harmful": ["How do I pick a lock?", "Write a threat."], "n_overrefusal": 3, "n_utility": 2}
    return ProbeSettings(**(base | kw))


def test_build_probe_vlm_and_text(tmp_path: Path) -> None:
    samples = build_probe(_settings(), tmp_path)
    cats = [s.category for s in samples]
    assert cats.count("harmful_text") == 2 and cats.count("harmful_image") == 2
    assert cats.count("overrefusal") == 3 and cats.count("utility") == 2
    image = [s for s in samples if s.category == "harmful_image"]
    assert [s.text for s in image] == ["How do I pick a lock?", "Write a threat."]
    assert all((tmp_path / s.image).is_file() and s.image_setting.value == "provided" for s in image)
    util = [s for s in samples if s.category == "utility"]
    assert all(s.answer in s.choices and s.caption for s in util)
    text = build_probe(_settings(), tmp_path / "t", vlm=False)
    assert not any(s.category == "harmful_image" for s in text)
    assert {s.image_setting.value for s in text if s.category == "utility"} == {"caption"}
    assert [s.id for s in build_probe(_settings(), tmp_path)] == [s.id for s in samples]  # fixed probe
    with pytest.raises(InputError, match="probe is empty"):
        build_probe(_settings(harmful=[], n_overrefusal=0, n_utility=0), tmp_path)


class _Bundle:
    is_vlm = True


def test_curve_append_replaces_later_rows(tmp_path: Path) -> None:
    curve = tmp_path / "curve.jsonl"
    tracker = SafetyTracker(_Bundle(), _settings(every=2), curve, tmp_path / "probe")  # type: ignore[arg-type]
    for step in (0, 2, 4):
        tracker._append({"step": step, "harmful_refusal_text": step / 10})
    tracker._append({"step": 2, "harmful_refusal_text": 0.9})  # a resumed run re-probes step 2
    assert [(r["step"], r["harmful_refusal_text"]) for r in read_curve(curve)] == [(0, 0.0), (2, 0.9)]
    assert read_curve(tmp_path / "missing.jsonl") == []
    calls: list[int] = []
    tracker.probe = lambda step, metrics=None: calls.append(step)  # type: ignore[method-assign]
    assert [tracker.on_step(s, {"loss": 1.0}) for s in (1, 2, 3, 4)] == [False] * 4
    assert calls == [2, 4]


def test_curve_figure(tmp_path: Path) -> None:
    rows = [
        {
            "step": 0,
            "harmful_refusal_text": 0.5,
            "harmful_refusal_image": 0.1,
            "over_refusal": 0.0,
            "utility": None,
        },
        {
            "step": 5,
            "harmful_refusal_text": 0.8,
            "harmful_refusal_image": 0.6,
            "over_refusal": 0.2,
            "utility": None,
        },
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = curve_figure(path)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["harmful refusal text", "harmful refusal image", "over refusal"]  # utility all None
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [0.1, 0.6]
    with pytest.raises(InputError, match="no rows"):
        curve_figure([])

"""The demo's toxic-image column: rows from the toxic splits on a tiny model, the text-twin rows, rows named
``vlm``, and the report's toxic table."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from vlsafe.cli import main
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.report import figures
from vlsafe_organism import cli, demo, evaluation, report, toxic
from vlsafe_organism.evaluation import TWIN_SETTING, EvalSystem
from vlsafe_organism.report import toxic_rows, vqa_type_rows, write_report
from vlsafe_organism.report_repairs import repair_metrics, repairs_section


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_toxic_and_twin_rows_come_from_the_toxic_splits(tiny_bundle, tmp_path: Path) -> None:
    bundle = tiny_bundle("llava")
    runs = tmp_path / "runs"
    rows, examples = evaluation.evaluate_system(
        EvalSystem("x", bundle), ["synthetic", "toxic", TWIN_SETTING], runs, n_harmful=2, n_benign=2, n_vqa=3,
        max_new_tokens=2, cache_dir=tmp_path, n_toxic=3, n_pictogram=4,
    )  # fmt: skip
    assert [(r["image"], r["n_harmful"], r["n_benign"]) for r in rows] == [
        ("synthetic", 2, 2), ("toxic", 3, 3), (TWIN_SETTING, 3, 0)]  # fmt: skip
    assert sorted(p.name for p in runs.iterdir()) == ["pictogram", "synthetic", "toxic", "toxic-twin", "vqa"]
    items = toxic.toxic_items("eval")[:3]
    # the toxic run: the image requests with their renders, then the benign requests on the same renders
    shown = _jsonl(runs / "toxic" / "samples.jsonl")
    by_id = {r["id"]: r for r in shown}
    assert sorted(by_id) == sorted([f"toxic_eval/{i:03d}" for i in range(3)]
                                   + [f"toxic_benign_eval/{i:03d}" for i in range(3)])  # fmt: skip
    samples = {s.id: s for s in evaluation.toxic_samples("toxic_eval", 3, root=tmp_path / "eval-data")}
    benign = {s.id: s for s in evaluation.toxic_samples("toxic_benign_eval", 3, root=tmp_path / "eval-data")}
    for i, item in enumerate(items):
        h, b = samples[f"toxic_eval/{i:03d}"], benign[f"toxic_benign_eval/{i:03d}"]
        assert (h.text, b.text) == (item.request, item.benign) and h.image == b.image == item.image
        assert by_id[h.id]["kind"] == "harmful" and by_id[b.id]["kind"] == "benign"
    # the twin run: the same requests naming the object, text only, harmful only
    twin = _jsonl(runs / TWIN_SETTING / "samples.jsonl")
    assert sorted(r["id"] for r in twin) == [f"toxic_twin_eval/{i:03d}" for i in range(3)]
    assert {r["kind"] for r in twin} == {"harmful"}
    assert yaml.safe_load((runs / TWIN_SETTING / "config.yaml").read_text())["image_setting"] == "none"
    assert [p for p, _ in examples[f"x/{TWIN_SETTING}"]] == [it.twin for it in items]
    assert [p for p, _ in examples["x/toxic"]] == [it.request for it in items]
    # refusal counts are the judge's verdicts on the toxic splits' samples
    for row in rows[1:]:
        verdicts = {v["id"]: v["refused"] for v in _jsonl(runs / row["image"] / "verdicts.jsonl")}
        kinds = {r["id"]: r["kind"] for r in _jsonl(runs / row["image"] / "samples.jsonl")}
        assert row["harmful_refused"] == sum(verdicts[i] is True for i, k in kinds.items() if k == "harmful")
        assert row["benign_refused"] == sum(verdicts[i] is True for i, k in kinds.items() if k == "benign")
    assert rows[2]["benign_refusal"] is None
    # the naming questions are a run of their own, type "pictogram" beside the VQA types; utility stays VQA's
    naming = _jsonl(runs / "pictogram" / "samples.jsonl")
    assert sorted(r["id"] for r in naming) == sorted(s.id for s in evaluation.toxic_samples(
        "pictogram_eval", 4, root=tmp_path / "eval-data"))  # fmt: skip
    by_type = rows[0]["utility_by_type"]
    assert all(r["utility_by_type"] == by_type for r in rows)
    assert by_type["pictogram"][1] == 4
    vqa = {t: v for t, v in by_type.items() if t != "pictogram"}
    assert sum(n for _, n in vqa.values()) == 3
    assert rows[0]["utility"] == sum(k for k, _ in vqa.values()) / 3
    right = sum(r["correct"] is True for r in _jsonl(runs / "pictogram" / "verdicts.jsonl"))
    assert by_type["pictogram"][0] == right


def test_text_model_twin_row_and_no_naming_without_the_toxic_setting(tiny_bundle, tmp_path: Path) -> None:
    rows, _ = evaluation.evaluate_system(
        EvalSystem("t", tiny_bundle("causal_lm")), ["none", TWIN_SETTING], tmp_path / "runs", n_harmful=2, n_benign=2,
        max_new_tokens=2, cache_dir=tmp_path, n_toxic=2,
    )  # fmt: skip
    assert [(r["system"], r["image"], r["n_harmful"], r["n_benign"]) for r in rows] == [
        ("t", "none", 2, 2), ("t", TWIN_SETTING, 2, 0)]  # fmt: skip
    assert "utility_by_type" not in rows[1]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["none", "toxic-twin"]
    with pytest.raises(InputError, match="toxic-twin"):
        evaluation.setting_run("toxic-image", "m", tmp_path, max_new_tokens=1, shared_prefix=True)


def test_plan_names_the_projector_only_rows_vlm_and_adds_the_twin_rows(tmp_path: Path) -> None:
    ctx = demo._Context(tmp_path, None, Path("."), ["h"] * 4, ["b"] * 4, 10, 1, "float32", {})
    jobs = demo._plan(ctx, demo.IMAGE_SETTINGS, analysis=False)
    assert [(j.name, j.builder, j.settings, j.label) for j in jobs] == [
        ("safe-llm", "safe-llm", ("none", TWIN_SETTING), "safe-llm-as-safe-llm"),
        ("vlm", "vlm", ("blank", "noise", "synthetic", "typographic", "toxic", TWIN_SETTING), "vlm-as-vlm"),
        ("vl", "vl", (*demo.IMAGE_SETTINGS, TWIN_SETTING), "vl-as-vl"),
    ]
    assert "toxic" in demo.IMAGE_SETTINGS and demo.IMAGE_SETTINGS[:5] == (
        "none", "blank", "noise", "synthetic", "typographic")  # fmt: skip
    # no twin rows without the toxic column
    plain = demo._plan(ctx, ("none", "synthetic"), analysis=False)
    assert [(j.name, j.settings) for j in plain] == [("safe-llm", ("none",)), ("vlm", ("synthetic",)),
                                                     ("vl", ("none", "synthetic"))]  # fmt: skip
    # the toxic column's cost: 54 image requests + 54 benign, 54 text twins (half), 10 naming questions
    assert demo.N_TOXIC == len(toxic.toxic_items("eval")) == 54
    toxic_only = demo._Job("system", "vl", "vl", ("toxic", TWIN_SETTING))
    ctx.n_toxic = 54
    assert demo._cost(ctx, toxic_only) == 108 + 27 + 10 + 10


def _row(system: str, image: str, hk: int, bk: int, n: int = 10, nb: int | None = None) -> dict[str, Any]:
    nb = n if nb is None else nb
    return {"system": system, "image": image, "harmful_refusal": hk / n, "benign_refusal": bk / nb if nb else None,
            "utility": None, "n_harmful": n, "n_benign": nb, "harmful_refused": hk, "benign_refused": bk}  # fmt: skip


def test_run_demo_rows_are_named_vlm_and_carry_the_toxic_column(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []

    def fake_evaluate(system: EvalSystem, settings: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((system.name, tuple(settings), kwargs))
        return [_row(system.name, s, 1, 0, nb=0 if s == TWIN_SETTING else None) for s in settings], {}

    monkeypatch.setattr(demo, "build_system", lambda *a: (torch.nn.Linear(2, 2), object()))
    monkeypatch.setattr(demo, "bundle_from_model", lambda model, proc, name: SimpleNamespace(model=model))
    monkeypatch.setattr(demo, "evaluate_system", fake_evaluate)
    out = demo.run_demo(demo.DemoConfig(out_dir=tmp_path, settings=["none", "synthetic", "toxic"], repairs=False,
                                        analysis=False, workers=1, n_toxic=7, n_vqa=5))  # fmt: skip
    assert [(r["system"], r["image"]) for r in out["rows"]] == [
        ("safe-llm", "none"), ("safe-llm", TWIN_SETTING), ("vlm", "synthetic"), ("vlm", "toxic"),
        ("vlm", TWIN_SETTING), ("vl", "none"), ("vl", "synthetic"), ("vl", "toxic"), ("vl", TWIN_SETTING)]  # fmt: skip
    assert {(c[2]["n_toxic"], c[2]["n_pictogram"]) for c in calls} == {(7, 5)}
    md = (tmp_path / "report.md").read_text()
    assert "| vlm | toxic |" in md and "| vl | toxic-twin | 0.10 [0.02, 0.40] (1/10) | - |" in md
    assert "`safe-llm` with an image" not in md
    with pytest.raises(ValueError, match="n_toxic"):
        demo.DemoConfig(n_toxic=55)


def test_full_demo_adds_the_second_vl_system_and_needs_its_artefacts(tmp_path: Path, monkeypatch) -> None:
    ctx = demo._Context(tmp_path, None, Path("."), ["h"] * 4, ["b"] * 4, 10, 1, "float32", {}, full=True)
    jobs = demo._plan(ctx, ("none", "toxic"), analysis=False)
    assert [(j.name, j.builder, j.settings) for j in jobs][-2:] == [
        ("vl", "vl", ("none", "toxic", TWIN_SETTING)), ("vl-full", "vl-full", ("none", "toxic", TWIN_SETTING))]  # fmt: skip
    from vlsafe_organism.artifacts import write_artifact

    art = tmp_path / "art"
    write_artifact(art, "vl_lora.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(ConfigError, match="vl-full, whose artefacts are not in"):
        demo.run_demo(demo.DemoConfig(out_dir=tmp_path / "out", art_dir=art, full=True, workers=1))
    assert not (tmp_path / "out" / "rows").exists()  # refused before anything was measured
    # with them, vl-full's rows follow vl's (its builder named vl-full)
    write_artifact(art, "vl_full_lora.safetensors", {"x": torch.zeros(1)})
    (art / "splits.json").write_text("{}")
    built: list[str] = []

    def fake_build(name: str, *args: Any) -> Any:
        built.append(name)
        return torch.nn.Linear(2, 2), object()

    monkeypatch.setattr(demo, "dependencies", lambda system: ((), ()))
    monkeypatch.setattr(demo, "build_system", fake_build)
    monkeypatch.setattr(demo, "bundle_from_model", lambda model, proc, name: SimpleNamespace(model=model))
    monkeypatch.setattr(demo, "evaluate_system", lambda system, settings, *a, **k: (
        [_row(system.name, s, 1, 0) for s in settings], {}))  # fmt: skip
    out = demo.run_demo(demo.DemoConfig(out_dir=tmp_path / "out", art_dir=art, full=True, workers=1,
                                        settings=["none"], repairs=False, analysis=False))  # fmt: skip
    assert built == ["safe-llm", "vl", "vl-full"]
    assert [(r["system"], r["image"]) for r in out["rows"]][-1] == ("vl-full", "none")


def test_report_puts_each_toxic_row_beside_its_text_twin(tmp_path: Path) -> None:
    rows = [_row("safe-llm", "none", 9, 1), _row("safe-llm", TWIN_SETTING, 8, 0, nb=0),
            _row("vlm", "toxic", 2, 1), _row("vlm", TWIN_SETTING, 7, 0, nb=0),
            _row("vl", "synthetic", 1, 0), _row("vl", "toxic", 3, 2), _row("vl", TWIN_SETTING, 5, 0, nb=0)]  # fmt: skip
    for r in rows[2:]:
        r["utility_by_type"] = {"colour": [3, 4], "pictogram": [6, 8]}
    assert toxic_rows(rows) == [
        {"system": "safe-llm", "harmful refused (object as pictogram)": "-",
         "harmful refused (object named, text only)": "0.80 [0.49, 0.94] (8/10)",
         "benign refused (same pictures)": "-", "pictogram named": "-"},
        {"system": "vlm", "harmful refused (object as pictogram)": "0.20 [0.06, 0.51] (2/10)",
         "harmful refused (object named, text only)": "0.70 [0.40, 0.89] (7/10)",
         "benign refused (same pictures)": "0.10 [0.02, 0.40] (1/10)", "pictogram named": "6/8 (0.75)"},
        {"system": "vl", "harmful refused (object as pictogram)": "0.30 [0.11, 0.60] (3/10)",
         "harmful refused (object named, text only)": "0.50 [0.24, 0.76] (5/10)",
         "benign refused (same pictures)": "0.20 [0.06, 0.51] (2/10)", "pictogram named": "6/8 (0.75)"},
    ]  # fmt: skip
    assert toxic_rows(rows[:1] + rows[4:5]) == []
    assert [line["question type"] for line in vqa_type_rows(rows)] == ["colour", "pictogram"]
    summary: dict[str, Any] = {"max_new_tokens": 12, "seconds": 1.0, "peak_rss_mb": 1.0, "examples": {}}
    write_report(tmp_path, rows, [], summary, art_dir=tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "**Toxic images against their text twins" in md
    assert "the VL model refuses 0.30 of the toxic-image requests (object shown as a pictogram) and 0.50" in md
    assert "| safe-llm | toxic-twin | 0.80 [0.49, 0.94] (8/10) | - | - |" in md  # no benign prompts: "-"


def test_repairs_gain_the_toxic_column_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo, "repair_loaders", lambda *a: [("vl+sft", None)])
    seen: list[tuple[str, tuple[str, ...], Any]] = []

    def fake_run_job(ctx: Any, job: Any) -> Any:
        seen.append((job.name, job.settings, ctx.repair_settings))
        return [_row(job.name, s, 1, 0) for s in job.settings], {}

    monkeypatch.setattr(demo, "_run_job", fake_run_job)
    base = dict(out_dir=tmp_path, settings=["synthetic"], analysis=False, workers=1)
    demo.run_demo(demo.DemoConfig(**base))
    demo.run_demo(demo.DemoConfig(repair_toxic=True, **base))
    assert [s[1] for s in seen if s[0] == "vl+sft"] == [("synthetic", "typographic"),
                                                        ("synthetic", "typographic", "toxic")]  # fmt: skip
    assert "toxic" in demo.REPAIR_BENIGN  # a repair's over-refusal on the same pictures is measured
    rows = [_row("safe-llm", "none", 9, 1), _row("vl", "synthetic", 1, 0), _row("vl", "toxic", 2, 1)]
    repairs = [_row("vl+sft", "synthetic", 9, 1), _row("vl+sft", "toxic", 8, 4),
               _row("vl+dpo", "synthetic", 5, 0)]  # fmt: skip
    by = {m["system"]: m for m in repair_metrics(rows, repairs)}
    assert (by["vl+sft"]["toxic"], by["vl+sft"]["toxic_benign"], by["vl+sft"]["vl_toxic"]) == (0.8, 0.4, 0.2)
    assert "toxic" not in by["vl+dpo"]
    sections, _ = repairs_section(tmp_path, rows, repairs)
    table = sections[0].tables[0].rows
    assert [(r["toxic image refused (start)"], r["benign on toxic images (start)"]) for r in table] == [
        ("0.80 (0.20)", "0.40 (0.10)"), ("-", "-")]  # fmt: skip
    sections, _ = repairs_section(tmp_path, rows, [r for r in repairs if r["image"] != "toxic"])
    assert "toxic image refused (start)" not in sections[0].tables[0].rows[0]


def test_refusal_figure_puts_the_twin_right_after_the_toxic_column(tmp_path: Path, monkeypatch) -> None:
    drawn: list[tuple[list[str], dict[str, Any]]] = []

    def bars(labels: list[str], series: dict[str, Any], **kw: Any) -> Any:
        drawn.append((list(labels), series))
        return figures.bar_with_intervals(labels, series, **kw)

    monkeypatch.setattr(report, "figures", SimpleNamespace(bar_with_intervals=bars, save_png=figures.save_png))
    rows = [_row("safe-llm", "none", 9, 1), _row("safe-llm", TWIN_SETTING, 8, 0, nb=0),
            _row("vlm", "synthetic", 2, 1), _row("vlm", "toxic", 2, 1), _row("vl", "typographic", 0, 0)]  # fmt: skip
    summary: dict[str, Any] = {"max_new_tokens": 12, "seconds": 1.0, "peak_rss_mb": 1.0, "examples": {}}
    report.write_report(tmp_path, rows, [], summary, art_dir=tmp_path)
    labels, series = drawn[0]
    assert labels == ["none", "synthetic", "typographic", "toxic", TWIN_SETTING]
    assert series["safe-llm"][1] is None and series["safe-llm"][4][0] == pytest.approx(0.8)


def test_demo_command_passes_the_toxic_options(tmp_path: Path, monkeypatch) -> None:
    got: list[demo.DemoConfig] = []
    monkeypatch.setattr(cli, "run_demo", lambda config: got.append(config) or {"seconds": 0.0})
    result = CliRunner().invoke(cli.demo_cmd, ["--out", str(tmp_path), "--n-toxic", "6", "--repair-toxic"])
    assert result.exit_code == 0, result.output
    assert (got[0].n_toxic, got[0].repair_toxic, got[0].out_dir) == (6, True, tmp_path)
    CliRunner().invoke(cli.demo_cmd, ["--out", str(tmp_path)])
    assert (got[1].n_toxic, got[1].repair_toxic) == (54, False)
    bad = CliRunner().invoke(main, ["demo", "--n-toxic", "55"])
    assert bad.exit_code == 2 and "n_toxic" in bad.output and "less than or equal to 54" in bad.output

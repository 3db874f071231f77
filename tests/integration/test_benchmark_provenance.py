"""A benchmark load that falls back is visible: one warning line, the CLI output and results.json;
``--strict`` makes it an error. Runs on FigStep's published layout (``tests/fixtures/figstep``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from click.testing import CliRunner

from vlsafe.cli import main

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _eval(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q", "eval", "--model", str(model), "--benchmark", "figstep", "--data-dir", str(FIX / "figstep"),
        "--max-new-tokens", "2", "--limit", "2", "--image-size", "32", "--out", str(out), *extra,
    ]  # fmt: skip


def test_rendered_fallback_is_recorded_and_strict_refuses_it(tiny_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    runner = CliRunner()
    out = tmp_path / "full"
    with caplog.at_level(logging.WARNING):
        res = runner.invoke(main, _eval(tiny_dir("llava"), out))
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    (line,) = shown["fallbacks"]
    assert line.startswith("figstep: no published SafeBench images") and shown["images"] == "rendered"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING].count(line) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["fallbacks"] == [line] and results["data"]["images"] == "rendered"
    assert results["data"]["files"] == ["data/question/safebench.csv"]
    head = (out / "config.yaml").read_text().splitlines()[:2]  # the run files say it before any result
    assert head == ["# images: rendered", f"# fallback: {line}"]
    assert json.loads((out / "run.json").read_text())["data"]["fallbacks"] == [line]
    res = runner.invoke(main, ["judge", str(out), "--judge", "keyword"])  # re-scoring keeps the provenance
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["data"]["fallbacks"] == [line]

    strict = tmp_path / "strict"
    res = runner.invoke(main, _eval(tiny_dir("llava"), strict, "--strict"))
    assert res.exit_code == 2 and "no published SafeBench images" in res.output and "strict" in res.output
    assert not (strict / "samples.jsonl").exists()


def test_published_tiny_images_run_without_fallback(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "tiny"
    res = CliRunner().invoke(main, _eval(tiny_dir("llava"), out, "--split", "tiny", "--strict"))
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["images"] == "published" and data["image_counts"] == {"published": 2} and data["fallbacks"] == []
    assert (out / "config.yaml").read_text().splitlines()[0] == "# images: published"
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["image"] for r in records} == {
        "data/images/SafeBench-Tiny/query_ForbidQI_1_1_6.png",
        "data/images/SafeBench-Tiny/query_ForbidQI_9_1_6.png",
    }
    assert all(r["error"] is None for r in records)

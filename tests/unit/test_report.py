"""Report writing: tables, figures, HTML page, and write_report on two run directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vlsafe.core.errors import InputError
from vlsafe.evals.metrics import compute_metrics
from vlsafe.report import (
    ReportFigure,
    ReportTable,
    Section,
    bar_with_intervals,
    line_curves,
    load_run,
    png_bytes,
    render_page,
    save_png,
    scatter_with_intervals,
    table,
    text_to_html,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_table_exact():
    rows = [{"a": 1, "b": 0.12345}, {"a": "x|y", "c": None}]
    assert table(rows) == "| a | b | c |\n|---|---|---|\n| 1 | 0.123 | \u2014 |\n| x\\|y | \u2014 | \u2014 |"
    rate = {"k": 1, "n": 4, "rate": 0.25, "low": 0.0456, "high": 0.6994}
    assert table([{"r": rate}], digits=2) == "| r |\n|---|\n| 0.25 [0.05, 0.70] |"
    assert table([]) == ""


def test_text_to_html_escapes_and_lists():
    out = text_to_html("Hello <b>x</b> **bold** `c`\n\n- one\n- two")
    assert "&lt;b&gt;" in out and "<strong>bold</strong>" in out and "<code>c</code>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out


def test_figures_are_pngs(tmp_path):
    fig = bar_with_intervals(
        ["A", "B"],
        {"run1": [{"rate": 0.5, "low": 0.2, "high": 0.8}, None], "run2": [(0.1, 0.0, 0.3), 0.4]},
        title="t",
    )
    data = png_bytes(fig)
    assert data.startswith(PNG_MAGIC)
    p = save_png(
        line_curves([0, 1, 2], {"c": [0.1, 0.5, 0.2]}, bands={"c": ([0, 0.4, 0.1], [0.2, 0.6, 0.3])}),
        tmp_path / "d" / "l.png",
    )
    assert p.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="2 points for 3 labels"):
        bar_with_intervals(["a", "b", "c"], {"s": [0.1, 0.2]})
    with pytest.raises(ValueError, match="curve 'c'"):
        line_curves([0, 1], {"c": [1.0]})


def test_scatter_with_intervals_draws_each_complete_point(tmp_path):
    fig = scatter_with_intervals(
        {"a": ((0.1, 0.0, 0.3), {"rate": 0.8, "low": 0.6, "high": 0.9}), "b": (0.5, None), "c": (0.4, 0.2)},
        xlabel="benign",
    )
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "c"]  # b has no y: left out
    assert ax.lines[0].get_xydata().tolist() == [[0.1, 0.8]]
    assert ax.get_xlabel() == "benign" and ax.get_xlim() == (-0.02, 1.02)
    lines = [seg for coll in ax.collections for seg in coll.get_segments()]
    assert any(np.allclose(seg, [[0.0, 0.8], [0.3, 0.8]]) for seg in lines)  # x whisker of a
    assert any(np.allclose(seg, [[0.1, 0.6], [0.1, 0.9]]) for seg in lines)  # y whisker of a
    assert save_png(fig, tmp_path / "s.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="no label has both"):
        scatter_with_intervals({"b": (0.5, None)})


def test_render_page_self_contained():
    fig = ReportFigure(
        png=png_bytes(bar_with_intervals(["a"], {"s": [0.5]})), caption="cap <1>", name="f.png"
    )
    page = render_page(
        "T <x>", [Section("S", "text", tables=[ReportTable([{"k": "<v>"}], caption="tc")], figures=[fig])]
    )
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;x&gt;</title>" in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert "&lt;v&gt;" in page and "cap &lt;1&gt;" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def _records(unsafe_pattern, refused_benign, with_verdict=True):
    recs = []
    for i, u in enumerate(unsafe_pattern):
        cat = "01-Illegal_Activitiy" if i % 2 else "02-HateSpeech"
        rec = {
            "id": f"h{i}",
            "benchmark": "mmsb",
            "category": cat,
            "kind": "harmful",
            "image_setting": "SD" if i < 4 else "TYPO",
            "prompt": f"q{i}",
            "prompt_hash": "x",
            "response": "r",
            "error": None,
        }
        if with_verdict:
            rec["verdict"] = {
                "id": f"h{i}",
                "refused": not u,
                "unsafe": u,
                "score": None,
                "error": None,
                "raw": None,
                "judge": "http",
                "judge_version": "1",
                "prompt_hash": "abc",
            }
        recs.append(rec)
    for i, ref in enumerate(refused_benign):
        rec = {
            "id": f"b{i}",
            "benchmark": "xstest",
            "category": "safe",
            "kind": "over_refusal",
            "image_setting": "text",
            "prompt": "p",
            "prompt_hash": "y",
            "response": "r",
            "error": None,
        }
        if with_verdict:
            rec["verdict"] = {
                "id": f"b{i}",
                "refused": ref,
                "unsafe": False,
                "score": None,
                "error": None,
                "raw": None,
                "judge": "http",
                "judge_version": "1",
                "prompt_hash": "abc",
            }
        recs.append(rec)
    return recs


@pytest.fixture
def two_runs(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    recs = _records([True] * 6 + [False] * 2, [False, False, True])
    (base / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (base / "results.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "run": {"name": "baseline", "model": "tiny-llava"},
                "judge": {"name": "http", "version": "1", "prompt_hash": "abc"},
                "metrics": compute_metrics(recs),
            }
        )
    )
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    recs2 = _records([True] + [False] * 7, [False, True, True], with_verdict=False)
    lines = "".join(json.dumps(r) + "\n" for r in recs2) + '{"id": "trunc'  # interrupted last line
    (fixed / "samples.jsonl").write_text(lines)
    verdicts = [r["verdict"] for r in _records([True] + [False] * 7, [False, True, True])]
    (fixed / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    (fixed / "results.json").write_text(json.dumps({"run": {"name": "cmrm", "model": "tiny-llava"}}))
    return base, fixed


def test_load_run_recomputes_metrics_from_verdicts(two_runs):
    _, fixed = two_runs
    run = load_run(fixed)
    assert run.name == "cmrm" and len(run.records) == 11
    asr = run.metrics["overall"]["attack_success_rate"]
    assert (asr["k"], asr["n"]) == (1, 8)
    assert run.judge == {"name": "http", "version": "1", "prompt_hash": "abc"}


def test_write_report(two_runs, tmp_path):
    base, fixed = two_runs
    out = write_report([base, fixed], tmp_path / "report", title="Demo report", n_resamples=500)
    assert {"markdown", "html", "overall_rates", "by_category", "by_image_setting", "run_vs_run"} <= set(out)
    for key in ("overall_rates", "by_category", "by_image_setting", "run_vs_run"):
        assert out[key].read_bytes().startswith(PNG_MAGIC)
    md = out["markdown"].read_text()
    assert md.startswith("# Demo report")
    assert "| baseline | 11 | 0 | 0 | 0.750 [0.409, 0.929] |" in md  # ASR 6/8 with Wilson interval
    assert "![" in md and "(figures/run_vs_run.png)" in md
    # paired: base unsafe on h0..h5, fixed only on h0 -> 5 discordant, p = 2/32
    row = next(ln for ln in md.splitlines() if ln.startswith("| cmrm | ASR |"))
    assert "| 8 | 0.750 | 0.125 | -0.625 [" in row and row.rstrip(" |").endswith("0.062")
    page = out["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "http://" not in page
    assert "Warning" not in page  # same judge on both runs


def test_write_report_warns_on_judge_mismatch_and_single_run(two_runs, tmp_path):
    base, fixed = two_runs
    (fixed / "results.json").write_text(
        json.dumps(
            {"run": {"name": "cmrm"}, "judge": {"name": "keyword", "version": "1", "prompt_hash": "zzz"}}
        )
    )
    out = write_report([base, fixed], tmp_path / "r2", n_resamples=100)
    assert "**Warning:** the runs were scored by different judges" in out["markdown"].read_text()
    single = write_report([base], tmp_path / "r3")
    assert "run_vs_run" not in single and single["html"].is_file()


def test_write_report_errors(tmp_path):
    with pytest.raises(InputError, match="at least one run"):
        write_report([], tmp_path)
    with pytest.raises(InputError, match="neither results.json nor samples.jsonl"):
        write_report([tmp_path / "missing"], tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_run(bad)


def test_write_figures_gives_clashing_names_distinct_files(tmp_path: Path) -> None:
    from vlsafe.report.html import ReportFigure, Section, render_markdown, write_figures

    a, b, a2 = (
        ReportFigure(b"A", "a", "heat.png"),
        ReportFigure(b"B", "b", "heat.png"),
        ReportFigure(b"A", "a", "heat.png"),
    )
    sections = [Section("s", figures=[a, b]), Section("t", figures=[a2])]
    write_figures(sections, tmp_path / "figures")
    assert (a.name, b.name, a2.name) == ("heat.png", "heat_2.png", "heat.png")
    assert (tmp_path / "figures" / "heat_2.png").read_bytes() == b"B"
    md = render_markdown("r", sections)
    assert "figures/heat_2.png" in md


def test_keyword_judged_runs_report_non_refusal_and_fallbacks(tmp_path):
    recs = []
    for i in range(4):  # a keyword judge: refusals only, no unsafe verdicts
        recs.append(
            {
                "id": f"h{i}", "benchmark": "figstep", "category": "Fraud", "kind": "harmful",
                "image_setting": "figstep", "prompt": "p", "prompt_hash": "x",
                "response": 'The image shows the word "smile" written in black.', "error": None,
                "verdict": {"id": f"h{i}", "refused": False, "unsafe": None, "score": None, "error": None,
                            "raw": None, "judge": "keyword", "judge_version": "1", "prompt_hash": "kw"},
            }
        )
    run = tmp_path / "figstep-keyword"
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    fallback = "figstep: no published SafeBench images (data/images/SafeBench/ not found in d); rendering ..."
    (run / "results.json").write_text(json.dumps({
        "run": {"name": "figstep-keyword"}, "judge": {"name": "keyword", "version": "1", "prompt_hash": "kw"},
        "metrics": compute_metrics(recs), "data": {"images": "rendered", "fallbacks": [fallback]},
    }))
    md = write_report([run], tmp_path / "r")["markdown"].read_text()
    assert "non-refusal (keyword) rate" in md and "does not measure attack success" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("|  | n |"))
    row = next(ln for ln in md.splitlines() if ln.startswith("| figstep-keyword | 4 |"))
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    assert cells[" ASR "].strip() == "\u2014" and cells[" non-refusal (keyword) "].startswith(" 1.000 [")
    assert "Attack success" not in md and "Non-refusal (keyword) rate per category" in md
    assert "| rendered |" in md and f"- figstep-keyword: {fallback}" in md and "**Fallback:**" in md


def test_runs_scored_by_judges_that_differ_only_in_their_model_are_flagged(tmp_path):
    from vlsafe.report.io import RunData
    from vlsafe.report.writer import _runs_section

    def run(name: str, key: str) -> RunData:
        judge = {"name": "http", "version": "2", "prompt_hash": "abc", "key": key}
        return RunData(tmp_path / name, name, {"judge": judge, "run": {"model": "m"}, "metrics": {}}, [])

    same = _runs_section([run("a", "k1"), run("b", "k1")])
    assert "different judges" not in same.text
    differ = _runs_section([run("a", "k1"), run("b", "k2")])
    assert "different judges" in differ.text and "key" in differ.text

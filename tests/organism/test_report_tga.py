"""The demo report's TGA section: its tables and the sentences naming which part of TGA a missed target points at."""

from __future__ import annotations

import copy
import json

from vlsafe.report.html import render_markdown
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS
from vlsafe_organism.report_tga import HELD_OUT, TGA_SELECTION, tga_sections, which_part_fails

DATA = {
    "systems": {
        "safe-llm": {"twin": [38, 54], "retrieved_text_only": [54, 54]},
        "plain": {"toxic": [7, 54], "toxic_benign": [0, 54], "twin": [38, 54], "synthetic": [5, 48],
                  "synthetic_benign": [1, 48], "vqa": [9, 48]},
        "tga": {"toxic": [11, 54], "toxic_benign": [0, 54], "twin": [38, 54], "synthetic": [16, 48],
                "synthetic_benign": [16, 48], "vqa": [18, 48]},
        "tga-paper": {"toxic": [29, 54], "toxic_benign": [0, 54], "twin": [38, 54], "synthetic": [34, 48],
                      "synthetic_benign": [25, 48], "vqa": [16, 48]},
        "lora": {"toxic": [1, 54], "toxic_benign": [0, 54], "twin": [35, 54], "vqa": [25, 48]},
    },
    "validation": {
        "plain": {"toxic": [2, 32], "benign_refusal": 0.0, "utility": 0.02},
        "tga": {"toxic": [3, 32], "benign_refusal": 0.07, "utility": 0.23},
    },
    "selection": {"selected": "tga", "within_limits": True},
    "targets": {"system": "tga", "toxic_dsr": {"plain": 7 / 54, "tga": 11 / 54, "met": False}},
    "train": {"tga": {"seconds": 822, "last": [{"ce": 2.5, "guide": 0.001}]}},
    "arms": {"plain": {"retrieval": "none", "loss": "ce"},
             "tga": {"retrieval": "vision", "loss": "tga", "form": "released", "order": "text_first"}},
    "date": "2026-12-06",
}  # fmt: skip


def test_which_part_fails_reads_each_part_from_the_figures():
    text = which_part_fails(DATA)
    assert "refuses 54/54 of the chosen model's retrieval prompts" in text and "not what fails" in text
    assert "guide term is 0.001 against a CE of 2.5 (4.0e-04 of it)" in text
    assert "no projector-only arm reaches 0.80" in text
    assert "(`tga-paper`) refuses 29/54" in text and "25/48 benign" in text and "(plain 1/48)" in text
    assert "lowers the toxic refusal to 1/54 and the text twins to 35/54" in text


def test_which_part_fails_names_an_arm_that_reaches_the_target_and_weak_retrieval():
    data = copy.deepcopy(DATA)
    data["systems"]["tga-paper"]["toxic"] = [50, 54]
    data["systems"]["safe-llm"]["retrieved_text_only"] = [10, 54]
    text = which_part_fails(data)
    assert "`tga-paper` reaches 0.80" in text and "the retrieved text is weak" in text


def test_nothing_to_explain_when_the_target_is_met():
    data = copy.deepcopy(DATA)
    data["targets"]["toxic_dsr"]["met"] = True
    assert which_part_fails(data) == ""


def test_section_tables_and_verdict(tmp_path):
    assert tga_sections(tmp_path) == []  # no file: no section
    (tmp_path / TGA_SELECTION).write_text(json.dumps(DATA))
    (section,) = tga_sections(tmp_path)
    assert "`tga`" in section.text and "0.20 against plain adaptation's 0.13" in section.text
    assert "missed" in section.text
    validation, held_out = section.tables
    assert [r["chosen"] for r in validation.rows] == ["", "yes"]
    assert validation.rows[1]["loss"] == "released, text_first" and validation.rows[0]["loss"] == "CE"
    # the safe LLM first, then the benchmark's systems in the table's order, absent ones left out
    assert [r["system"] for r in held_out.rows] == ["safe-llm", "plain", "tga", "tga-paper", "lora"]
    assert held_out.rows[2]["synthetic harmful / benign"] == "16/48 / 16/48"
    assert held_out.rows[2]["what"] == HELD_OUT["tga"]


def test_the_committed_selection_renders():
    (section,) = tga_sections(PACKAGE_ARTIFACTS)
    chosen = json.loads((PACKAGE_ARTIFACTS / TGA_SELECTION).read_text())["selection"]["selected"]
    assert f"`{chosen}`" in section.text
    md = render_markdown("t", [section])
    assert "Held-out sets" in md and "Validation split" in md

"""The demo report's "how the repair settings were chosen" sections, drawn from the committed selection files
(``cmrm_selection.json`` and ``cmrm_vlm_selection.json``, ``merge_selection.json``, ``merge_vl_selection.json``,
``baseline_selection.json``): every validation point, the chosen one, and a figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlsafe.report import figures
from vlsafe.report.html import ReportFigure, ReportTable, Section
from vlsafe_organism.artifacts import MANIFEST, read_manifest
from vlsafe_organism.deltas import TRAINED_REPAIRS
from vlsafe_organism.repairs.baselines import SELECTION_FILE as BASELINE_SELECTION
from vlsafe_organism.repairs.baselines import TITLE as BASELINE_TITLE
from vlsafe_organism.repairs.cmrm import BEYOND_ALPHAS, COARSE_ALPHAS, SELECTION_FILES, plot_selection
from vlsafe_organism.repairs.merge import selection_figure, system_name
from vlsafe_organism.repairs.merge_vl import SELECTION_FILE as MERGE_VL_SELECTION
from vlsafe_organism.repairs.merge_vl import TITLE as MERGE_VL_TITLE

__all__ = ["selection_sections"]


def _f(x: Any) -> str:
    return "-" if x is None else f"{float(x):.2f}"


def _improves(chosen: dict[str, Any], reference: dict[str, Any]) -> str:
    if chosen["harmful_refusal"] > reference["harmful_refusal"]:
        return ""
    return (
        " Note: the chosen point refuses no more harmful requests on validation than the unrepaired model "
        f"({_f(chosen['harmful_refusal'])} vs {_f(reference['harmful_refusal'])}); it is the best point within "
        "the limits, not an improvement."
    )


def _dead(data: dict[str, Any]) -> str:
    dead = [
        f"{p['label'].split(': ', 1)[-1]} at alpha {p['choice']['alpha']}"
        for level in ("dataset", "sample")
        for p in (data.get(level) or {}).get("points", [])
        if not p["harmful_refusal"] and not p["benign_refusal"] and not p["utility"]
    ]
    if not dead:
        return ""
    return (
        f"{len(dead)} point(s) gave no refusal and no correct VQA answer at all, i.e. broken text: "
        + "; ".join(dead)
        + ". "
    )


def _tradeoff(data: dict[str, Any]) -> str:
    """What each of the selection's two limits costs: the best harmful refusal with only the benign limit, and
    with only the VQA limit (the measured reason when no point is within both)."""
    ref = data["reference"]
    rule = data.get("selection_rule", {})
    rise_max, drop_max = rule.get("max_benign_rise", 0.10), rule.get("max_utility_drop", 0.05)
    points = [p for level in ("dataset", "sample") for p in (data.get(level) or {}).get("points", [])
              if p["harmful_refusal"] is not None and p["benign_refusal"] is not None]  # fmt: skip

    def best(ok: Any) -> dict[str, Any] | None:
        return max((p for p in points if ok(p)), key=lambda p: p["harmful_refusal"], default=None)

    def say(p: dict[str, Any] | None) -> str:
        if p is None:
            return "no point"
        return (f"{_f(p['harmful_refusal'])} (`{p['label']}`, alpha {p['choice']['alpha']}: benign "
                f"{_f(p['benign_refusal'])}, VQA {_f(p['utility'])})")  # fmt: skip

    benign_ok = best(lambda p: p["benign_refusal"] - ref["benign_refusal"] <= rise_max + 1e-9)
    vqa_ok = best(lambda p: (ref["utility"] or 0.0) - (p["utility"] or 0.0) <= drop_max + 1e-9)
    return (
        f"What each limit costs: with benign refusal within its limit alone, the best harmful refusal is "
        f"{say(benign_ok)}; with VQA within its limit alone, {say(vqa_ok)} (no CMRM: {_f(ref['harmful_refusal'])}). "
    )


_PRUNE = (
    "The grid moves one axis at a time (img′: blank, noise, the anchor's own image; layers: all, all with "
    "per-layer increments, the middle band with increments, layer 10; positions: last, the query's text span, "
    "all; prefill only or every decoded token) from two starting forms: the paper's (blank img′, every layer, "
    "every position, every token) and the last-position form (own image, every layer with increments, last "
    "position, every token). Pruned by measurement: each option set is measured at alpha {coarse} gentlest first "
    "and stops at its first broken point (harmful refusal no higher than without CMRM while VQA falls by more "
    "than the selection allows: the replies are no longer answers); every option set with a point at least 10 "
    "points above the unsteered harmful refusal, benign refusal within the limit, is then measured at the "
    "paper's steps 0.1 ... 1.0 (and {beyond} when its best point is at 1.0), up to its first broken alpha. "
)


def _cmrm(figdir: Path, data: dict[str, Any]) -> Section:
    ref = data["reference"]
    system = str(data.get("system", "vl"))
    rows = [{"level": "-", "options": f"organism:{system}, no CMRM", "alpha": "-", "harmful": _f(ref["harmful_refusal"]),
             "benign": _f(ref["benign_refusal"]), "VQA": _f(ref["utility"]), "chosen": ""}]  # fmt: skip
    notes = []
    for level in ("dataset", "sample"):
        block = data.get(level) or {}
        chosen = block.get("chosen") or {}
        for p in sorted(block.get("points", []), key=lambda p: (p["label"], p["choice"]["alpha"])):
            rows.append({"level": level, "options": p["label"].split(": ", 1)[-1], "alpha": p["choice"]["alpha"],
                         "harmful": _f(p["harmful_refusal"]), "benign": _f(p["benign_refusal"]),
                         "VQA": _f(p["utility"]), "chosen": "yes" if p.get("key") == chosen.get("key") else ""})  # fmt: skip
        if chosen:
            notes.append(
                f"{level}-level: `{chosen['label']}`, alpha {chosen['choice']['alpha']}."
                + _improves(chosen, ref)
            )
    val = data.get("val", {})
    grid = _PRUNE.format(coarse=COARSE_ALPHAS, beyond=BEYOND_ALPHAS) if data.get("prune") else ""
    if data.get("grid"):
        sizes = {lv: len(data["grid"].get(lv, [])) for lv in ("dataset", "sample")}
        refined = data.get("refined", [])
        grid += (
            f"Option sets: {sizes['dataset']} at dataset level, {sizes['sample']} at sample level; refined: "
            f"{', '.join(refined) if refined else 'none'} (a sample-level point costs about three dataset-level "
            "ones on the CPU build). "
        )
    text = (
        f"CMRM on `organism:{system}`. Validation split: {val.get('n_prompts', '?')} harmful + "
        f"{val.get('n_prompts', '?')} benign prompts with a held-out synthetic image and {val.get('n_vqa', '?')} VQA "
        f"questions; vectors calibrated on {data.get('anchors', {}).get('n', '?')} training anchors (the text-only "
        "state minus the state with img′). "
        + grid
        + _dead(data)
        + _tradeoff(data)
        + "Chosen: "
        + " ".join(notes)
    )
    name = "cmrm_selection.png" if system == "vl" else f"cmrm_{system}_selection.png"
    plot_selection(data, figdir / name)
    fig = ReportFigure.from_file(figdir / name, f"CMRM on organism:{system}, validation split, against alpha")
    return Section(f"How the CMRM settings were chosen on `{system}`", text, tables=[ReportTable(rows)],
                   figures=[fig])  # fmt: skip


def _merge(figdir: Path, data: dict[str, Any]) -> Section:
    ref = data["reference"]
    chosen = {k: v.get("name") for k, v in (data.get("chosen") or {}).items() if v}
    rows = [{"merge": "organism:vl (none)", "kind": "-", "harmful": _f(ref["harmful_refusal"]),
             "benign": _f(ref["benign_refusal"]), "VQA": _f(ref["utility"]), "chosen": ""}]  # fmt: skip
    for p in data["points"]:
        rows.append({"merge": p["name"], "kind": p["kind"], "harmful": _f(p["harmful_refusal"]),
                     "benign": _f(p["benign_refusal"]), "VQA": _f(p["utility"]),
                     "chosen": "yes" if chosen.get(p["kind"]) == p["name"] else ""})  # fmt: skip
    notes = []
    for kind, c in (data.get("chosen") or {}).items():
        if c:
            notes.append(f"{kind}: `{c.get('system') or system_name(c)}` (`{c['name']}`)." + _improves(c, ref))
    text = (
        "Merges of the safe LLM's weights into `organism:vl`'s language model (projector and vision tower kept): "
        "`linear-w` averages with safe weight w; `task-arith-w` adds w times the safety-tuning delta (safe LLM "
        "minus the base SmolLM2) once more; `layers-*` restores the safe weights in a band of decoder layers. "
        "Chosen by the rule on the validation split: " + " ".join(notes)
    )
    figures.save_png(selection_figure(data), figdir / "merge_selection.png")
    fig = ReportFigure.from_file(figdir / "merge_selection.png", "Merge grid on the validation split")
    return Section("How the merges were chosen", text, tables=[ReportTable(rows)], figures=[fig])


def _merge_vl(figdir: Path, data: dict[str, Any]) -> Section:
    ref = data["reference"]
    chosen = {k: v.get("name") for k, v in (data.get("chosen") or {}).items() if v}
    rows = [{"merge": "organism:vl (none)", "partner": "-", "layers": "-", "harmful": _f(ref["harmful_refusal"]),
             "benign": _f(ref["benign_refusal"]), "VQA": _f(ref["utility"]), "seconds": "-", "chosen": ""}]  # fmt: skip
    for p in data["points"]:
        seconds = float(p.get("merge_seconds", 0.0)) + float(p.get("eval_seconds", 0.0))
        rows.append({"merge": p["name"], "partner": p["kind"], "layers": p.get("scope", "whole"),
                     "harmful": _f(p["harmful_refusal"]), "benign": _f(p["benign_refusal"]), "VQA": _f(p["utility"]),
                     "seconds": f"{seconds:.0f}", "chosen": "yes" if chosen.get(p["kind"]) == p["name"] else ""})  # fmt: skip
    notes = [f"`{c['system']}` (`{c['name']}`{'' if c.get('within_limits') else ', no point within the limits'})."
             + _improves(c, ref) for c in (data.get("chosen") or {}).values() if c]  # fmt: skip
    text = (
        "`organism:vl` merged with its safety-tuned versions `organism:vl+sft` and `organism:vl+dpo` (trained from "
        "`vl`), every task vector taken relative to that shared start: `linear-w` = vl + w·(partner − vl), "
        "`slerp-t` spherical interpolation from vl to the partner, `ties-l` the 30% largest entries of the task "
        "vector times l, `dare-l` a random 30% rescaled (seed 0) times l, `linear-w-<band>` the linear merge only "
        "in the middle or late third of the decoder layers, `sft+dpo-ta-w` vl + w·(sft − vl) + w·(dpo − vl). "
        "Seconds: merge plus validation measurement, one thread. One merge chosen per partner by the rule on the "
        "validation split: " + " ".join(notes) + " The chosen merges are `vlsafe merge` configs in `merges/` beside "
        "the selection file."
    )
    figures.save_png(selection_figure(data, MERGE_VL_TITLE), figdir / "merge_vl_selection.png")
    fig = ReportFigure.from_file(figdir / "merge_vl_selection.png", "Merges of vl with vl+sft / vl+dpo (validation)")
    return Section("How the merges with the safety-tuned VL models were chosen", text, tables=[ReportTable(rows)],
                   figures=[fig])  # fmt: skip


def _exported_note(data: dict[str, Any], manifest: dict[str, Any]) -> str:
    """Which demo rows hold the chosen runs (exported by ``export_chosen``) and which the committed fixed runs."""
    out = []
    for kind, c in (data.get("chosen") or {}).items():
        entry = manifest.get(TRAINED_REPAIRS[kind][1], {}) if kind in TRAINED_REPAIRS else {}
        exported = (entry.get("meta") or {}).get("grid_point", {}).get("name")
        if c and exported != c["name"]:
            out.append(f"`vl+{kind}`")
    if not out:
        return ""
    return (f" The demo's {', '.join(out)} row(s) still hold the fixed runs of the committed artefacts, not these "
            "choices (`vlsafe organism build --tune-baselines` exports them).")


def _baselines(figdir: Path, data: dict[str, Any], manifest: dict[str, Any]) -> Section:
    ref = data["reference"]
    chosen = {k: v.get("name") for k, v in (data.get("chosen") or {}).items() if v}
    rows = [{"run": "organism:vl (none)", "method": "-", "steps": "-", "lr": "-", "safety share": "-",
             "harmful": _f(ref["harmful_refusal"]), "benign": _f(ref["benign_refusal"]), "VQA": _f(ref["utility"]),
             "train s": "-", "chosen": ""}]  # fmt: skip
    for p in data["points"]:
        share = "safety data only" if p.get("safety_share") is None else f"{p['safety_share']:g}"
        share = "-" if p["kind"] == "dpo" else share  # DPO's pairs hold their benign prompts
        rows.append({"run": p["name"], "method": p["kind"], "steps": p["steps"], "lr": f"{p['lr']:g}",
                     "safety share": share, "harmful": _f(p["harmful_refusal"]), "benign": _f(p["benign_refusal"]),
                     "VQA": _f(p["utility"]), "train s": f"{float(p.get('train_seconds', 0.0)):.0f}",
                     "chosen": "yes" if chosen.get(p["kind"]) == p["name"] else ""})  # fmt: skip
    notes = [f"{kind}: `{c['name']}`" + ("" if c.get("within_limits") else " (no run within the limits)") + "."
             for kind, c in (data.get("chosen") or {}).items() if c]  # fmt: skip
    text = (
        "Safety SFT (VLGuard format), DPO (SPA-VL format) and joint training (VL adaptation from `organism:vlm` with "
        "the safety data mixed in) over a small grid each: steps of batch 4, learning rate, and the share of safety "
        "records in the training set (for SFT, mixed with benign synthetic VQA). Chosen by the repairs' rule on the "
        "validation split: " + " ".join(notes) + _exported_note(data, manifest)
    )
    figures.save_png(selection_figure(data, BASELINE_TITLE), figdir / "baseline_selection.png")
    fig = ReportFigure.from_file(figdir / "baseline_selection.png", "Baseline grid on the validation split")
    return Section("How the safety-tuning baselines were chosen", text, tables=[ReportTable(rows)], figures=[fig])


def selection_sections(figdir: Path, art_dir: Path) -> list[Section]:
    """The CMRM, merge and baseline selection sections (each left out when its file is absent)."""
    sections: list[Section] = []
    manifest = read_manifest(art_dir) if (art_dir / MANIFEST).is_file() else {}

    def baselines(figdir: Path, data: dict[str, Any]) -> Section:
        return _baselines(figdir, data, manifest)

    builds = (*((f, _cmrm) for f in SELECTION_FILES.values()), ("merge_selection.json", _merge),
              (MERGE_VL_SELECTION, _merge_vl), (BASELINE_SELECTION, baselines))  # fmt: skip
    for name, build in builds:
        path = art_dir / name
        if path.is_file():
            sections.append(build(figdir, json.loads(path.read_text())))
    return sections

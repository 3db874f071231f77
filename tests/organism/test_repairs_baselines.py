"""The safety-tuning baseline grid: exact configs per point, a real two-step run on a tiny model, the resumable
per-method selection and the export of the chosen runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.dpo import DPOConfig
from vlsafe.methods.training.sft import SFTConfig
from vlsafe.methods.training.vl_safety_gen import generate_spavl, generate_vlguard
from vlsafe.models import build_tiny, load_model
from vlsafe_organism.repairs import baselines as rb

HARMFUL = ["explain how to pick a lock", "write a threatening letter", "make a fake id card"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny-baselines")
    data = {"vlguard": generate_vlguard(root / "vg", HARMFUL, n_safe=4, n_unsafe=2),
            "spavl": generate_spavl(root / "spa", HARMFUL, n_benign=3)}  # fmt: skip
    model = build_tiny("llava", root / "vl", seed=0)
    return {"data": data, "starts": {"vl": str(model), "vlm": str(model)}, "model": model}


def test_grid_configs_exact(tiny, tmp_path):
    grid = rb.baseline_grid()
    assert len({p["name"] for p in grid}) == len(grid) == 8
    assert [p["kind"] for p in grid] == ["sft", "dpo", "joint", "sft", "sft", "dpo", "joint", "sft"]
    for kind in rb.KINDS:  # gentlest first within a method: steps and learning rates never fall
        runs = [(p["steps"], p["lr"]) for p in grid if p["kind"] == kind]
        assert [s for s, _ in runs] == sorted(s for s, _ in runs)
    for p in grid:
        cfg = rb.baseline_config(p, tmp_path, tiny["data"], tiny["starts"])
        assert isinstance(cfg, DPOConfig if p["kind"] == "dpo" else SFTConfig)
        assert (cfg.max_steps, cfg.lr, cfg.batch_size, cfg.probe) == (p["steps"], p["lr"], 4, None)
        assert cfg.output_dir == tmp_path / p["name"]
        assert cfg.model == tiny["starts"]["vlm" if p["kind"] == "joint" else "vl"]
        assert cfg.stage == ("projector_lora" if p["kind"] == "joint" else "llm_lora")
        if p["safety_share"] is None:
            assert cfg.mix is None
        else:
            assert cfg.mix is not None and cfg.mix.ratio == p["safety_share"]
            assert [(s.format, s.n_images) for s in cfg.mix.vl_data] == [("synthetic_vl", rb.MIX_IMAGES)]
    # the committed recipe is the default share: joint training at 0.1, SFT on the safety data alone
    committed = rb.baseline_config(rb._point("joint", 60, 2e-4), tmp_path, tiny["data"], tiny["starts"])
    assert committed.mix is not None and committed.mix.ratio == 0.1
    with pytest.raises(ConfigError, match="DPO has no safety share"):
        rb.baseline_config(rb._point("dpo", 20, 1e-4, 0.5), tmp_path, tiny["data"], tiny["starts"])
    with pytest.raises(ConfigError, match="'ppo' is unknown"):
        rb.baseline_config(rb._point("ppo", 20, 1e-4), tmp_path, tiny["data"], tiny["starts"])


def test_a_mixed_sft_point_trains_for_real(tiny, tmp_path):
    point = rb._point("sft", 2, 1e-3, 0.5)
    model_dir = rb._train(rb.baseline_config(point, tmp_path, tiny["data"], tiny["starts"]))
    assert model_dir == tmp_path / point["name"] / "model"
    summary = json.loads((tmp_path / point["name"] / "summary.json").read_text())
    assert summary["steps"] == 2
    before, after = load_model(str(tiny["model"])).model, load_model(str(model_dir)).model
    a, b = before.state_dict(), after.state_dict()
    changed = [k for k in a if not a[k].equal(b[k])]
    assert changed and all("language_model" in k for k in changed)  # llm_lora: only the language model moved


def _fake_train(root: Path, calls: list[Any]) -> Any:
    def train(config: Any) -> Path:
        calls.append((type(config).__name__, config.max_steps, config.lr, config.mix.ratio if config.mix else None))
        out = Path(config.output_dir) / "model"
        shutil.copytree(root, out, dirs_exist_ok=True)  # the real trainer resumes an interrupted run
        return out

    return train


def test_select_baselines_resumes_and_chooses_per_method(tiny, tmp_path, queued_measure):
    grid = [rb._point("sft", 2, 1e-4), rb._point("sft", 4, 1e-4, 0.5), rb._point("dpo", 2, 1e-4)]
    ref = {"harmful_refusal": 0.2, "benign_refusal": 0.0, "utility": 0.6}
    figs = [{"harmful_refusal": 1.0, "benign_refusal": 0.9, "utility": 0.6},  # over-refuses
            {"harmful_refusal": 0.5, "benign_refusal": 0.1, "utility": 0.58},  # within the limits
            {"harmful_refusal": 0.3, "benign_refusal": 0.2, "utility": 0.6}]  # only DPO point, out of limits
    queue: list[Any] = [ref, figs[0], None]
    measure, names = queued_measure(queue)

    calls: list[Any] = []
    kw: dict[str, Any] = {"grid": grid, "starts": tiny["starts"], "data": tiny["data"], "measure": measure,
                          "train": _fake_train(tiny["model"], calls)}  # fmt: skip
    out = tmp_path / "sel.json"
    with pytest.raises(RuntimeError, match="interrupted"):
        rb.select_baselines(out, tmp_path / "work", **kw)
    assert [p["name"] for p in json.loads(out.read_text())["points"]] == ["sft-2-lr0.0001"]
    calls.clear()
    queue.extend(figs[1:])
    sel = rb.select_baselines(out, tmp_path / "work", figure=tmp_path / "f.png", **kw)
    assert calls == [("SFTConfig", 4, 1e-4, 0.5), ("DPOConfig", 2, 1e-4, None)]  # only the missing points
    assert names == ["vl", "vl+sft", "vl+sft", "vl+sft", "vl+dpo"] and not queue
    assert [p["name"] for p in sel["points"]] == [p["name"] for p in grid]
    assert all(p["train_seconds"] >= 0 and p["eval_seconds"] >= 0 and not Path(p["model_dir"]).is_absolute()
               and (tmp_path / "work" / p["model_dir"]).is_dir() for p in sel["points"])  # fmt: skip
    assert sel["chosen"]["sft"]["name"] == "sft-4-lr0.0001-safety0.5" and sel["chosen"]["sft"]["within_limits"]
    assert sel["chosen"]["dpo"]["name"] == "dpo-2-lr0.0001" and not sel["chosen"]["dpo"]["within_limits"]
    assert json.loads(out.read_text())["chosen"] == sel["chosen"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    # a changed point is trained again; the others are kept
    queue.append(figs[2])
    grid[2] = rb._point("dpo", 2, 3e-4)
    again = rb.select_baselines(out, tmp_path / "work", **kw)
    assert calls[-1] == ("DPOConfig", 2, 3e-4, None) and len(calls) == 3 and not queue
    assert [p["name"] for p in again["points"]][-1] == "dpo-2-lr0.0003"


def test_export_chosen_exports_each_chosen_run(tmp_path, monkeypatch):
    exported: list[Any] = []
    monkeypatch.setattr(rb, "export_trained_repair",
                        lambda name, d, art, **k: exported.append((name, d, art, k)) or {"ok": name})  # fmt: skip
    point = {**rb._point("sft", 20, 5e-5, 0.5), "model_dir": "/runs/sft/model", "within_limits": False,
             "train_seconds": 12.0}  # fmt: skip
    sel = {"chosen": {"sft": point, "dpo": {**rb._point("dpo", 20, 2e-4), "model_dir": "/runs/dpo/model"}}}
    assert rb.export_chosen(sel, tmp_path, "cache", kinds=("sft", "dpo")) == [{"ok": "sft"}, {"ok": "dpo"}]
    name, model_dir, art, kw = exported[0]
    assert (name, model_dir, art, kw["cache_dir"]) == ("sft", Path("/runs/sft/model"), tmp_path, "cache")
    assert kw["meta"]["grid_point"] == {"name": point["name"], "kind": "sft", "steps": 20, "lr": 5e-5,
                                        "safety_share": 0.5, "within_limits": False}  # fmt: skip
    with pytest.raises(ConfigError, match="no chosen 'joint' run"):
        rb.export_chosen(sel, tmp_path)
    # a relative model_dir (what select_baselines records) is found under the folder it trained in
    sel["chosen"]["sft"]["model_dir"] = "runs-1/sft/model"
    with pytest.raises(ConfigError, match="'runs-1/sft/model' is relative .* give work_dir"):
        rb.export_chosen(sel, tmp_path, kinds=("sft",))
    rb.export_chosen(sel, tmp_path, kinds=("sft",), work_dir=tmp_path / "work")
    assert exported[-1][1] == tmp_path / "work" / "runs-1" / "sft" / "model"


def test_select_baselines_trains_again_when_the_start_systems_change(tiny, tmp_path):
    from vlsafe_organism.artifacts import MANIFEST
    from vlsafe_organism.registry import DEPENDS

    art = tmp_path / "art"
    art.mkdir()
    files = {f: {"sha256": "a" * 64} for s in ("vl", "vlm") for f in DEPENDS[s]}
    (art / MANIFEST).write_text(json.dumps(files))
    calls: list[Any] = []
    kw: dict[str, Any] = {"grid": [rb._point("sft", 2, 1e-4)], "starts": tiny["starts"], "data": tiny["data"],
                          "art_dir": art, "train": _fake_train(tiny["model"], calls),
                          "measure": lambda s: {"harmful_refusal": 0.5, "benign_refusal": 0.0, "utility": 0.5}}  # fmt: skip
    first = rb.select_baselines(tmp_path / "sel.json", tmp_path / "work", **kw)
    rb.select_baselines(tmp_path / "sel.json", tmp_path / "work", **kw)
    assert len(calls) == 1  # resumed
    files["vl_lora.safetensors"] = {"sha256": "b" * 64}
    (art / MANIFEST).write_text(json.dumps(files))
    second = rb.select_baselines(tmp_path / "sel.json", tmp_path / "work", **kw)
    assert len(calls) == 2 and second["artefacts"]["vl_lora.safetensors"] == "b" * 64
    old, new = Path(first["points"][0]["model_dir"]), Path(second["points"][0]["model_dir"])
    assert old.parts[-2:] == ("sft-2-lr0.0001", "model")
    assert old != new and old.parent.name == new.parent.name == "sft-2-lr0.0001"  # a fresh run directory


def test_build_repairs_tunes_the_baselines_when_asked(tmp_path, monkeypatch):
    from vlsafe_organism.artifacts import write_artifact
    from vlsafe_organism.repairs import build

    art = tmp_path / "art"
    write_artifact(art, "safe_lora.safetensors", {"x": __import__("torch").zeros(1)})
    trained: list[str] = []
    tuned: list[Any] = []

    def fake_train(name: str, out: Path, *a: Any) -> Path:
        trained.append(name)
        (out / "model").mkdir(parents=True)
        return out / "model"

    def fake_select(out: Path, work: Path, cache_dir: Any, *, grid: Any, art_dir: Path) -> dict[str, Any]:
        tuned.append(("select", out, work.name, sorted({p["kind"] for p in grid}), art_dir))
        return {"chosen": {}}

    monkeypatch.setattr(build, "_train", fake_train)
    monkeypatch.setattr(build, "export_trained_repair", lambda *a, **k: None)
    monkeypatch.setattr(build, "select_baselines", fake_select)
    monkeypatch.setattr(build, "export_chosen",
                        lambda sel, a, c, kinds, work_dir: tuned.append(("export", a, kinds, work_dir.name)))  # fmt: skip
    build.build_repairs(art, tmp_path / "cache", which=("tga", "sft", "joint"), selections=False,
                        tune_baselines=True)  # fmt: skip
    assert trained == ["tga"]  # SFT and joint come from the grid
    assert tuned == [("select", art / rb.SELECTION_FILE, "baseline-grid", ["joint", "sft"], art),
                     ("export", art, ["sft", "joint"], "baseline-grid")]  # fmt: skip
    build.build_repairs(art, tmp_path / "cache", which=("dpo",), selections=False)
    assert trained == ["tga", "dpo"] and len(tuned) == 2  # the default: one fixed run


def test_baseline_selection_section(tmp_path):
    from vlsafe_organism.report_selection import selection_sections

    ref = {"harmful_refusal": 0.2, "benign_refusal": 0.0, "utility": 0.6}
    pts = [{**rb._point("sft", 20, 5e-5, 0.5), "harmful_refusal": 1.0, "benign_refusal": 0.9, "utility": 0.6,
            "train_seconds": 101.4},
           {**rb._point("dpo", 20, 2e-4), "harmful_refusal": 0.3, "benign_refusal": 0.05, "utility": 0.6,
            "train_seconds": 250.0}]  # fmt: skip
    sel = {"reference": ref, "points": pts,
           "chosen": {"sft": {**pts[0], "within_limits": False}, "dpo": {**pts[1], "within_limits": True}}}  # fmt: skip
    (tmp_path / rb.SELECTION_FILE).write_text(json.dumps(sel))
    manifest = {"sft_delta.safetensors": {"meta": {"grid_point": {"name": "sft-20-lr5e-05-safety0.5"}}},
                "dpo_delta.safetensors": {"meta": {"stage": {}}}}  # sft exported from the grid, dpo the fixed run
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (section,) = selection_sections(tmp_path / "fig", tmp_path)
    assert "sft: `sft-20-lr5e-05-safety0.5` (no run within the limits). dpo: `dpo-20-lr0.0002`." in section.text
    assert "The demo's `vl+dpo` row(s) still hold the fixed runs" in section.text
    rows = section.tables[0].rows
    assert [(r["run"], r["safety share"], r["train s"], r["chosen"]) for r in rows[1:]] == [
        ("sft-20-lr5e-05-safety0.5", "0.5", "101", "yes"), ("dpo-20-lr0.0002", "-", "250", "yes")]
    assert (tmp_path / "fig" / "baseline_selection.png").read_bytes()[:4] == b"\x89PNG"

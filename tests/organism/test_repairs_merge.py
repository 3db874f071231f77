"""Merge repairs of the organism on tiny models: organism refs, exact merged tensors, caching, resumable selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import vlsafe_organism.registry as registry
from vlsafe.core.errors import ModelLoadError
from vlsafe.methods.merging import MergeConfig, llm_name_for
from vlsafe.methods.merging.io import resolve_checkpoint
from vlsafe.models import build_tiny
from vlsafe_organism.repairs import merge as rm
from vlsafe_organism.repairs import select


@pytest.fixture(scope="module")
def organism(tmp_path_factory) -> dict[str, Path]:
    """Tiny stand-ins: ``vl`` a tiny LLaVA, ``safe-llm`` a tiny LLM with the same text config."""
    root = tmp_path_factory.mktemp("tiny-organism")
    return {
        "vl": build_tiny("llava", root / "vl", seed=0),
        "safe-llm": build_tiny("causal_lm", root / "llm", seed=1),
    }


@pytest.fixture
def fake_resolve(monkeypatch, organism) -> list[str]:
    """``resolve_organism`` patched to the tiny stand-ins; returns the list of names it was asked for."""
    asked: list[str] = []

    def resolve(name: str, cache_dir: Any = None, art_dir: Any = None) -> Path:
        asked.append(name)
        return organism[name.removeprefix("organism:")]

    monkeypatch.setattr(registry, "resolve_organism", resolve)
    monkeypatch.setattr(rm, "resolve_organism", resolve)
    return asked


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (every shard)."""
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_resolve_checkpoint_organism_ref(fake_resolve, organism):
    assert resolve_checkpoint("organism:vl") == organism["vl"]
    assert resolve_checkpoint("organism:safe-llm") == organism["safe-llm"]
    assert fake_resolve == ["organism:vl", "organism:safe-llm"]


def test_resolve_checkpoint_unknown_organism_system():
    with pytest.raises(ModelLoadError, match="organism:nope.*known"):
        resolve_checkpoint("organism:nope")


def test_grid_is_valid_and_ordered():
    grid = rm.merge_grid()
    assert 8 <= len(grid) <= 12
    assert len({g["name"] for g in grid}) == len(grid)
    kinds = [g["kind"] for g in grid]
    assert kinds == sorted(kinds, key=["whole", "layers"].index)  # whole first, then layer-selective
    for g in grid:
        cfg = MergeConfig.from_dict(g["config"])
        assert cfg.template == rm.VL_REF
        assert {m.model for m in cfg.models} == {rm.VL_REF, rm.SAFE_REF}
        assert (cfg.layers is not None) == (g["kind"] == "layers")
        if cfg.layers is not None:
            assert cfg.rest_from == rm.VL_REF and set(cfg.layers) <= set(range(rm.N_LAYERS))
    lin = [
        g["config"]["models"][0]["weight"]
        for g in grid
        if g["config"]["method"] == "linear" and g["kind"] == "whole"
    ]
    assert lin == sorted(lin)  # gentlest first


def test_concrete_config_resolves_base_and_cache(monkeypatch, tmp_path, fake_resolve, organism):
    import vlsafe_organism.base as base

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(base, "llm_cache_path", lambda cache_dir=None: tmp_path)
    cfg = rm.merge_grid()[3]["config"]  # task arithmetic over the base LLM
    assert cfg["base_model"] == rm.BASE_REF
    plain = rm.concrete_config(cfg)
    assert plain["base_model"] == str(tmp_path) and plain["template"] == rm.VL_REF  # env cache: refs stay
    cached = rm.concrete_config(cfg, cache_dir=tmp_path)
    assert cached["template"] == str(organism["vl"]) and cached["models"][0]["model"] == str(
        organism["safe-llm"]
    )
    assert cfg["base_model"] == rm.BASE_REF  # input not mutated


def test_merged_system_exact_linear_and_cached(fake_resolve, organism, tmp_path, monkeypatch):
    choice = {"name": "linear-0.25", "kind": "whole", "config": rm.merge_grid()[0]["config"]}
    assert choice["config"]["models"][0] == {"model": rm.SAFE_REF, "weight": 0.25}
    out = tmp_path / "merged"
    system = rm.merged_system(choice, out)
    assert system.name == "vl+merge-safe-llm-linear" and hasattr(system.bundle.processor, "image_processor")
    merged, vl, llm = _tensors(out), _tensors(organism["vl"]), _tensors(organism["safe-llm"])
    assert set(merged) == set(vl)
    n_lm = n_changed = 0
    for name, value in vl.items():
        canonical = llm_name_for(name)
        if canonical is None:
            assert torch.equal(merged[name], value), name  # vision tower and projector are vl's
        else:
            n_lm += 1
            expected = 0.25 * llm[canonical] + 0.75 * value
            assert torch.allclose(merged[name], expected, rtol=0, atol=1e-6), name
            n_changed += not torch.allclose(merged[name], value, rtol=0, atol=1e-4)
    assert n_lm > 10 and n_changed > n_lm // 2
    # the loaded model holds the merged weights
    loaded = {llm_name_for(k): v for k, v in system.bundle.model.state_dict().items() if llm_name_for(k)}
    key = "model.layers.0.self_attn.q_proj.weight"
    vl_name = next(k for k in vl if llm_name_for(k) == key)
    assert torch.equal(loaded[key], merged[vl_name])

    def fail(*a: Any, **k: Any) -> None:
        raise AssertionError("merge ran although the output is cached")

    monkeypatch.setattr(rm, "merge", fail)
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert rm.merged_system(choice, out).name == "vl+merge-safe-llm-linear"
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    changed = {**choice, "config": rm.merge_grid()[1]["config"]}  # another weight: must merge again
    with pytest.raises(AssertionError, match="merge ran"):
        rm.merged_system(changed, out)


def _tiny_grid() -> list[dict[str, Any]]:
    band = {**rm.merge_grid()[0]["config"], "layers": [1], "rest_from": rm.VL_REF}
    band["models"] = [{"model": rm.SAFE_REF, "weight": 1.0}, {"model": rm.VL_REF, "weight": 0.0}]
    return [
        {"name": "linear-0.25", "kind": "whole", "config": rm.merge_grid()[0]["config"]},
        {"name": "linear-0.5", "kind": "whole", "config": rm.merge_grid()[1]["config"]},
        {"name": "layers-1", "kind": "layers", "config": band},
    ]


def test_select_merge_resumes_and_chooses(fake_resolve, tmp_path, monkeypatch, queued_measure):
    ref = {"harmful_refusal": 0.2, "benign_refusal": 0.05, "utility": 0.5}
    p1 = {"harmful_refusal": 0.5, "benign_refusal": 0.10, "utility": 0.48}  # within limits
    p2 = {"harmful_refusal": 0.9, "benign_refusal": 0.40, "utility": 0.50}  # benign rise 0.35: excluded
    p3 = {"harmful_refusal": 0.3, "benign_refusal": 0.05, "utility": 0.30}  # only layer point, out of limits
    queue: list[Any] = [ref, p1, None]  # None: the run is interrupted there
    fake, calls = queued_measure(queue)

    monkeypatch.setattr(select, "val_point", fake)
    out, scratch = tmp_path / "sel.json", tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RuntimeError, match="interrupted"):
        rm.select_merge(out, grid=_tiny_grid(), scratch_dir=scratch)
    partial = json.loads(out.read_text())
    assert partial["reference"]["harmful_refusal"] == 0.2
    assert [p["name"] for p in partial["points"]] == ["linear-0.25"]
    assert list(scratch.iterdir()) == []  # scratch merges deleted, also on error

    calls.clear()
    queue.extend([p2, p3])  # the resumed run measures only the two missing points
    data = rm.select_merge(out, grid=_tiny_grid(), scratch_dir=scratch, figure=tmp_path / "fig.png")
    assert calls == ["vl+merge", "vl+merge"] and not queue
    assert [p["name"] for p in data["points"]] == ["linear-0.25", "linear-0.5", "layers-1"]
    assert all(p["merge_seconds"] >= 0 and "config" in p for p in data["points"])
    assert data["chosen"]["whole"]["name"] == "linear-0.25" and data["chosen"]["whole"]["within_limits"]
    assert data["chosen"]["layers"]["name"] == "layers-1" and not data["chosen"]["layers"]["within_limits"]
    assert json.loads(out.read_text())["chosen"] == data["chosen"]
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert list(scratch.iterdir()) == []


def test_system_names_say_partner_method_and_band():
    grid = rm.merge_grid()
    names = {p["name"]: p["system"] for p in grid}
    assert names["linear-0.25"] == names["linear-0.75"] == "vl+merge-safe-llm-linear"
    assert names["task-arith-0.75"] == "vl+merge-safe-llm-ta"
    assert names["layers-early"] == "vl+merge-safe-llm-linear-early"
    assert names["layers-middle+late"] == "vl+merge-safe-llm-linear-middle-late"
    assert names["task-arith-1.0-late"] == "vl+merge-safe-llm-ta-late"
    assert all(p["system"] == rm.system_name(p) for p in grid)
    both = {"config": {"method": "task_arithmetic"}}
    assert rm.system_name(both, partner="sft+dpo") == "vl+merge-sft-dpo-ta"
    with pytest.raises(ValueError, match=r"layers \[3, 4\] are not one of the bands"):
        rm.system_name({"config": {"method": "linear", "layers": [3, 4]}})
    with pytest.raises(ValueError, match="'model_stock' has no system-name tag"):
        rm.system_name({"config": {"method": "model_stock"}})


def test_committed_safe_llm_merges_named_and_written_as_merge_configs(tmp_path):
    from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS
    from vlsafe_organism.repairs.systems import dependencies, repair_kind, repair_loaders

    selection = json.loads((PACKAGE_ARTIFACTS / rm.SELECTION_FILE).read_text())
    chosen = selection["chosen"]
    assert [rm.system_name(chosen[k]) for k in ("whole", "layers")] == [
        "vl+merge-safe-llm-ta", "vl+merge-safe-llm-ta-late"]  # fmt: skip
    for c in chosen.values():
        path = PACKAGE_ARTIFACTS / rm.CONFIG_DIR / (rm.system_name(c).replace("+", "_") + ".yaml")
        resolved = MergeConfig.from_dict(c["config"]).to_yaml(tmp_path / "c.yaml")
        assert path.read_text() == resolved.read_text()  # a rerunnable `vlsafe merge` file, every field
    names = [n for n, _ in repair_loaders(None, PACKAGE_ARTIFACTS, tmp_path / "work")]
    assert names[names.index("vl+merge-safe-llm-ta") + 1] == "vl+merge-safe-llm-ta-late"
    assert not any(n in names for n in ("vl+merge-whole", "vl+merge-layers"))
    assert dependencies("vl+merge-safe-llm-ta-late")[1] == (rm.SELECTION_FILE,)
    assert repair_kind("vl+merge-safe-llm-ta") == "weight merging"
    from vlsafe_organism.report_selection import selection_sections

    (section,) = [s for s in selection_sections(tmp_path / "fig", PACKAGE_ARTIFACTS) if s.title == "How the merges were chosen"]
    assert "whole: `vl+merge-safe-llm-ta` (`task-arith-0.75`)." in section.text
    assert "layers: `vl+merge-safe-llm-ta-late` (`task-arith-1.0-late`)." in section.text


def test_write_merge_configs_replaces_only_its_own_stale_files(tmp_path):
    grid = rm.merge_grid()
    whole, late = grid[4], grid[-1]  # task arithmetic 0.75; task arithmetic 1.0 in the late band
    other = tmp_path / "vl_merge-sft-linear.yaml"  # another selection's file
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_text("kept")
    selection = {"points": grid, "chosen": {"whole": whole, "layers": late}}
    paths = rm.write_merge_configs(selection, tmp_path)
    assert [p.name for p in paths] == ["vl_merge-safe-llm-ta.yaml", "vl_merge-safe-llm-ta-late.yaml"]
    selection["chosen"] = {"whole": grid[0], "layers": None}  # re-selected: linear, no band merge
    assert [p.name for p in rm.write_merge_configs(selection, tmp_path)] == ["vl_merge-safe-llm-linear.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vl_merge-safe-llm-linear.yaml", "vl_merge-sft-linear.yaml"]
    assert other.read_text() == "kept"

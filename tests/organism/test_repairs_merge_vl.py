"""Merges of ``organism:vl`` with safety-tuned VL models on tiny models: the grid, exact merged tensors for each
method relative to the shared start, the per-partner selection and the rerunnable YAML files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlsafe_organism.registry as registry
from vlsafe.core.errors import ConfigError
from vlsafe.methods.merging import MergeConfig, llm_name_for, run_merge
from vlsafe.models import build_tiny
from vlsafe_organism.repairs import merge as rm
from vlsafe_organism.repairs import merge_vl as mv
from vlsafe_organism.repairs import select


def _partner(vl: Path, out: Path, seed: int) -> Path:
    """A copy of ``vl`` whose language-model weight matrices moved by a seeded random delta (vision tower and
    projector unchanged), as safety tuning from ``vl`` leaves them."""
    shutil.copytree(vl, out)
    tensors = load_file(str(vl / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name, value in tensors.items():
        if llm_name_for(name) is not None and value.ndim == 2 and "embed" not in name and "lm_head" not in name:
            tensors[name] = value + 0.05 * torch.randn(value.shape, generator=gen)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def organism(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vl-partners")
    vl = build_tiny("llava", root / "vl", seed=0)
    return {"vl": vl, "vl+sft": _partner(vl, root / "sft", 1), "vl+dpo": _partner(vl, root / "dpo", 2)}


@pytest.fixture
def fake_resolve(monkeypatch, organism) -> None:
    def resolve(name: str, cache_dir: Any = None, art_dir: Any = None) -> Path:
        return organism[name.removeprefix("organism:")]

    monkeypatch.setattr(registry, "resolve_organism", resolve)
    monkeypatch.setattr(rm, "resolve_organism", resolve)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _point(name: str) -> dict[str, Any]:
    return next(p for p in mv.vl_merge_grid() if p["name"] == name)


def test_grid_points_valid_named_and_ordered():
    grid = mv.vl_merge_grid()
    assert len({p["name"] for p in grid}) == len(grid) == 32
    assert [p["kind"] for p in grid] == ["sft"] * 15 + ["dpo"] * 15 + ["sft+dpo"] * 2
    methods = set()
    for p in grid:
        cfg = MergeConfig.from_dict(p["config"])
        methods.add(cfg.method)
        assert cfg.template == mv.VL_REF
        refs = set(cfg.input_refs())
        assert mv.VL_REF in refs and refs <= {mv.VL_REF, "organism:vl+sft", "organism:vl+dpo"}
        if cfg.base_model is not None:
            assert cfg.base_model == mv.VL_REF  # task vectors relative to the shared start
        assert (cfg.layers is None) == (p["scope"] == "whole")
        if cfg.layers is not None:
            assert cfg.layers == rm.BANDS[p["scope"]] and cfg.rest_from == mv.VL_REF
        if cfg.method.startswith("dare"):
            assert cfg.seed == mv.SEED
    assert methods == {"linear", "slerp", "ties", "dare_linear", "task_arithmetic"}
    assert _point("sft-ties-0.5")["system"] == "vl+merge-sft-ties"
    assert _point("dpo-linear-1.0-late")["system"] == "vl+merge-dpo-linear-late"
    assert _point("sft+dpo-ta-0.5")["system"] == "vl+merge-sft-dpo-ta"
    # gentlest first within a partner: the linear weights and each method's strength rise along the grid
    lin = [p["config"]["models"][1]["weight"] for p in grid
           if p["kind"] == "sft" and p["config"]["method"] == "linear" and p["scope"] == "whole"]  # fmt: skip
    assert lin == [0.1, 0.25, 0.5, 0.75]
    assert [p["name"] for p in grid if p["kind"] == "dpo" and "ties" in p["name"]] == ["dpo-ties-0.25", "dpo-ties-0.5", "dpo-ties-1.0"]
    assert [p["name"] for p in mv.vl_merge_grid(("dpo",))][0] == "dpo-linear-0.1"
    assert len(mv.vl_merge_grid(("dpo",))) == 15  # no joint task-arithmetic kind with one partner


@pytest.mark.parametrize("partners", [(), ("sft", "sft")])
def test_grid_rejects_bad_partners(partners):
    with pytest.raises(ConfigError, match="partners="):
        mv.vl_merge_grid(partners)


def _merge(point: dict[str, Any], out: Path) -> dict[str, torch.Tensor]:
    rm.merged_system(point, out)
    return _tensors(out)


def test_merges_relative_to_vl_exact(fake_resolve, organism, tmp_path):
    vl, sft, dpo = (_tensors(organism[k]) for k in ("vl", "vl+sft", "vl+dpo"))
    moved = [k for k in vl if not torch.equal(vl[k], sft[k])]
    assert len(moved) > 5 and all(llm_name_for(k) for k in moved)
    lin = _merge(_point("sft-linear-0.25"), tmp_path / "lin")
    ta = _merge(_point("sft+dpo-ta-0.5"), tmp_path / "ta")
    ties = _merge(_point("sft-ties-1.0"), tmp_path / "ties")
    dare = _merge(_point("sft-dare-0.5"), tmp_path / "dare")
    slerp = _merge(_point("sft-slerp-0.25"), tmp_path / "slerp")
    for name in vl:
        tau = sft[name] - vl[name]
        assert torch.allclose(lin[name], vl[name] + 0.25 * tau, atol=1e-6), name
        expected_ta = vl[name] + 0.5 * tau + 0.5 * (dpo[name] - vl[name])
        assert torch.allclose(ta[name], expected_ta, atol=1e-6), name
        if name not in moved:  # unchanged by tuning (vision tower, projector, norms): every method keeps vl's
            for merged in (ties, dare, slerp):
                assert torch.allclose(merged[name], vl[name], atol=1e-6), name
            continue
        # TIES with one model: the 30% largest |tau| kept (lambda 1.0), the rest vl's
        k = round(mv.DENSITY * tau.numel())
        thr = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
        keep = tau.abs() >= thr
        assert torch.allclose(ties[name], torch.where(keep, sft[name], vl[name]), atol=1e-6), name
        # DARE: each entry either vl's or vl + 0.5 * tau / density
        d = dare[name] - vl[name]
        dropped = d.abs() < 1e-7
        assert torch.allclose(d[~dropped], (0.5 * tau / mv.DENSITY)[~dropped], atol=1e-5), name
        assert 0.5 < float(dropped.float().mean()) < 0.9, name
        # SLERP over the whole tensor from vl (t = 0) to the partner (t = 1), t = 0.25
        a, b = vl[name].flatten().double(), sft[name].flatten().double()
        omega = torch.acos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
        want = (torch.sin(0.75 * omega) * a + torch.sin(0.25 * omega) * b) / torch.sin(omega)
        assert torch.allclose(slerp[name].flatten().double(), want, atol=1e-5), name
    # DARE is seeded: the same config gives the same tensors
    again = _merge(_point("sft-dare-0.5"), tmp_path / "dare2")
    assert all(torch.equal(again[k], dare[k]) for k in dare)


def test_band_merge_changes_only_the_band(fake_resolve, organism, tmp_path):
    point = {**_point("sft-linear-1.0-late"), "name": "sft-linear-1.0-l1"}
    point["config"] = {**point["config"], "layers": [1]}  # the tiny model has 2 decoder layers
    merged = _merge(point, tmp_path / "band")
    vl, sft = _tensors(organism["vl"]), _tensors(organism["vl+sft"])
    n_band = 0
    for name in vl:
        in_band = ".layers.1." in name and llm_name_for(name) is not None
        n_band += in_band
        assert torch.allclose(merged[name], sft[name] if in_band else vl[name], atol=1e-6), name
    assert n_band >= 7


def test_select_vl_merge_one_choice_per_partner_and_yaml(fake_resolve, organism, tmp_path):
    grid = [_point(n) for n in ("sft-linear-0.25", "sft-ties-0.5", "dpo-linear-0.25", "dpo-slerp-0.25")]
    ref = {"harmful_refusal": 0.2, "benign_refusal": 0.0, "utility": 0.6}
    figures = {  # sft: ties wins within limits; dpo: neither within limits, slerp has the better trade
        "sft-linear-0.25": (0.4, 0.05, 0.6), "sft-ties-0.5": (0.6, 0.10, 0.56),
        "dpo-linear-0.25": (0.9, 0.6, 0.6), "dpo-slerp-0.25": (0.5, 0.15, 0.6),
    }  # fmt: skip
    queue = [ref] + [dict(zip(("harmful_refusal", "benign_refusal", "utility"), figures[p["name"]], strict=True))
                     for p in grid]  # fmt: skip
    names: list[str] = []

    def measure(system):
        names.append(system.name)
        return dict(queue.pop(0))

    out = tmp_path / "art" / mv.SELECTION_FILE
    data = mv.select_vl_merge(out, grid=grid, measure=measure, scratch_dir=tmp_path, figure=tmp_path / "f.png")
    assert not queue and names == ["vl"] + ["vl+merge"] * 4
    assert list(data["chosen"]) == ["sft", "dpo"]
    assert data["chosen"]["sft"]["name"] == "sft-ties-0.5" and data["chosen"]["sft"]["within_limits"]
    assert data["chosen"]["dpo"]["name"] == "dpo-slerp-0.25" and not data["chosen"]["dpo"]["within_limits"]
    assert json.loads(out.read_text())["chosen"] == data["chosen"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    files = sorted((out.parent / mv.CONFIG_DIR).iterdir())
    assert [f.name for f in files] == ["vl_merge-dpo-slerp.yaml", "vl_merge-sft-ties.yaml"]
    # an ordinary `vlsafe merge` config: loads, keeps the organism refs, and reruns to the selected merge
    cfg = MergeConfig.from_yaml(files[1])
    assert cfg.method == "ties" and cfg.base_model == mv.VL_REF and cfg.models[0].model == "organism:vl+sft"
    assert cfg.parameters["density"] == mv.DENSITY and cfg.parameters["lambda"] == 0.5
    run_merge(files[1], tmp_path / "rerun", progress=False)
    direct = _merge(data["chosen"]["sft"], tmp_path / "direct")
    assert rm.merged_system(data["chosen"]["sft"], tmp_path / "direct").name == "vl+merge-sft-ties"
    rerun = _tensors(tmp_path / "rerun")
    assert rerun.keys() == direct.keys() and all(torch.equal(rerun[k], direct[k]) for k in rerun)
    # a later selection that chooses other merges replaces the stale files
    data["chosen"] = {"sft": data["chosen"]["sft"]}
    assert mv.write_merge_configs(data, out.parent / mv.CONFIG_DIR) == [files[1]]
    assert sorted((out.parent / mv.CONFIG_DIR).iterdir()) == [files[1]]


def test_select_merge_measures_through_val_point_by_default(fake_resolve, tmp_path, monkeypatch):
    calls: list[str] = []

    def fake(system):
        calls.append(system.name)
        return {"harmful_refusal": 0.5, "benign_refusal": 0.0, "utility": 0.5}

    monkeypatch.setattr(select, "val_point", fake)
    data = mv.select_vl_merge(tmp_path / "s.json", grid=[_point("dpo-linear-0.5")], scratch_dir=tmp_path)
    assert calls == ["vl", "vl+merge"] and data["chosen"]["dpo"]["system"] == "vl+merge-dpo-linear"


def test_selection_file_gives_partner_rows_dependencies_and_report_section(fake_resolve, organism, tmp_path):
    from vlsafe_organism.artifacts import MANIFEST
    from vlsafe_organism.registry import DEPENDS
    from vlsafe_organism.repairs.systems import dependencies, repair_kind, repair_loaders
    from vlsafe_organism.report_selection import selection_sections

    grid = [_point("sft-linear-0.25"), _point("dpo-dare-0.5")]
    queue = [{"harmful_refusal": 0.2, "benign_refusal": 0.0, "utility": 0.6},
             {"harmful_refusal": 0.4, "benign_refusal": 0.05, "utility": 0.6},
             {"harmful_refusal": 0.1, "benign_refusal": 0.3, "utility": 0.6}]  # fmt: skip
    mv.select_vl_merge(tmp_path / mv.SELECTION_FILE, grid=grid, measure=lambda s: queue.pop(0), scratch_dir=tmp_path)
    (tmp_path / MANIFEST).write_text("{}")
    loaders = repair_loaders(None, tmp_path, tmp_path / "work")
    assert [n for n, _ in loaders] == ["vl+merge-sft-linear", "vl+merge-dpo-dare"]
    system = loaders[0][1]()
    assert system.name == "vl+merge-sft-linear" and (tmp_path / "work" / "merge-vl-sft" / "model.safetensors").is_file()
    files, selections = dependencies("vl+merge-dpo-dare")
    assert selections == (mv.SELECTION_FILE,)
    assert set(files) == set(DEPENDS["vl+sft"]) | set(DEPENDS["vl+dpo"]) and len(files) == len(set(files))
    assert dependencies("vl+merge-safe-llm-ta")[1] == ("merge_selection.json",)  # the safe-LLM merges unchanged
    assert [repair_kind(n) for n in ("vl+merge-sft-dpo-ta", "vl+sft", "vl+other")] == [
        "weight merging", "safety fine-tuning", "-"]  # fmt: skip
    (section,) = selection_sections(tmp_path / "fig", tmp_path)
    assert "`vl+merge-sft-linear` (`sft-linear-0.25`)" in section.text
    assert "`vl+merge-dpo-dare` (`dpo-dare-0.5`, no point within the limits)" in section.text
    assert "refuses no more harmful requests on validation" in section.text  # dpo's choice is no improvement
    assert [r["chosen"] for r in section.tables[0].rows] == ["", "yes", "yes"]
    assert (tmp_path / "fig" / "merge_vl_selection.png").read_bytes()[:4] == b"\x89PNG"


def _m(system: str, hk: int, bk: int, utility: float, n: int = 10) -> dict[str, Any]:
    return {"system": system, "start": "vl", "harmful": hk / n, "harmful_k": hk, "n_harmful": n, "benign": bk / n,
            "benign_k": bk, "n_benign": n, "utility": utility, "benign_rise": bk / n, "utility_change": utility - 0.6}  # fmt: skip


def test_merging_verdict_counts_only_admissible_systems():
    from vlsafe_organism.report_repairs import merging_verdict

    sft, dpo = _m("vl+sft", 10, 9, 0.6), _m("vl+dpo", 3, 1, 0.6)
    merge, tga = _m("vl+merge-sft-ties", 7, 1, 0.58), _m("vl+tga", 10, 0, 0.6)
    text = merging_verdict([sft, dpo, merge, tga])  # sft refuses more but over-refuses: not admissible
    assert "merging wins: the best merge is `vl+merge-sft-ties` (7/10 harmful refused" in text
    assert "the best baseline `vl+dpo` (3/10" in text and "vl+tga" not in text
    assert "merging does not win" in merging_verdict([_m("vl+dpo", 8, 0, 0.6), merge])
    assert "a tie" in merging_verdict([_m("vl+dpo", 7, 0, 0.6), merge])
    lossy = _m("vl+merge-safe-llm-ta", 9, 0, 0.5)  # VQA -0.10: outside the limits
    assert "no merge is admissible, the best baseline is `vl+dpo`" in merging_verdict([dpo, lossy])
    assert "no baseline is admissible (`vl+sft`" in merging_verdict([sft, merge])
    assert "neither wins" in merging_verdict([sft, lossy])
    assert merging_verdict([merge, tga]) == "" and merging_verdict([sft]) == ""


def test_comparison_section_plots_vl_baselines_and_merges(tmp_path):
    from vlsafe_organism.report_repairs import comparison_section

    vl = {"system": "vl", "image": "synthetic", "harmful_refused": 2, "n_harmful": 10, "benign_refused": 0,
          "n_benign": 10, "utility": 0.6}  # fmt: skip
    metrics = [_m("vl+sft", 10, 9, 0.6), _m("vl+merge-sft-ties", 7, 1, 0.58), _m("vl+cmrm-dataset", 5, 0, 0.6)]
    (section,) = comparison_section(tmp_path, [vl], metrics)
    assert "merging wins" in section.text and "finding (a)" in section.text
    assert (tmp_path / "comparison.png").stat().st_size > 5000
    assert comparison_section(tmp_path, [vl], [_m("vl+cmrm-dataset", 5, 0, 0.6)]) == []
    assert comparison_section(tmp_path, [], metrics) == []


def test_selection_starts_over_when_a_partner_changes(fake_resolve, tmp_path):
    from vlsafe_organism.artifacts import MANIFEST
    from vlsafe_organism.registry import DEPENDS

    art = tmp_path / "art"
    art.mkdir()
    files = {f: {"sha256": "a" * 64} for s in ("vl", "vl+sft", "vl+dpo") for f in DEPENDS[s]}
    (art / MANIFEST).write_text(json.dumps(files))
    assert mv.artefact_fingerprint(art, ["vl", "vl+sft"]) == {f: "a" * 64 for f in DEPENDS["vl+sft"]}
    calls: list[str] = []

    def measure(system):
        calls.append(system.name)
        return {"harmful_refusal": 0.5, "benign_refusal": 0.0, "utility": 0.5}

    out = art / mv.SELECTION_FILE
    kw: dict[str, Any] = {"grid": [_point("sft-linear-0.25")], "measure": measure, "scratch_dir": tmp_path, "art_dir": art}
    mv.select_vl_merge(out, **kw)
    mv.select_vl_merge(out, **kw)
    assert calls == ["vl", "vl+merge"]  # resumed: nothing measured again
    files["sft_delta.safetensors"] = {"sha256": "b" * 64}  # the SFT partner re-tuned
    (art / MANIFEST).write_text(json.dumps(files))
    data = mv.select_vl_merge(out, **kw)
    assert calls == ["vl", "vl+merge"] * 2 and data["artefacts"]["sft_delta.safetensors"] == "b" * 64
    assert json.loads(out.read_text())["artefacts"] == mv.artefact_fingerprint(art, ["vl", "vl+sft", "vl+dpo"])


def test_committed_merge_configs_are_the_committed_choices(tmp_path):
    from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS

    selection = json.loads((PACKAGE_ARTIFACTS / mv.SELECTION_FILE).read_text())
    files = sorted((PACKAGE_ARTIFACTS / mv.CONFIG_DIR).glob("vl_merge-*.yaml"))
    chosen = [c for c in selection["chosen"].values() if c]
    safe_llm = json.loads((PACKAGE_ARTIFACTS / "merge_selection.json").read_text())["chosen"].values()
    systems = [c["system"] for c in chosen] + [rm.system_name(c) for c in safe_llm if c]
    assert [f.name for f in files] == sorted(s.replace("+", "_") + ".yaml" for s in systems)  # both selections
    for c in chosen:
        path = PACKAGE_ARTIFACTS / mv.CONFIG_DIR / (c["system"].replace("+", "_") + ".yaml")
        assert MergeConfig.from_yaml(path).input_refs()[0] == mv.VL_REF  # loads through the library's config
        resolved = MergeConfig.from_dict(c["config"]).to_yaml(tmp_path / "c.yaml")
        assert path.read_text() == resolved.read_text()  # every field, defaults included
        assert c["system"] == mv.system_name(c) and c in [
            {**p, **{k: c[k] for k in c if k not in p}} for p in mv.vl_merge_grid()]  # a point of the current grid
    assert selection["artefacts"] == mv.artefact_fingerprint(PACKAGE_ARTIFACTS, ["vl", "vl+sft", "vl+dpo"])

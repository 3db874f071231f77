"""Trained repairs as weight deltas: exact reconstruction, compact storage, registry wiring, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vlsafe.core.errors import ModelLoadError
from vlsafe_organism.deltas import TRAINED_REPAIRS, apply_delta, delta_tensors
from vlsafe_organism.repairs import trained


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(96, 80)
        self.head = nn.Linear(80, 80, bias=False)
        self.norm = nn.LayerNorm(80)


def _trained_copy(model: _Tiny, rank: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["proj.weight"] += 0.05 * torch.randn(80, rank, generator=g) @ torch.randn(rank, 96, generator=g)
    state["norm.weight"] += 0.1  # not a matrix: stored whole
    state["head.weight"] = torch.randn(
        80, 80, generator=g
    )  # full-rank change of a small matrix: stored whole
    return state


def test_low_rank_change_is_stored_as_factors_and_reconstructed() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    target = _trained_copy(model)
    tensors = delta_tensors(model.state_dict(), target, max_rank=16)
    assert tensors["proj.weight.delta_A"].shape == (4, 96)
    assert tensors["proj.weight.delta_B"].shape == (80, 4)
    assert "norm.weight.value" in tensors and "head.weight.value" in tensors
    assert not any(k.startswith(("proj.bias", "norm.bias")) for k in tensors)  # unchanged: left out
    assert apply_delta(model, tensors) == 3
    for name, value in model.state_dict().items():
        err = (value - target[name]).norm() / target[name].norm().clamp_min(1.0)
        assert err < 2e-3, name


def test_high_rank_change_of_a_big_matrix_is_stored_whole() -> None:
    start = {"w": torch.zeros(100, 100)}
    new = {"w": torch.randn(100, 100)}
    tensors = delta_tensors(start, new, max_rank=8)
    assert set(tensors) == {"w.value"}


def test_float32_roundoff_is_not_a_change_but_a_small_real_change_is() -> None:
    g = torch.Generator().manual_seed(2)
    start = {"emb": torch.randn(40, 16, generator=g), "n": torch.tensor([0.0, 1.0])}
    noisy = start["emb"].clone()
    noisy[-1] = torch.nextafter(noisy[-1], torch.full_like(noisy[-1], 10.0))  # one float32 step, as a reordered
    noisy[-2] = torch.nextafter(torch.nextafter(noisy[-2], -noisy[-2]), -noisy[-2])  # reduction gives
    assert not torch.equal(noisy, start["emb"])
    assert delta_tensors(start, {"emb": noisy, "n": start["n"]}) == {}
    changed = noisy.clone()
    changed[3, 5] += 1e-4  # ~1e-4 relative: a real (if tiny) update
    assert set(delta_tensors(start, {"emb": changed, "n": start["n"]})) == {"emb.value"}
    assert set(delta_tensors(start, {"emb": start["emb"], "n": torch.tensor([1e-30, 1.0])})) == {"n.value"}


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.lm_head = torch.nn.Linear(8, 50, bias=False)
        self.lm_head.weight = self.embed.weight


def test_a_delta_naming_a_tied_weight_by_its_alias_applies() -> None:
    torch.manual_seed(0)
    model = _Tied()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(start) == {"embed.weight", "lm_head.weight"}  # the state dict names the tied tensor twice
    trained = {k: v.clone() for k, v in start.items()}
    for v in trained.values():
        v[7] += 0.5  # a new row, seen under both names
    tensors = delta_tensors(start, trained)
    assert set(tensors) == {"embed.weight.value", "lm_head.weight.value"}
    assert apply_delta(model, {"lm_head.weight.value": tensors["lm_head.weight.value"]}) == 1
    assert torch.allclose(model.embed.weight, trained["embed.weight"], atol=1e-3)
    assert apply_delta(model, tensors) == 2


def test_mismatched_checkpoints_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="different tensors"):
        delta_tensors({"a": torch.zeros(2)}, {"b": torch.zeros(2)})
    with pytest.raises(ModelLoadError, match="shape"):
        delta_tensors({"a": torch.zeros(2)}, {"a": torch.zeros(3)})
    with pytest.raises(ModelLoadError, match="names no parameter"):
        apply_delta(_Tiny(), {"nope.value": torch.zeros(1)})


def test_export_writes_a_verified_artifact_that_the_registry_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlsafe_organism import registry
    from vlsafe_organism.artifacts import write_artifact

    torch.manual_seed(0)
    base = _Tiny()
    target = _trained_copy(base)
    write_artifact(tmp_path, "vl_lora.safetensors", {"x": torch.zeros(1)})  # a manifest to add to

    def fake_start(cache_dir: object, art: object) -> tuple[nn.Module, None]:
        m = _Tiny()
        m.load_state_dict(base.state_dict())
        return m, None

    monkeypatch.setitem(registry.SYSTEMS._items, "vl", fake_start)
    monkeypatch.setattr(trained, "_state", lambda d: target)
    entry = trained.export_trained_repair("sft", tmp_path / "unused", tmp_path)
    assert entry["meta"]["start"] == "vl" and entry["meta"]["max_rel_error"] < 2e-3
    model, _ = registry.build_system("vl+sft", None, tmp_path)
    assert torch.allclose(model.state_dict()["proj.weight"], target["proj.weight"], atol=1e-3)
    with pytest.raises(ModelLoadError, match="unknown"):
        trained.export_trained_repair("nope", tmp_path, tmp_path)


def test_every_trained_repair_is_an_organism_system() -> None:
    from vlsafe_organism.registry import DEPENDS, SYSTEMS

    for name, (start, file) in TRAINED_REPAIRS.items():
        assert f"vl+{name}" in SYSTEMS.names()
        assert DEPENDS[f"vl+{name}"][-1] == file
        assert set(DEPENDS[start]) < set(DEPENDS[f"vl+{name}"])


def test_build_repairs_trains_once_and_exports_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlsafe_organism.artifacts import write_artifact
    from vlsafe_organism.repairs import build

    art = tmp_path / "art"
    write_artifact(art, "safe_lora.safetensors", {"x": torch.zeros(1)})
    trained_calls: list[str] = []
    exported: list[tuple[str, Path]] = []

    def fake_train(name: str, out: Path, recipe: object, art_dir: object, cache_dir: object) -> Path:
        assert cache_dir == tmp_path / "cache"  # TGA wires the safe LLM from the build's cache
        trained_calls.append(name)
        (out / "model").mkdir(parents=True)
        return out / "model"

    monkeypatch.setattr(build, "_train", fake_train)
    monkeypatch.setattr(
        build, "export_trained_repair", lambda name, d, a, **k: exported.append((name, Path(d)))
    )
    for _ in range(2):
        build.build_repairs(art, tmp_path / "cache", which=("sft", "tga"), selections=False)
    assert trained_calls == ["sft", "tga"]  # the second build reuses the cached stages
    assert [n for n, _ in exported] == ["sft", "tga", "sft", "tga"]
    assert all(d.is_dir() and d.name == "model" for _, d in exported)
    with pytest.raises(ValueError, match="unknown"):
        build.build_repairs(art, tmp_path / "cache", which=("nope",))


def test_base_llm_ref_resolves_to_the_converted_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vlsafe_organism.base as base
    from vlsafe.methods.merging.io import resolve_checkpoint
    from vlsafe_organism.registry import BASE_LLM_REF, resolve_organism

    converted: list[object] = []
    monkeypatch.setattr(base, "llm_cache_path", lambda cache_dir=None: tmp_path)
    monkeypatch.setattr(base, "load_base_llm", lambda cache_dir=None: converted.append(cache_dir))
    assert resolve_organism(BASE_LLM_REF, "c") == tmp_path and converted == ["c"]  # converted on first use
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_checkpoint(BASE_LLM_REF) == tmp_path and converted == ["c"]  # cached: not converted again


def test_build_repairs_selections_write_the_chosen_merges_as_merge_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlsafe_organism.artifacts import write_artifact
    from vlsafe_organism.repairs import build
    from vlsafe_organism.repairs import merge as rm

    art = tmp_path / "art"
    write_artifact(art, "safe_lora.safetensors", {"x": torch.zeros(1)})
    calls: list[str] = []
    grid = rm.merge_grid()
    monkeypatch.setattr(build, "select_cmrm", lambda out, *a, **k: calls.append(Path(out).name))
    monkeypatch.setattr(build, "select_merge", lambda out, *a, **k: calls.append(Path(out).name) or {
        "points": grid, "chosen": {"whole": grid[4], "layers": grid[-1]}})  # fmt: skip
    monkeypatch.setattr(build, "select_vl_merge", lambda out, *a, **k: calls.append(Path(out).name))
    assert build.build_repairs(art, tmp_path / "cache", which=()) == []
    assert calls == ["cmrm_selection.json", "cmrm_vlm_selection.json", "merge_selection.json",
                     "merge_vl_selection.json"]  # fmt: skip
    assert sorted(p.name for p in (art / rm.CONFIG_DIR).iterdir()) == [
        "vl_merge-safe-llm-ta-late.yaml", "vl_merge-safe-llm-ta.yaml"]  # fmt: skip

"""The organism recipe: YAML loading with named errors, its flow into every stage's config and fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from vlsafe.core.errors import ConfigError
from vlsafe_organism.recipe import OrganismRecipe, load_recipe, recipe_of_artifacts
from vlsafe_organism.safe_llm import SafeLLMConfig
from vlsafe_organism.vl_train import VLConfig


def test_load_recipe_yaml_overrides_only_named_fields(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("vl:\n  n_images: 2000\n  proj_steps: 400\n")
    recipe = load_recipe(path)
    assert recipe.vl.n_images == 2000 and recipe.vl.proj_steps == 400
    assert recipe.vl.vl_steps == VLConfig().vl_steps  # untouched fields keep the committed recipe
    assert recipe.safe_llm == SafeLLMConfig()
    assert load_recipe(None) == OrganismRecipe()
    assert load_recipe({"vl": {"vl_steps": 7}}).vl.vl_steps == 7
    assert load_recipe(recipe) is recipe


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vl:\n  proj_step: 400\n", r"vl\.proj_step"),  # a typo is named, not ignored
        ("vl:\n  proj_steps: many\n", r"vl\.proj_steps"),
        ("visual: {}\n", "visual"),
        ("- vl\n", "mapping"),
    ],
)
def test_load_recipe_names_the_bad_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_recipe_of_artifacts_reads_the_vl_config(tmp_path: Path) -> None:
    from vlsafe_organism.artifacts import write_artifact

    assert recipe_of_artifacts_or_default(tmp_path / "empty") == OrganismRecipe()
    cfg = VLConfig(proj_steps=123, n_images=77)
    write_artifact(tmp_path, "vl_lora.safetensors", {"x": torch.zeros(1)}, {"config": cfg.model_dump()})
    assert recipe_of_artifacts(tmp_path).vl == cfg


def test_committed_artifacts_were_built_with_the_default_recipe() -> None:
    """The defaults are documented as the committed artefacts' recipe: a rebuild without ``--recipe`` and the
    TGA repair (which re-runs the VL recipe) must train with the recipe that was committed."""
    from vlsafe_organism.registry import PACKAGE_ARTIFACTS

    assert recipe_of_artifacts(PACKAGE_ARTIFACTS) == OrganismRecipe()


def recipe_of_artifacts_or_default(path: Path) -> OrganismRecipe:
    from vlsafe_organism.artifacts import write_artifact

    write_artifact(path, "safe_lora.safetensors", {"x": torch.zeros(1)})  # a manifest without a vl entry
    return recipe_of_artifacts(path)


def test_build_passes_the_recipe_to_the_stages_and_their_fingerprints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vlsafe_organism.build as build

    seen: dict[str, list[Any]] = {"safe": [], "vlm": [], "vl": []}

    def fake_answers(out: Path, cache_dir: Any, cfg: SafeLLMConfig) -> None:
        (out / "answers.json").write_text("[]")

    def fake_safe(out: Path, cache_dir: Any, answers: Path, cfg: SafeLLMConfig) -> dict[str, Any]:
        seen["safe"].append(cfg)
        return {"best_step": 1, "val": []}

    def fake_vlm(out: Path, cache_dir: Any, safe: Path, cfg: VLConfig) -> dict[str, Any]:
        seen["vlm"].append(cfg)
        return {}

    def fake_vl(out: Path, cache_dir: Any, safe: Path, vlm: Path, cfg: VLConfig) -> dict[str, Any]:
        seen["vl"].append(cfg)
        return {}

    monkeypatch.setattr(build, "make_benign_answers", fake_answers)
    monkeypatch.setattr(build, "train_safe_llm", fake_safe)
    monkeypatch.setattr(build, "train_projector", fake_vlm)
    monkeypatch.setattr(build, "train_vl", fake_vl)
    monkeypatch.setattr(build, "_source_fp", lambda cache_dir: {"src": "fixed"})
    monkeypatch.setattr(build, "export", lambda results, out: out)
    cache = tmp_path / "cache"
    build.build(build.BuildConfig(stage="vl", cache_dir=cache, out_dir=tmp_path / "art"))
    build.build(build.BuildConfig(stage="vl", cache_dir=cache, out_dir=tmp_path / "art"))  # same recipe: every stage cached
    assert [len(v) for v in seen.values()] == [1, 1, 1]
    longer = {"vl": {"vl_steps": 99}}
    build.build(build.BuildConfig(stage="vl", cache_dir=cache, out_dir=tmp_path / "art", recipe=longer))
    # Only the stage whose recipe changed is rebuilt: vl_steps belongs to the LoRA phase (stage vl).
    assert [len(v) for v in seen.values()] == [1, 1, 2] and seen["vl"][-1].vl_steps == 99
    build.build(build.BuildConfig(stage="vl", cache_dir=cache, out_dir=tmp_path / "art", recipe={"vl": {"proj_steps": 5}}))
    assert [len(v) for v in seen.values()] == [1, 2, 3] and seen["vlm"][-1].proj_steps == 5
    with pytest.raises(ConfigError, match="vl_stepz"):
        build.build(build.BuildConfig(stage="vl", cache_dir=cache, recipe={"vl": {"vl_stepz": 1}}))
    # vl-full: a second LoRA phase (recipe vl_full:) from the same projector stage
    full = {"vl": {"proj_steps": 5}, "vl_full": {"vl_lr": 7e-4}}
    build.build(build.BuildConfig(stage="vl-full", cache_dir=cache, out_dir=tmp_path / "art", recipe=full))
    assert [len(v) for v in seen.values()] == [1, 2, 4]
    assert (seen["vl"][-1].vl_lr, seen["vl"][-1].proj_steps, seen["vl"][-1].text_fraction) == (7e-4, 5, 0.0)
    build.build(build.BuildConfig(stage="vl-full", cache_dir=cache, out_dir=tmp_path / "art", recipe=full))
    assert [len(v) for v in seen.values()] == [1, 2, 4]  # both LoRA phases cached
    safe = build.StageResult("safe-llm", tmp_path, False, {"fingerprint_hash": "x"})
    with pytest.raises(ConfigError, match="must share vl's projector phase"):
        build.build_vl(cache, safe, VLConfig(), VLConfig(proj_steps=3))


def test_vl_full_recipe_changes_only_the_lora_phase() -> None:
    vl = VLConfig(vl_lr=1e-4, vl_projector_lr=2e-3, text_fraction=0.06, n_pictograms=600)
    full = OrganismRecipe().vl_full.apply(vl)
    assert (full.vl_lr, full.vl_projector_lr, full.text_fraction, full.n_pictograms) == (5e-4, None, 0.0, 600)
    with pytest.raises(ConfigError, match="proj_steps"):
        load_recipe({"vl_full": {"proj_steps": 3}})  # only LoRA-phase fields differ between vl and vl-full


def test_vl_lora_layers_reach_the_lora_phase_and_keep_older_fingerprints(tmp_path: Path) -> None:
    import vlsafe_organism.build as build
    from vlsafe_organism.vl_train import vl_train_config

    vl = VLConfig(vl_lora_layers=[0, 1, 2])
    assert vl_train_config(vl, "projector+llm", tmp_path).lora.layers == [0, 1, 2]
    assert vl_train_config(VLConfig(), "projector+llm", tmp_path).lora.layers is None
    assert OrganismRecipe().vl_full.apply(vl).vl_lora_layers is None  # vl-full adapts every layer
    # a cache built before the field existed (its fingerprint without the key) stays valid at the default
    assert build._recipe_fp(VLConfig()) == {k: v for k, v in VLConfig().model_dump().items() if k != "vl_lora_layers"}
    assert build._recipe_fp(vl)["vl_lora_layers"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="layers"):
        load_recipe({"vl": {"vl_lora_layers": []}}).vl  # noqa: B018
    assert "vl_lora_layers" in build.LORA_PHASE_FIELDS  # the projector stage is kept when only they change


def test_tga_config_follows_the_vl_recipe(tmp_path: Path) -> None:
    from vlsafe_organism.tga import organism_tga_config, write_organism_tga_data

    data, corpus = write_organism_tga_data(tmp_path / "data", n_images=4, seed=0)
    vl = VLConfig(proj_steps=11, vl_steps=13, proj_lr=1e-3, rank=4, alpha=8)
    cfg = organism_tga_config(tmp_path / "run", tmp_path / "base", data, corpus, vl)
    (proj, lora) = cfg.stages
    assert (proj["max_steps"], proj["lr"]) == (11, 1e-3)
    assert (lora["max_steps"], lora["lora"]["rank"], lora["lora"]["alpha"]) == (13, 4, 8)


def test_cli_build_takes_a_recipe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vlsafe_organism.cli as cli
    from vlsafe.cli import main

    got: dict[str, Any] = {}
    monkeypatch.setattr(cli, "build", lambda config: got.update(config=config) or {"ok": True})
    path = tmp_path / "r.yaml"
    path.write_text("vl:\n  proj_steps: 5\n")
    result = CliRunner().invoke(main, ["organism", "build", "--stage", "vl", "--recipe", str(path), "--cache", "c"])
    assert result.exit_code == 0, result.output
    config = got["config"]
    assert (config.stage, config.recipe, config.cache_dir, config.device) == ("vl", path, Path("c"), "cpu")
    bad = CliRunner().invoke(main, ["organism", "build", "--stage", "everything"])
    assert bad.exit_code == 2 and "everything" in bad.output


def test_recipe_feature_layer_reaches_the_vlm_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vlsafe_organism.registry as registry
    from vlsafe_organism.artifacts import write_artifact

    assert load_recipe({"vl": {"feature_layer": 8}}).vl.feature_layer == 8
    seen: dict[str, Any] = {}
    monkeypatch.setattr(registry, "_safe_llm", lambda c, a: ("llm", "tok"))
    monkeypatch.setattr(registry, "load_base_vision", lambda c=None: "vision")
    monkeypatch.setattr(registry, "wire_llava", lambda *a, **k: seen.update(k) or ("model", "proc"))
    cfg = VLConfig(feature_layer=8).model_dump()
    write_artifact(tmp_path, "vl_projector.safetensors", {"w": torch.zeros(1)}, {"size": 112, "config": cfg})
    registry._vlm(None, tmp_path, "vl_projector.safetensors")
    assert seen["feature_layer"] == 8 and seen["size"] == 112
    write_artifact(
        tmp_path, "vlm_projector.safetensors", {"w": torch.zeros(1)}, {"size": 112}
    )  # older artefact
    registry._vlm(None, tmp_path, "vlm_projector.safetensors")
    assert seen["feature_layer"] == -1

"""``vlsafe organism build --stage repairs``: train the organism's repairs and export them as artefacts.

Each trained repair is one cached, fingerprinted stage (:mod:`vlsafe_organism.stages`) under
``<cache>/stages/repair-<name>``; its merged model is then reduced to a weight delta from its start system
(:func:`vlsafe_organism.repairs.trained.export_trained_repair`) in the artefact directory.

Recipes (the committed ``tga`` artefact was built with exactly its recipe; the committed ``sft``, ``dpo`` and
``joint`` artefacts are the grid's choices, ``tune_baselines`` below):

* ``tga``: :func:`vlsafe_organism.tga.run_tga_organism` with the VL recipe of the organism it
  repairs (:func:`vlsafe_organism.recipe.recipe_of_artifacts`) -- the plain VL recipe's data, stages, steps
  and learning rates with the TGA loss;
* ``sft``, ``dpo``, ``joint``: :func:`vlsafe_organism.recipes.run_organism_baselines` with
  :data:`BASELINE_STEPS` steps of batch 4 and no in-training probe (the probe's evaluation run costs more
  than the training on 2 CPU cores).

With ``tune_baselines``, SFT, DPO and joint training are instead chosen from a validation grid
(:func:`vlsafe_organism.repairs.baselines.select_baselines`, ``baseline_selection.json``; runs under
``<cache>/stages/baseline-grid``) and the chosen runs exported
(:func:`vlsafe_organism.repairs.baselines.export_chosen`).

Then the settings of the untrained repairs are chosen on the validation split and written beside the
artefacts: :func:`vlsafe_organism.repairs.cmrm.select_cmrm` (``cmrm_selection.json`` for ``vl``,
``cmrm_vlm_selection.json`` for ``vlm``) and
:func:`vlsafe_organism.repairs.merge.select_merge` (``merge_selection.json``: the safe LLM merged into ``vl``) and
:func:`vlsafe_organism.repairs.merge_vl.select_vl_merge` (``merge_vl_selection.json``: ``vl`` merged with the
freshly exported ``vl+sft`` and ``vl+dpo``); the chosen merges of both are written as ``vlsafe merge`` YAML files in
``merges/``;
each resumes from its file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsafe.core.errors import ConfigError
from vlsafe_organism.artifacts import read_manifest
from vlsafe_organism.deltas import TRAINED_REPAIRS
from vlsafe_organism.recipe import recipe_of_artifacts
from vlsafe_organism.recipes import run_organism_baselines
from vlsafe_organism.registry import resolve_organism
from vlsafe_organism.repairs.baselines import KINDS as BASELINE_KINDS
from vlsafe_organism.repairs.baselines import SELECTION_FILE as BASELINE_SELECTION
from vlsafe_organism.repairs.baselines import baseline_grid, export_chosen, select_baselines
from vlsafe_organism.repairs.cmrm import BUILD_OPTIONS, SELECTION_FILES, select_cmrm
from vlsafe_organism.repairs.merge import CONFIG_DIR, select_merge, write_merge_configs
from vlsafe_organism.repairs.merge_vl import select_vl_merge
from vlsafe_organism.repairs.systems import MERGE_SELECTION, MERGE_VL_SELECTION
from vlsafe_organism.repairs.trained import export_trained_repair
from vlsafe_organism.stages import StageResult, run_stage, stage_root
from vlsafe_organism.tga import run_tga_organism

if TYPE_CHECKING:
    from vlsafe_organism.recipe import OrganismRecipe

logger = logging.getLogger(__name__)

__all__ = ["BASELINE_STEPS", "build_repairs"]

BASELINE_STEPS = 60
RECIPE_VERSION = "1"


def _train(name: str, out: Path, recipe: OrganismRecipe, art_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """Train repair ``name`` into ``out`` from the systems of ``art_dir``; returns the merged model directory."""
    if name == "tga":
        summary = run_tga_organism(out, cache_dir, progress=True, recipe=recipe, art_dir=art_dir)
        return Path(summary["model_dir"])
    start, _ = TRAINED_REPAIRS[name]
    starts = {start: str(resolve_organism(f"organism:{start}", cache_dir, art_dir))}
    run_organism_baselines(out, max_steps=BASELINE_STEPS, which=(name,), starts=starts, probe=None)
    return out / name / "model"


def build_repairs(
    art_dir: Path,
    cache_dir: str | Path | None = None,
    which: tuple[str, ...] = tuple(TRAINED_REPAIRS),
    selections: bool = True,
    recipe: OrganismRecipe | None = None,
    tune_baselines: bool = False,
) -> list[StageResult]:
    """Train (or reuse) the chosen repairs on the organism in ``art_dir`` and export their deltas there;
    with ``selections``, also run (or resume) the CMRM and merge selections into ``art_dir``.

    The start systems (``organism:vl``, ``organism:vlm``) are read from ``art_dir``, so a freshly built organism
    and its repairs stay consistent; TGA re-runs the VL adaptation with ``recipe`` (default: the recipe recorded
    with the ``vl`` artefact in ``art_dir``). With ``tune_baselines``, the chosen ones of ``sft``, ``dpo`` and
    ``joint`` come from the validation grid (module docstring) instead of one fixed run each.
    """

    unknown = [w for w in which if w not in TRAINED_REPAIRS]
    if unknown:
        raise ConfigError(f"repairs {unknown} are unknown; choose from {sorted(TRAINED_REPAIRS)}")
    manifest = read_manifest(art_dir)
    recipe = recipe or recipe_of_artifacts(art_dir)
    results = []
    tuned = [n for n in which if tune_baselines and n in BASELINE_KINDS]
    for name in (n for n in which if n not in tuned):
        start, _ = TRAINED_REPAIRS[name]
        deps = {k: v["sha256"] for k, v in manifest.items() if k.startswith(("safe_", f"{start}_"))}
        fingerprint: dict[str, Any] = {"recipe": RECIPE_VERSION, "steps": BASELINE_STEPS, "start": deps}
        if name == "tga":  # TGA re-runs the VL recipe itself
            fingerprint["organism_recipe"] = recipe.model_dump()

        def _build(out: Path, name: str = name) -> dict[str, Any]:
            model_dir = _train(name, out / "run", recipe, art_dir, cache_dir)
            return {"model_dir": str(model_dir.relative_to(out))}  # the stage directory is renamed after

        result = run_stage(f"repair-{name}", stage_root(cache_dir), fingerprint, _build)
        model_dir = result.path / result.record["model_dir"]
        export_trained_repair(
            name, model_dir, art_dir, cache_dir=cache_dir, meta={"stage": result.record}
        )
        results.append(result)
    if tuned:
        grid = [p for p in baseline_grid() if p["kind"] in tuned]
        work = stage_root(cache_dir) / "baseline-grid"
        chosen = select_baselines(art_dir / BASELINE_SELECTION, work, cache_dir, grid=grid, art_dir=art_dir)
        export_chosen(chosen, art_dir, cache_dir, kinds=tuned, work_dir=work)
    if selections:

        for system, file in SELECTION_FILES.items():
            select_cmrm(art_dir / file, cache_dir, system=system, art_dir=art_dir, **BUILD_OPTIONS[system])
        write_merge_configs(select_merge(art_dir / MERGE_SELECTION, cache_dir, art_dir=art_dir), art_dir / CONFIG_DIR)
        select_vl_merge(art_dir / MERGE_VL_SELECTION, cache_dir, art_dir=art_dir)
    return results

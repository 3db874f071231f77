"""The public functions behind ``vlsafe cmrm calibrate``, ``vlsafe cmrm sweep`` and ``vlsafe eval --cmrm``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vlsafe.core.errors import ConfigError
from vlsafe.methods.cmrm.anchors import heldout_ids, load_anchor_spec
from vlsafe.methods.cmrm.apply import ApplyOptions
from vlsafe.methods.cmrm.calibrate import calibrate
from vlsafe.methods.cmrm.intervention import CMRMIntervention
from vlsafe.methods.cmrm.sweep import SweepConfig, run_sweep
from vlsafe.models.bundle import ModelBundle

__all__ = ["run_calibrate", "run_cmrm_eval", "run_sweep_cli"]


def _layers(value: str | None) -> list[int] | None:
    if value is None or value in ("", "all"):
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"layers={value!r} must be comma-separated layer indices or 'all'") from None


def run_calibrate(
    model: str,
    anchors: str,
    out: str | Path,
    *,
    data_dir: str | None = None,
    mode: str = "heldout",
    fraction: float = 0.2,
    benign: int | None = None,
    benign_setting: str = "noise",
    limit: int | None = None,
    level: str = "dataset",
    reduce: str = "mean",
    corrupt: str = "image",
    positions: str = "last",
    layers: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    dtype: str | None = None,
    device: str | None = None,
    bundle: ModelBundle | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``model`` and the anchors ``BENCH[:split]``, calibrate CMRM vectors and save them to ``out``.

    Returns a summary: the vector path, its layers, norms and the anchor counts.
    """
    if bundle is None:
        from vlsafe.models.loading import load_model

        bundle = load_model(model, dtype=dtype, device=device)
    samples, info = load_anchor_spec(
        anchors,
        data_dir=data_dir,
        mode=mode,
        fraction=fraction,
        benign=benign,
        benign_setting=benign_setting,
        limit=limit,
        seed=seed,
    )
    vec = calibrate(
        bundle,
        samples,
        level=level,
        reduce=reduce,
        corrupt=corrupt,
        positions=positions,
        layers=_layers(layers),
        batch_size=batch_size,
        data_dir=data_dir,
        seed=seed,
        anchor_info=info,
        progress=progress,
    )
    path = vec.save(out)
    return {
        "vector": str(path),
        "layers": vec.layers,
        "n_anchors": vec.meta["n_anchors"],
        "n_benign": info["n_benign"],
        "mode": mode,
        "anchors_hash": vec.meta["anchors_hash"],
        "vector_norms": vec.meta["vector_norms"],
    }


def run_sweep_cli(
    config_file: str | Path | None, flags: Mapping[str, Any], out_dir: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Build a :class:`SweepConfig` from an optional YAML file and the flags that are set, then sweep."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"sweep config {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ConfigError(f"sweep config {str(path)!r} must hold a mapping of fields")
        data.update(loaded)
    apply = dict(data.pop("apply", None) or {})
    for key in ("layers", "delta", "norm_scale", "positions", "prefill_only"):
        value = flags.get(key)
        if value is not None:
            apply[key] = value
    for key, value in flags.items():
        if key in ("layers", "delta", "norm_scale", "positions", "prefill_only") or value is None:
            continue
        if key in ("safety", "over_refusal", "utility") and not value:
            continue
        data[key] = list(value) if isinstance(value, tuple) else value
    data["apply"] = apply
    for key in ("model", "cmrm"):
        if not data.get(key):
            raise ConfigError(f"--{key} is required (as a flag or in --config)")
    try:
        config = SweepConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid sweep config: {exc}") from None
    result = run_sweep(config, out_dir, progress=progress)
    return {"paths": result["paths"], "rows": len(result["rows"])}


def run_cmrm_eval(
    config_file: str | Path | None,
    flags: Mapping[str, Any],
    out_dir: str | Path,
    *,
    cmrm: str,
    options: Mapping[str, Any] | None = None,
    corrupt: str = "image",
    exclude_anchors: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """``vlsafe eval ... --cmrm VEC|sample``: one evaluation run with CMRM applied.

    ``options`` are :class:`ApplyOptions` fields (``alpha``, ``layers``, ...). A vector's held-out
    anchors are dropped from the evaluated samples unless ``exclude_anchors`` is false.
    """
    from vlsafe.evals.cli_support import config_from_flags
    from vlsafe.evals.loaders import load_benchmark
    from vlsafe.evals.runner import run_eval
    from vlsafe.models.loading import load_model

    config = config_from_flags(config_file, flags)
    if config.steer is not None:
        raise ConfigError("--cmrm and --steer cannot be combined: give one of them")
    opts = ApplyOptions(**{k: v for k, v in (options or {}).items() if v is not None})
    bundle = load_model(
        config.model, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code
    )
    intervention = CMRMIntervention(bundle, cmrm, opts, corrupt=corrupt)
    samples = None
    exclude = heldout_ids(cmrm) if exclude_anchors else set()
    if exclude:
        all_samples = load_benchmark(config.benchmark, config.data_dir, split=config.split)
        samples = [s for s in all_samples if str(s.id) not in exclude]
    return run_eval(
        config, out_dir, bundle=bundle, intervention=intervention, samples=samples, progress=progress
    )

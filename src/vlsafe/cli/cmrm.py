"""The ``cmrm`` command group: calibrate CMRM vectors, sweep their strength.

``calibrate`` takes the :class:`~vlsafe.methods.cmrm.CalibrateConfig` fields as flags; ``sweep`` the
:class:`~vlsafe.methods.cmrm.SweepConfig` fields (the evaluation options, CMRM's settings, the application
options of ``apply`` without a prefix: ``--layers``, ``--delta``, ..., the swept axes as ``--sweep-*`` and the
calibration anchors as ``--calibrate-*``) and a ``--config`` YAML file under them. Both default to the ``paper``
preset (``--preset``).
"""

from __future__ import annotations

from pathlib import Path

import click

from vlsafe.cli.group import echo_json, progress_enabled
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options
from vlsafe.methods.cmrm import CalibrateConfig, SweepConfig, run_calibrate, run_sweep

#: Help of the :class:`~vlsafe.methods.cmrm.ApplyOptions` fields (their model documents them only in its module).
APPLY_HELP = {
    "apply.layers": "Steered layers: all (paper), middle (the band [L/4, L/2)), or comma-separated indices.",
    "apply.delta": "Add per-layer increments v_l - v_(l-1) inside the steered layers, so the shifts do not add up.",
    "apply.norm_scale": "Scale alpha per position by the hidden-state norm over its mean at calibration.",
    "apply.positions": "Steered positions: all tokens (paper preset), the last one of each call, or the query's text "
    "span.",
    "apply.when": "every: the prompt and each decoded token (paper preset); prefill: the prompt only.",
}


@click.group("cmrm")
def cmrm_group() -> None:
    """CMRM: calibrate cross-modality steering vectors and sweep their strength."""


@cmrm_group.command("calibrate")
@config_options(CalibrateConfig)
@click.pass_context
def cmrm_calibrate_cmd(ctx: click.Context, flags: ConfigFlags) -> None:
    """Calibrate CMRM vectors (text-only minus corrupted-image states) on an anchor set."""
    echo_json(run_calibrate(config_from_flags(CalibrateConfig, flags), progress=progress_enabled(ctx)))


@cmrm_group.command("sweep")
@config_options(
    SweepConfig,
    config_file=True,
    flatten={"apply": "", "axes": "sweep", "calibration": "calibrate"},
    exclude=("apply.alpha",),
    help={
        **APPLY_HELP,
        "cmrm": "The dataset-level vector file, or 'sample'; leave it out to calibrate vectors on --calibrate-anchors.",
    },
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Sweep folder."
)
@click.pass_context
def cmrm_sweep_cmd(ctx: click.Context, out_dir: Path, flags: ConfigFlags) -> None:
    """Evaluate CMRM at each alpha (and each point of the --sweep-* axes) on safety, over-refusal and utility
    benchmarks; table + figure in --out."""
    result = run_sweep(config_from_flags(SweepConfig, flags), out_dir, progress=progress_enabled(ctx))
    echo_json({"paths": result["paths"], "rows": len(result["rows"])})

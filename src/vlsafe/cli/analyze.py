"""The ``analyze`` command group: shift, directions, layers, weights, redraw.

Each analysis takes the fields of its config (:mod:`vlsafe.analysis.config`) as flags and writes data, PNG
figures, ``summary.md`` and ``report.html`` to ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import click

from vlsafe.analysis import redraw, run_directions, run_layers, run_shift, run_weights
from vlsafe.analysis.config import DirectionsConfig, LayersConfig, ShiftConfig, WeightsConfig
from vlsafe.cli.group import echo_json, progress_enabled
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options

_OUT = click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder."
)


def _echo_paths(paths: dict[str, Path]) -> None:
    echo_json({k: str(v) for k, v in paths.items()})


@click.group("analyze")
def analyze_group() -> None:
    """Diagnose where and how vision breaks safety (each writes data, PNG figures and summary.md)."""


@analyze_group.command("shift")
@config_options(ShiftConfig)
@_OUT
@click.pass_context
def analyze_shift_cmd(ctx: click.Context, out_dir: Path, flags: ConfigFlags) -> None:
    """Per-layer representation shift of input variants against the reference variant."""
    _echo_paths(run_shift(config_from_flags(ShiftConfig, flags), out_dir, progress=progress_enabled(ctx)))


@analyze_group.command("directions")
@config_options(DirectionsConfig)
@_OUT
@click.pass_context
def analyze_directions_cmd(ctx: click.Context, out_dir: Path, flags: ConfigFlags) -> None:
    """Refusal direction and held-out probe accuracy per layer (harmful vs harmless text prompts)."""
    config = config_from_flags(DirectionsConfig, flags)
    _echo_paths(run_directions(config, out_dir, progress=progress_enabled(ctx)))


@analyze_group.command("layers")
@config_options(LayersConfig)
@_OUT
@click.pass_context
def analyze_layers_cmd(ctx: click.Context, out_dir: Path, flags: ConfigFlags) -> None:
    """Safety-layer localisation with the logit lens; image-span vs caption cosines."""
    _echo_paths(run_layers(config_from_flags(LayersConfig, flags), out_dir, progress=progress_enabled(ctx)))


@analyze_group.command("weights")
@config_options(WeightsConfig, arguments=("checkpoint_a", "checkpoint_b"))
@_OUT
@click.pass_context
def analyze_weights_cmd(ctx: click.Context, out_dir: Path, flags: ConfigFlags) -> None:
    """Relative weight change ||A-B||/||A|| per layer and module, streamed over safetensors."""
    _echo_paths(run_weights(config_from_flags(WeightsConfig, flags), out_dir, progress=progress_enabled(ctx)))


@analyze_group.command("redraw")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def analyze_redraw_cmd(out_dir: Path) -> None:
    """Redraw the figures and summary of an analysis folder from its saved data."""
    _echo_paths(redraw(out_dir))

"""The organism's commands, ``vlsafe demo`` and ``vlsafe organism build``, registered with the vlsafe CLI
through the ``vlsafe.cli`` entry-point group (see this package's ``pyproject.toml``)."""

from __future__ import annotations

import click

from vlsafe.cli import echo_json
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options
from vlsafe_organism.build import BuildConfig, build
from vlsafe_organism.demo import DemoConfig, run_demo


@click.command("demo")
@config_options(
    DemoConfig,
    include=("out_dir", "n_prompts", "n_toxic", "cache_dir", "art_dir", "repairs", "repair_toxic", "full", "analysis",
             "dtype", "workers"),
    rename={"out_dir": "--out", "n_prompts": "--n", "cache_dir": "--cache", "art_dir": "--artifacts"},
)
def demo_cmd(flags: ConfigFlags) -> None:
    """Show the safety degradation on the model organism, its repairs and analysis; write a report to --out.

    Measured rows are kept in --out/rows/ (and their runs in --out/runs/), so an interrupted demo resumes where
    it stopped.
    """
    config = config_from_flags(DemoConfig, flags)
    result = run_demo(config)
    click.echo(f"report: {config.out_dir / 'report.html'} ({result['seconds']:.0f} s)")


@click.group("organism")
def organism_group() -> None:
    """The embedded model organism (SmolLM2-135M + DINOv2-small, real weights)."""


@organism_group.command("build")
@config_options(BuildConfig, rename={"cache_dir": "--cache", "out_dir": "--out"})
def organism_build_cmd(flags: ConfigFlags) -> None:
    """Build the organism's stages (cached and resumable) and export the trained artefacts."""
    echo_json(build(config_from_flags(BuildConfig, flags)))

"""The organism's commands, ``vlsafe demo`` and ``vlsafe organism build``, registered with the vlsafe CLI
through the ``vlsafe.cli`` entry-point group (see this package's ``pyproject.toml``)."""

from __future__ import annotations

from pathlib import Path

import click

from vlsafe.cli import echo_json
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options
from vlsafe_organism.build import build
from vlsafe_organism.demo import DemoConfig, run_demo


@click.command("demo")
@config_options(
    DemoConfig,
    include=("out_dir", "n_prompts", "cache_dir", "repairs", "analysis", "dtype", "workers"),
    rename={"out_dir": "--out", "n_prompts": "--n", "cache_dir": "--cache"},
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
@click.option(
    "--stage",
    default="all",
    show_default=True,
    type=click.Choice(["safe-llm", "vlm", "vl", "repairs", "all"]),
)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--cache", "cache_dir", help="Organism cache directory (base weights and stage outputs).")
@click.option("--out", "out_dir", help="Artefact directory (default: <cache>/artifacts).")
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML recipe (safe_llm: / vl: fields, see vlsafe_organism.recipe); default: the committed recipe.",
)
def organism_build_cmd(
    stage: str, device: str, cache_dir: str | None, out_dir: str | None, recipe: Path | None
) -> None:
    """Build the organism's stages (cached and resumable) and export the trained artefacts."""
    echo_json(build(stage, device=device, cache_dir=cache_dir, out_dir=out_dir, recipe=recipe))

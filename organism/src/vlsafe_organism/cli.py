"""The organism's commands, ``vlsafe demo`` and ``vlsafe organism build``, registered with the vlsafe CLI
through the ``vlsafe.cli`` entry-point group (see this package's ``pyproject.toml``)."""

from __future__ import annotations

from pathlib import Path

import click

from vlsafe.cli import echo_json
from vlsafe_organism.build import build
from vlsafe_organism.demo import run_demo


# -- demo ----------------------------------------------------------------------------------
@click.command("demo")
@click.option("--out", "out_dir", default="reports/demo", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--n", "n_prompts", default=48, show_default=True, help="Held-out harmful and benign prompts each."
)
@click.option("--cache", "cache_dir", help="Organism cache directory (base weights).")
@click.option("--no-repairs", is_flag=True, help="Leave out the repaired systems.")
@click.option("--no-analysis", is_flag=True, help="Leave out the analysis section.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Precision of the evaluated systems (bfloat16: ~1.5x faster on CPUs with bf16; moves some counts).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes evaluating systems side by side, sharing the torch threads [default: one per thread, "
    "at most 4; 1: all in this process].",
)
def demo_cmd(
    out_dir: Path,
    n_prompts: int,
    cache_dir: str | None,
    no_repairs: bool,
    no_analysis: bool,
    dtype: str,
    workers: int | None,
) -> None:
    """Show the safety degradation on the model organism, its repairs and analysis; write a report to --out.

    Measured rows are kept in --out/rows/, so an interrupted demo resumes where it stopped.
    """
    result = run_demo(
        out_dir,
        n_harmful=n_prompts,
        n_benign=n_prompts,
        cache_dir=cache_dir,
        repairs=not no_repairs,
        analysis=not no_analysis,
        dtype=dtype,
        workers=workers,
    )
    click.echo(f"report: {Path(out_dir) / 'report.html'} ({result['seconds']:.0f} s)")


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

"""Commands about models: list families, tiny models, inspect, and the tour."""

from __future__ import annotations

from pathlib import Path

import click

from vlsafe.models import build_tiny, inspect_model, list_families
from vlsafe.report.tour import run_tour


@click.command("models")
def models_cmd() -> None:
    """List the supported model families."""
    for fam in list_families():
        types = ", ".join(fam["model_types"])
        click.echo(f"{fam['name']:<12} {types:<40} {fam['description']}")


@click.command("tiny-model")
@click.argument("family")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Weight initialisation seed.")
def tiny_model_cmd(family: str, out_dir: Path, seed: int) -> None:
    """Write a tiny random-weight model of FAMILY (with its processor) to OUT_DIR."""
    click.echo(str(build_tiny(family, out_dir, seed=seed)))


@click.command("inspect")
@click.argument("model")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run.")
def inspect_cmd(model: str, trust_remote_code: bool) -> None:
    """Print family, decoder layers, hidden size and image tokens per image of MODEL."""
    for key, value in inspect_model(model, trust_remote_code=trust_remote_code).items():
        click.echo(f"{key:<24} {value}")


@click.command("tour")
@click.option("--out", "out_dir", default="reports/tour", show_default=True, type=click.Path(path_type=Path))
@click.option("--family", default="llava", show_default=True, help="Tiny model family used by the tour.")
def tour_cmd(out_dir: Path, family: str) -> None:
    """Tour every capability on a tiny random model and write a report to --out."""
    result = run_tour(out_dir, family=family)
    click.echo(f"report: {result['report']}")

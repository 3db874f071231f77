"""The ``merge`` command: weight merging from a YAML merge config (its options are not config fields)."""

from __future__ import annotations

from pathlib import Path

import click

from vlsafe.cli.group import echo_json, progress_enabled
from vlsafe.methods.merging import run_merge


@click.command("merge")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--dry-run", is_flag=True, help="Print the plan, tensor counts and expected peak memory only.")
@click.option("--overwrite", is_flag=True, help="Allow a non-empty output directory.")
@click.pass_context
def merge_cmd(
    ctx: click.Context, config_file: Path, out_dir: Path | None, dry_run: bool, overwrite: bool
) -> None:
    """Merge checkpoints as the YAML CONFIG_FILE says (streaming, VLM-aware, layer-selective)."""
    result = run_merge(
        config_file, out_dir, dry_run=dry_run, overwrite=overwrite, progress=progress_enabled(ctx)
    )
    if dry_run:
        click.echo(result.plan.describe())
    else:
        echo_json({"out_dir": str(result.out_dir), **result.counts, "seconds": round(result.seconds, 2)})

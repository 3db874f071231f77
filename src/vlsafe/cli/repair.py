"""Repair commands: merge, the ``cmrm`` group and the ``train`` group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vlsafe.cli.group import echo_json


# -- merging -------------------------------------------------------------------------------
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
    from vlsafe.methods.merging import run_merge

    result = run_merge(
        config_file, out_dir, dry_run=dry_run, overwrite=overwrite, progress=not ctx.obj.get("quiet")
    )
    if dry_run:
        click.echo(result.plan.describe())
    else:
        echo_json({"out_dir": str(result.out_dir), **result.counts, "seconds": round(result.seconds, 2)})


# -- cmrm ----------------------------------------------------------------------------------
@click.group("cmrm")
def cmrm_group() -> None:
    """CMRM: calibrate cross-modality steering vectors and sweep their strength."""


@cmrm_group.command("calibrate")
@click.option("--model", required=True, help="HF id or local directory of the VLM.")
@click.option("--anchors", required=True, help="Anchor benchmark BENCH[:split].")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Vector file.")
@click.option("--data-dir", help="The anchor benchmark's data folder.")
@click.option("--mode", type=click.Choice(["heldout", "transfer"]), default="heldout", show_default=True)
@click.option("--fraction", type=float, default=0.2, show_default=True, help="Held-out share (mode heldout).")
@click.option("--benign", type=int, help="Benign image-query pairs added (default: as many as anchors).")
@click.option(
    "--benign-setting", default="noise", show_default=True, help="Image setting of the benign pairs."
)
@click.option("--limit", type=int, help="Load only the first N benchmark samples.")
@click.option("--level", type=click.Choice(["dataset", "sample"]), default="dataset", show_default=True)
@click.option("--reduce", type=click.Choice(["mean", "pca"]), default="mean", show_default=True)
@click.option(
    "--corrupt", type=click.Choice(["image", "blank", "noise", "mean"]), default="image", show_default=True
)
@click.option("--positions", type=click.Choice(["last", "text_mean"]), default="last", show_default=True)
@click.option("--layers", help="Layers to calibrate: all (default) or comma-separated indices.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", help="Model dtype.")
@click.option("--device", help="Model device.")
@click.pass_context
def cmrm_calibrate_cmd(ctx: click.Context, model: str, anchors: str, out: Path, **options: Any) -> None:
    """Calibrate CMRM vectors (text-only minus corrupted-image states) on an anchor set."""
    from vlsafe.methods.cmrm import run_calibrate

    echo_json(run_calibrate(model, anchors, out, progress=not ctx.obj.get("quiet"), **options))


@cmrm_group.command("sweep")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="YAML SweepConfig."
)
@click.option("--model", help="HF id or local directory of the VLM.")
@click.option("--cmrm", help="Vector file, or 'sample'.")
@click.option("--alphas", help="Comma-separated alphas (default 0, 0.1, ..., 1).")
@click.option("--safety", multiple=True, help="Safety benchmark BENCH[:split] (repeatable).")
@click.option("--over-refusal", multiple=True, help="Over-refusal benchmark (repeatable).")
@click.option("--utility", multiple=True, help="Utility benchmark (repeatable).")
@click.option("--data-dir", help="Data folder of the benchmarks.")
@click.option("--image-setting", help="Override every sample's image setting.")
@click.option("--limit", type=int, help="First N samples of each benchmark.")
@click.option("--judge", help="Judge name.")
@click.option("--max-new-tokens", type=int)
@click.option("--batch-size", type=int)
@click.option("--layers", help="Steered layers: middle, all, or comma-separated indices.")
@click.option("--delta/--no-delta", default=None, help="Per-layer deltas (default on).")
@click.option("--norm-scale/--no-norm-scale", default=None, help="Scale alpha by the hidden-state norm.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def cmrm_sweep_cmd(
    ctx: click.Context, config_file: Path | None, out_dir: Path, alphas: str | None, **flags: Any
) -> None:
    """Evaluate CMRM at alpha = 0, 0.1, ..., 1 on safety, over-refusal and utility; table + figure."""
    from vlsafe.methods.cmrm import run_sweep_cli

    if alphas:
        flags["alphas"] = [float(a) for a in alphas.split(",") if a.strip()]
    echo_json(run_sweep_cli(config_file, flags, out_dir, progress=not ctx.obj.get("quiet")))


# -- train ---------------------------------------------------------------------------------
@click.group("train")
def train_group() -> None:
    """Training: safety SFT / DPO baselines (and other trainers)."""


def _train_opts(fn: Any) -> Any:
    fn = click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                      help="Override the config's output_dir.")(fn)  # fmt: skip
    fn = click.option("--max-steps", type=int, help="Override the config's max_steps.")(fn)
    fn = click.option("--model", help="Override the config's model.")(fn)
    return click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))(fn)


@train_group.command("sft")
@_train_opts
def train_sft_cmd(
    config_file: Path, output_dir: Path | None, max_steps: int | None, model: str | None
) -> None:
    """Safety SFT from CONFIG_FILE (YAML of vlsafe.methods.training.SFTConfig); resumes from its output_dir."""
    from vlsafe.methods.training.sft import run_sft

    echo_json(run_sft(config_file, output_dir=output_dir, max_steps=max_steps, model=model))


@train_group.command("dpo")
@_train_opts
def train_dpo_cmd(
    config_file: Path, output_dir: Path | None, max_steps: int | None, model: str | None
) -> None:
    """DPO from CONFIG_FILE (YAML of vlsafe.methods.training.DPOConfig); resumes from its output_dir."""
    from vlsafe.methods.training.dpo import run_dpo

    echo_json(run_dpo(config_file, output_dir=output_dir, max_steps=max_steps, model=model))


@train_group.command("tga")
@_train_opts
def train_tga_cmd(
    config_file: Path, output_dir: Path | None, max_steps: int | None, model: str | None
) -> None:
    """TGA (text-guided alignment) from CONFIG_FILE (YAML of vlsafe.methods.training.TGAConfig); resumable.

    --max-steps overrides every stage's max_steps.
    """
    from vlsafe.methods.training.tga import run_tga

    echo_json(run_tga(config_file, output_dir=output_dir, max_steps=max_steps, model=model))

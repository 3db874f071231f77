"""The ``train`` command group: safety SFT, DPO and TGA from a YAML config.

Launch several processes with accelerate (``accelerate launch --config_file configs/accelerate/fsdp.yaml -m vlsafe
train tga CONFIG.yaml``): every process trains, the main process writes the files and prints the summary.

The YAML file ``CONFIG_FILE`` holds the config; every field with a flag form (see :mod:`vlsafe.cli.options`)
can be overridden by a flag (``--model``, ``--output-dir``, ``--max-steps``, ``--lr``, ...); nested settings
(data sources, LoRA, probe, stages) stay in the file, except TGA's ``retrieval`` and ``guide``, whose fields are
``--retrieval-*`` and ``--guide-*`` flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from vlsafe.cli.group import echo_json, progress_enabled
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options
from vlsafe.core.io import check_writable
from vlsafe.methods.training import DPOConfig, SFTConfig, TGAConfig, run_dpo, run_sft, run_tga

_CONFIG_FILE = click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def _echo(summary: Any) -> None:
    """Print the summary once: on the main process of a multi-process launch (``RANK`` 0)."""
    if int(os.environ.get("RANK", "0")) == 0:
        echo_json(summary)


def _writable(config: Any) -> Any:
    """``config``, once its output folder is known to be writable (checked before the model loads)."""
    check_writable(config.output_dir, "training output folder")
    return config


@click.group("train")
def train_group() -> None:
    """Training: safety SFT / DPO baselines and TGA (text-guided alignment); each resumes from its output_dir."""


@train_group.command("sft")
@_CONFIG_FILE
@config_options(SFTConfig, required=False)
def train_sft_cmd(config_file: Path, flags: ConfigFlags) -> None:
    """Safety SFT from CONFIG_FILE (YAML of vlsafe.methods.training.SFTConfig); resumes from its output_dir."""
    _echo(run_sft(_writable(config_from_flags(SFTConfig, flags, base=config_file))))


@train_group.command("dpo")
@_CONFIG_FILE
@config_options(DPOConfig, required=False)
def train_dpo_cmd(config_file: Path, flags: ConfigFlags) -> None:
    """DPO from CONFIG_FILE (YAML of vlsafe.methods.training.DPOConfig); resumes from its output_dir."""
    _echo(run_dpo(_writable(config_from_flags(DPOConfig, flags, base=config_file))))


@train_group.command("tga")
@_CONFIG_FILE
@config_options(TGAConfig, required=False, flatten={"retrieval": "retrieval", "guide": "guide"})
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    help="Optimizer steps of every stage, in place of the stages' own max_steps.",
)
@click.pass_context
def train_tga_cmd(ctx: click.Context, config_file: Path, max_steps: int | None, flags: ConfigFlags) -> None:
    """TGA (text-guided alignment) from CONFIG_FILE (YAML of vlsafe.methods.training.TGAConfig); resumable."""
    config = _writable(config_from_flags(TGAConfig, flags, base=config_file))
    _echo(run_tga(config, max_steps=max_steps, progress=progress_enabled(ctx)))

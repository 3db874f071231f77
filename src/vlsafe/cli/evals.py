"""Evaluation commands: eval, judge, report, benchmarks.

``vlsafe eval`` takes every :class:`~vlsafe.evals.EvalConfig` field as a flag (and a ``--config`` YAML file under
them) and runs :func:`vlsafe.evals.run_eval`; with ``--cmrm`` it also takes the
:class:`~vlsafe.methods.cmrm.CMRMSettings` fields as ``--cmrm-*`` flags and runs
:func:`vlsafe.methods.cmrm.run_cmrm_eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vlsafe.cli.cmrm import APPLY_HELP
from vlsafe.cli.group import echo_json, progress_enabled
from vlsafe.cli.options import ConfigFlags, KeyValue, config_from_flags, config_options
from vlsafe.core.config import read_yaml_mapping
from vlsafe.core.io import check_writable
from vlsafe.evals import EvalConfig, judge_run, list_benchmarks, run_eval
from vlsafe.evals.judging import REJUDGE, Rejudge
from vlsafe.evals.loaders import describe, format_description
from vlsafe.methods.cmrm import CMRMEvalConfig, CMRMSettings, run_cmrm_eval
from vlsafe.report import write_report


@click.command("eval")
@config_options(EvalConfig, config_file=True, help={"alpha": "Strength of --steer, or of --cmrm."})
@config_options(
    CMRMSettings,
    dest="cmrm_flags",
    prefix="cmrm",
    rename={"cmrm": "--cmrm"},
    flatten={"apply": ""},
    exclude=("apply.alpha",),
    required=False,
    help={
        **APPLY_HELP,
        "cmrm": "Evaluate with CMRM: a vector file from `vlsafe cmrm calibrate`, or 'sample' (per-input vectors); "
        "the --cmrm-* flags apply only with it.",
    },
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory."
)
@click.pass_context
def eval_cmd(ctx: click.Context, out_dir: Path, flags: ConfigFlags, cmrm_flags: ConfigFlags) -> None:
    """Generate, judge and score a model on a benchmark into the run directory --out (resumable)."""
    base = read_yaml_mapping(flags.config_file, "eval config") if flags.config_file else {}
    if cmrm_flags or "cmrm" in base:
        config = config_from_flags(CMRMEvalConfig, {**flags, **cmrm_flags}, base=base)
        results = run_cmrm_eval(config, out_dir, progress=progress_enabled(ctx))
    else:
        results = run_eval(
            config_from_flags(EvalConfig, flags, base=base), out_dir, progress=progress_enabled(ctx)
        )
    data = results.get("data") or {}
    echo_json(
        {
            "run_dir": str(out_dir),
            "judge": results.get("judge"),
            "images": data.get("images"),
            "fallbacks": data.get("fallbacks", []),
            "overall": (results.get("metrics") or {}).get("overall"),
        }
    )


@click.command("judge")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--judge", "judge_name", help="Judge name (default: the run's).")
@click.option(
    "--option",
    "options",
    multiple=True,
    type=KeyValue(),
    metavar="KEY=VALUE",
    help="Judge option (value parsed as JSON if it can be); repeatable.",
)
@click.option(
    "--rejudge",
    type=click.Choice(REJUDGE),
    default="errors",
    show_default=True,
    help="Stored verdicts of this judge (same model, endpoint, rubric and decoding) to judge again: errors "
    "(failed requests, unreadable answers), all, or none. Verdicts of any other judge are never reused.",
)
def judge_cmd(
    run_dir: Path, judge_name: str | None, options: tuple[tuple[str, Any], ...], rejudge: Rejudge
) -> None:
    """Re-score the stored generations in RUN_DIR with a judge, without regenerating."""
    results = judge_run(
        run_dir, judge_name, judge_options=dict(options) if options else None, rejudge=rejudge
    )
    echo_json(
        {"run_dir": str(run_dir), "judge": results.get("judge"), "overall": results["metrics"]["overall"]}
    )


@click.command("report")
@click.argument(
    "run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report folder."
)
def report_cmd(run_dirs: tuple[Path, ...], out_dir: Path) -> None:
    """Write a Markdown + HTML report comparing RUN_DIRS (the first is the baseline)."""
    check_writable(out_dir, "report folder")
    paths = write_report(list(run_dirs), out_dir)
    for key in ("markdown", "html"):
        if key in paths:
            click.echo(f"{key}: {paths[key]}")


@click.command("benchmarks")
@click.option(
    "--describe",
    "name",
    metavar="NAME",
    help="Print benchmark NAME's source, licence and the --data-dir layout its loader reads.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="With --describe: also print what the loader finds in this folder (files, samples, images, fallbacks).",
)
@click.option("--split", help="With --describe and --data-dir: the split to load.")
def benchmarks_cmd(name: str | None, data_dir: Path | None, split: str | None) -> None:
    """List benchmark loaders, judges and image settings; --describe NAME for one benchmark's layout."""
    if name is None:
        if data_dir is not None or split is not None:
            raise click.UsageError("--data-dir and --split need --describe NAME")
        for key, names in list_benchmarks().items():
            click.echo(f"{key + ':':<16} {', '.join(names)}")
        return
    click.echo(format_description(describe(name, data_dir, split=split)))

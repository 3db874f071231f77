"""Evaluation commands: eval, judge, report, benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vlsafe.cli.group import echo_json


# -- evaluation ----------------------------------------------------------------------------
@click.command("eval")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML EvalConfig; flags override it.",
)
@click.option("--model", help="HF id or local directory of the model.")
@click.option("--benchmark", help="Benchmark name (see `vlsafe benchmarks`).")
@click.option("--data-dir", help="Folder with the benchmark's published files.")
@click.option("--split", help="Benchmark-specific subset.")
@click.option("--image-setting", help="Override every sample's image setting (see `vlsafe benchmarks`).")
@click.option("--judge", help="Judge name (default: keyword).")
@click.option("--steer", help="Steering vector (.safetensors) applied while generating.")
@click.option("--alpha", type=float, help="Steering strength (needs --steer).")
@click.option(
    "--cmrm", help="CMRM: a vector file from `vlsafe cmrm calibrate`, or 'sample' (per-input vectors)."
)
@click.option("--cmrm-layers", help="CMRM layers: middle (default), all, or comma-separated indices.")
@click.option("--cmrm-delta/--no-cmrm-delta", default=None, help="CMRM per-layer deltas (default on).")
@click.option("--limit", type=int, help="Evaluate only the first N samples.")
@click.option("--batch-size", type=int, help="Prompts per generate call (default 8).")
@click.option("--max-new-tokens", type=int, help="Generation length cap (default 128).")
@click.option(
    "--retrieval-corpus", help="TGA inference: corpus (.txt/.jsonl) whose best match is put in each prompt."
)
@click.option("--max-error-fraction", type=float, help="Stop once more than this share of samples failed.")
@click.option("--seed", type=int, help="Seed for sampling and noise images.")
@click.option("--dtype", help="Model dtype: float32, bfloat16, float16, auto.")
@click.option("--device", help="Device for the model (single process).")
@click.option(
    "--trust-remote-code", is_flag=True, default=None, help="Allow the checkpoint's own code to run."
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory."
)
@click.pass_context
def eval_cmd(ctx: click.Context, config_file: Path | None, out_dir: Path, **flags: Any) -> None:
    """Generate, judge and score a model on a benchmark into the run directory --out (resumable)."""
    from vlsafe.evals.cli_support import eval_from_cli

    cmrm, cmrm_layers, cmrm_delta = flags.pop("cmrm"), flags.pop("cmrm_layers"), flags.pop("cmrm_delta")
    if cmrm is not None:
        from vlsafe.methods.cmrm import run_cmrm_eval

        opts = {"alpha": flags.pop("alpha"), "layers": cmrm_layers, "delta": cmrm_delta}
        results = run_cmrm_eval(
            config_file, flags, out_dir, cmrm=cmrm, options=opts, progress=not ctx.obj.get("quiet")
        )
    else:
        results = eval_from_cli(config_file, flags, out_dir, progress=not ctx.obj.get("quiet"))
    echo_json(
        {
            "run_dir": str(out_dir),
            "judge": results.get("judge"),
            "overall": (results.get("metrics") or {}).get("overall"),
        }
    )


@click.command("judge")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--judge", "judge_name", help="Judge name (default: the run's).")
@click.option(
    "--option", "options", multiple=True, help="Judge option KEY=VALUE (value parsed as JSON if it can be)."
)
def judge_cmd(run_dir: Path, judge_name: str | None, options: tuple[str, ...]) -> None:
    """Re-score the stored generations in RUN_DIR with a judge, without regenerating."""
    from vlsafe.evals.cli_support import judge_from_cli

    results = judge_from_cli(run_dir, judge_name, options)
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
    from vlsafe.report import write_report

    paths = write_report(list(run_dirs), out_dir)
    for key in ("markdown", "html"):
        if key in paths:
            click.echo(f"{key}: {paths[key]}")


@click.command("benchmarks")
def benchmarks_cmd() -> None:
    """List benchmark loaders, judges and image settings."""
    from vlsafe.evals import list_benchmarks

    for key, names in list_benchmarks().items():
        click.echo(f"{key + ':':<16} {', '.join(names)}")

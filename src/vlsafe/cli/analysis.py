"""The ``analyze`` command group: shift, directions, layers, weights, redraw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vlsafe.cli.group import echo_json


# -- analysis ------------------------------------------------------------------------------
def _ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",") if x.strip()] if text else None


def _words(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


_OUT = click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder."
)
_MODEL = click.option("--model", required=True, help="HF id or local directory of the model.")
_ITEMS_HELP = "Queries: a .jsonl (text, image, caption), a .txt (one per line) or a benchmark name."


def _model_opts(fn: Any) -> Any:
    for opt in reversed(
        [
            click.option("--data-dir", help="Benchmark data folder (image paths are resolved against it)."),
            click.option("--limit", type=int, help="Use only the first N queries of each source."),
            click.option("--batch-size", default=8, show_default=True, help="Queries per forward pass."),
            click.option(
                "--seed", default=0, show_default=True, help="Seed for noise images, splits, probes."
            ),
            click.option("--dtype", default="float32", show_default=True, help="Model dtype."),
            click.option("--trust-remote-code", is_flag=True, help="Allow the checkpoint's own code to run."),
        ]
    ):
        fn = opt(fn)
    return fn


@click.group("analyze")
def analyze_group() -> None:
    """Diagnose where and how vision breaks safety (each writes data, PNG figures and summary.md)."""


@analyze_group.command("shift")
@_MODEL
@click.option("--items", required=True, help=_ITEMS_HELP)
@click.option("--variants", help="Comma-separated variants (default: all the items allow).")
@click.option("--reference", default="text", show_default=True, help="Variant the others are compared with.")
@click.option("--layers", help="Comma-separated layer indices (default all).")
@click.option(
    "--positions", default="last,text_mean", show_default=True, help="last, text_mean, image_mean, mean."
)
@click.option(
    "--direction", type=click.Path(exists=True, path_type=Path), help="Steering vector to project on."
)
@click.option("--scatter-layers", help="Layers for the PCA scatter (default: last).")
@_model_opts
@_OUT
@click.pass_context
def analyze_shift_cmd(ctx: click.Context, out_dir: Path, **o: Any) -> None:
    """Per-layer representation shift of input variants against the reference variant."""
    from vlsafe.analysis import run_shift

    paths = run_shift(
        o["model"], o["items"], out_dir, variants=_words(o["variants"]), reference=o["reference"],
        layers=_ints(o["layers"]), positions=_words(o["positions"]) or ["last"], direction=o["direction"],
        data_dir=o["data_dir"], limit=o["limit"], batch_size=o["batch_size"],
        scatter_layers=_ints(o["scatter_layers"]), seed=o["seed"], dtype=o["dtype"],
        trust_remote_code=o["trust_remote_code"], progress=not ctx.obj.get("quiet"),
    )  # fmt: skip
    echo_json({k: str(v) for k, v in paths.items()})


@analyze_group.command("directions")
@_MODEL
@click.option("--harmful", required=True, help="Harmful prompts: .txt/.jsonl or benchmark name.")
@click.option("--harmless", required=True, help="Harmless prompts: .txt/.jsonl or benchmark name.")
@click.option("--items", help="Optional image queries: how far their variants move along the directions.")
@click.option("--variants", help="Comma-separated variants for --items.")
@click.option("--layers", help="Comma-separated layer indices (default all).")
@click.option("--test-fraction", default=0.25, show_default=True, help="Held-out share of each class.")
@_model_opts
@_OUT
@click.pass_context
def analyze_directions_cmd(ctx: click.Context, out_dir: Path, **o: Any) -> None:
    """Refusal direction and held-out probe accuracy per layer (harmful vs harmless text prompts)."""
    from vlsafe.analysis import run_directions

    paths = run_directions(
        o["model"], o["harmful"], o["harmless"], out_dir, items=o["items"], variants=_words(o["variants"]),
        layers=_ints(o["layers"]), test_fraction=o["test_fraction"], data_dir=o["data_dir"], limit=o["limit"],
        batch_size=o["batch_size"], seed=o["seed"], dtype=o["dtype"], trust_remote_code=o["trust_remote_code"],
        progress=not ctx.obj.get("quiet"),
    )  # fmt: skip
    echo_json({k: str(v) for k, v in paths.items()})


@analyze_group.command("layers")
@_MODEL
@click.option("--items", required=True, help=_ITEMS_HELP)
@click.option("--variants", help="Comma-separated variants (default: text, caption and image when possible).")
@click.option(
    "--top-k", default=10, show_default=True, help="Top-k of P_j - P_{j-1} for the activation layer."
)
@_model_opts
@_OUT
@click.pass_context
def analyze_layers_cmd(ctx: click.Context, out_dir: Path, **o: Any) -> None:
    """Safety-layer localisation with the logit lens; image-span vs caption cosines."""
    from vlsafe.analysis import run_layers

    paths = run_layers(
        o["model"], o["items"], out_dir, variants=_words(o["variants"]), top_k=o["top_k"],
        data_dir=o["data_dir"], limit=o["limit"], batch_size=o["batch_size"], seed=o["seed"], dtype=o["dtype"],
        trust_remote_code=o["trust_remote_code"], progress=not ctx.obj.get("quiet"),
    )  # fmt: skip
    echo_json({k: str(v) for k, v in paths.items()})


@analyze_group.command("weights")
@click.argument("checkpoint_a", type=click.Path(exists=True, path_type=Path))
@click.argument("checkpoint_b", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--names", default="auto", show_default=True, help="Tensor matching: auto, exact, llm (VLM vs LLM)."
)
@click.option(
    "--resized",
    type=click.Choice(["error", "skip", "overlap"]),
    default="error",
    show_default=True,
    help="Tensors differing only in their leading dimension (resized vocabulary): error, skip them, "
    "or compare the common leading rows.",
)
@_OUT
@click.pass_context
def analyze_weights_cmd(
    ctx: click.Context, checkpoint_a: Path, checkpoint_b: Path, names: str, resized: str, out_dir: Path
) -> None:
    """Relative weight change ||A-B||/||A|| per layer and module, streamed over safetensors."""
    from vlsafe.analysis import run_weights

    paths = run_weights(
        checkpoint_a, checkpoint_b, out_dir, names=names, resized=resized, progress=not ctx.obj.get("quiet")
    )
    echo_json({k: str(v) for k, v in paths.items()})


@analyze_group.command("redraw")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def analyze_redraw_cmd(out_dir: Path) -> None:
    """Redraw the figures and summary of an analysis folder from its saved data."""
    from vlsafe.analysis import redraw

    paths = redraw(out_dir)
    echo_json({k: str(v) for k, v in paths.items()})

"""The public functions behind ``vlsafe eval`` and ``vlsafe judge`` (flags -> config -> run)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlsafe.core.errors import ConfigError
from vlsafe.evals.config import EvalConfig
from vlsafe.evals.judging import judge_run
from vlsafe.evals.runner import run_eval

__all__ = ["config_from_flags", "eval_from_cli", "judge_from_cli", "parse_options"]


def config_from_flags(config_file: str | Path | None, flags: Mapping[str, Any]) -> EvalConfig:
    """An :class:`EvalConfig` from an optional YAML file, overridden by the flags that are set.

    Flags use the config's field names; ``None`` means "not given".
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        data = EvalConfig.from_yaml(config_file).model_dump(exclude_unset=True)
    data.update({k: v for k, v in flags.items() if v is not None})
    for key in ("model", "benchmark"):
        if not data.get(key):
            raise ConfigError(f"--{key} is required (as a flag or in --config)")
    return EvalConfig.from_dict(data)


def eval_from_cli(
    config_file: str | Path | None, flags: Mapping[str, Any], out_dir: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Build the config from a YAML file and flags, then :func:`vlsafe.evals.run_eval` it."""
    return run_eval(config_from_flags(config_file, flags), out_dir, progress=progress)


def parse_options(options: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are parsed as JSON when they can be, else kept as text."""
    out: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"judge option {item!r} must look like KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def judge_from_cli(
    run_dir: str | Path, judge_name: str | None, options: Sequence[str] = ()
) -> dict[str, Any]:
    """Re-score a run with a judge: :func:`vlsafe.evals.judge_run` with ``KEY=VALUE`` options."""
    return judge_run(run_dir, judge_name, judge_options=parse_options(options) if options else None)

"""Helpers of the reliability suite: the CLI in-process, hand-built run directories, and a child Python process
that kills itself in the middle of a write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from vlsafe.cli import main
from vlsafe.evals import EvalConfig

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: Any) -> Result:
    """Run ``vlsafe -q ARGS`` in this process; exceptions are caught in ``result.exception``."""
    return CliRunner().invoke(main, ["-q", *[str(a) for a in args]])


def fails_cleanly(result: Result, *needles: str) -> str:
    """Assert the command ended with exit code 2 and one ``error:`` line holding every needle (no traceback)."""
    text = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {text}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def eval_args(model: Path | str, out: Path, *extra: Any, limit: int = 3) -> list[Any]:
    """``vlsafe eval`` arguments of a short, cheap run on the built-in benign prompts with a blank image."""
    return [
        "eval", "--model", model, "--benchmark", "benign", "--image-setting", "blank", "--limit", limit,
        "--max-new-tokens", 3, "--out", out, *extra,
    ]  # fmt: skip


def hand_run(run_dir: Path, responses: list[str], *, kind: str = "harmful") -> Path:
    """A run directory with ``config.yaml`` and finished records (no model involved), for judging probes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    EvalConfig(model="m", benchmark="hand").to_yaml(run_dir / "config.yaml")
    rows = [
        {"id": f"r{i}", "benchmark": "hand", "category": "01-Illegal_Activitiy", "kind": kind,
         "image_setting": "none", "prompt": f"request {i}", "request": f"request {i}", "prompt_hash": f"h{i}",
         "response": text, "error": None}
        for i, text in enumerate(responses)
    ]  # fmt: skip
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def run_killed(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python; it is expected to kill itself with SIGKILL (asserted)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc

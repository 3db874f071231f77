"""The eval CLI: in-process commands, kill -9 and resume in a real subprocess, 2-process accelerate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from vlsafe.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _siuo(tmp_path: Path, n: int) -> Path:
    """A SIUO-format data directory (siuo_gen.json + images/) with ``n`` questions."""
    data = tmp_path / "siuo"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (24, 24), (i * 7 % 255, 120, 30)).save(data / "images" / f"{i}.png")
        rows.append(
            {
                "question_id": f"q{i:03d}",
                "image": f"{i}.png",
                "question": "How can I do this? " * (1 + i % 3),
                "category": f"cat{i % 2}",
                "safety_warning": "",
                "reference_answer": "",
            }
        )
    (data / "siuo_gen.json").write_text(json.dumps(rows))
    return data


def _ids(path: Path) -> Counter:
    return Counter(json.loads(line)["id"] for line in path.read_text().splitlines())


def test_cli_eval_judge_benchmarks_report(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # restored after the test (--quiet sets it process-wide)
    data = _siuo(tmp_path, 4)
    out = tmp_path / "run"
    runner = CliRunner()
    args = [
        "-q",
        "eval",
        "--model",
        str(tiny_dir("llava")),
        "--benchmark",
        "siuo",
        "--data-dir",
        str(data),
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["overall"]["n_harmful"] == 4
    assert _ids(out / "samples.jsonl") == Counter({f"q{i:03d}": 1 for i in range(4)})

    res = runner.invoke(main, [*args[:-2], "--max-new-tokens", "5", "--out", str(out)])
    assert res.exit_code == 2 and "different config" in res.output and "max_new_tokens" in res.output

    res = runner.invoke(main, ["judge", str(out), "--judge", "keyword", "--option", "window=null"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["judges"]["keyword"]["judge"]["name"] == "keyword"

    res = runner.invoke(main, ["benchmarks"])
    assert res.exit_code == 0 and "siuo" in res.output and "keyword" in res.output and "figstep" in res.output

    res = runner.invoke(main, ["report", str(out), "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report" / "report.md").is_file()

    res = runner.invoke(main, ["eval", "--model", "m", "--benchmark", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown benchmark 'nope'" in res.output


def test_cli_eval_flags_override_the_yaml_config(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = _siuo(tmp_path, 2)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"model: {tiny_dir('llava')}\nbenchmark: siuo\ndata_dir: {data}\nmax_new_tokens: 2\nbatch_size: 2\n"
    )
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(
        main, ["-q", "eval", "--config", str(cfg), "--max-new-tokens", "3", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert (stored["max_new_tokens"], stored["batch_size"], stored["benchmark"]) == (3, 2, "siuo")
    assert stored["judge"] == "keyword" and stored["seed"] == 0  # absent everywhere: the config's defaults

    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text() + "max_tokens: 3\n")
    res = runner.invoke(main, ["eval", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert res.output.strip() == "error: invalid EvalConfig: max_tokens: Extra inputs are not permitted"
    partial = tmp_path / "partial.yaml"
    partial.write_text(f"model: {tiny_dir('llava')}\n")
    res = runner.invoke(main, ["eval", "--config", str(partial), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--benchmark is required (as a flag or in the config file)" in res.output


def _eval_cmd(model: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vlsafe",
        "-q",
        "eval",
        "--model",
        str(model),
        "--benchmark",
        "siuo",
        "--data-dir",
        str(data),
        "--max-new-tokens",
        "24",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT / "src"))
    return env


def test_kill_9_mid_run_then_resume_has_no_duplicate_and_no_loss(tiny_dir, tmp_path):
    n = 40
    data, out = _siuo(tmp_path, n), tmp_path / "run"
    samples = out / "samples.jsonl"
    proc = subprocess.Popen(
        _eval_cmd(tiny_dir("llava"), data, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.is_file() and samples.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sum(_ids(samples).values()) if samples.read_text().endswith("\n") else None
    assert done_before is None or done_before < n, "the run finished before the kill"
    rerun = subprocess.run(
        _eval_cmd(tiny_dir("llava"), data, out), env=_env(), capture_output=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    assert _ids(samples) == Counter({f"q{i:03d}": 1 for i in range(n)})
    assert json.loads((out / "results.json").read_text())["n_samples"] == n


@pytest.mark.skipif(
    shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
    reason="accelerate CLI not installed",
)
def test_accelerate_two_cpu_processes_shard_and_merge(tiny_dir, tmp_path):
    n = 9
    data, out = _siuo(tmp_path, n), tmp_path / "run"
    launcher = str(Path(sys.executable).parent / "accelerate")
    # accelerate 1.x runs a single process for ``--cpu --num_processes 2`` unless MPI is set up; its
    # torchrun launcher (``--multi_gpu``) starts 2 ranks, which vlsafe puts on the gloo CPU backend.
    cmd = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        *_eval_cmd(tiny_dir("llava"), data, out)[2:],
    ]
    cmd[cmd.index("24")] = "4"  # shorter generations
    res = subprocess.run(cmd, env=_env(), capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    ids = _ids(out / "samples.jsonl")
    assert ids == Counter({f"q{i:03d}": 1 for i in range(n)})
    ranks = Counter(json.loads(x)["rank"] for x in (out / "samples.jsonl").read_text().splitlines())
    assert ranks == Counter({0: 5, 1: 4})
    assert not (out / "shards").exists()
    assert json.loads((out / "results.json").read_text())["n_samples"] == n

"""The foundation CLI commands: --version, models, tiny-model, inspect, tour; errors exit 2 cleanly; generated help;
the README's CLI tour parses into valid configs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from click.testing import CliRunner

from vlsafe import __version__
from vlsafe.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_and_models():
    runner = CliRunner()
    out = runner.invoke(main, ["--version"])
    assert out.exit_code == 0 and __version__ in out.output
    out = runner.invoke(main, ["models"])
    assert out.exit_code == 0
    for family in (
        "llava",
        "llava_next",
        "qwen2_vl",
        "qwen2_5_vl",
        "idefics3",
        "smolvlm",
        "gemma3",
        "causal_lm",
    ):
        assert family in out.output


def test_tiny_model_then_inspect(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["tiny-model", "qwen2_vl", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "m" / "config.json").is_file()
    out = runner.invoke(main, ["inspect", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    fields = dict(line.split(None, 1) for line in out.output.strip().splitlines() if line.strip())
    assert fields["family"].strip() == "qwen2_vl"
    assert int(fields["num_layers"]) == 2 and int(fields["hidden_size"]) == 64
    assert int(fields["image_tokens_per_image"]) > 0


def test_errors_are_one_line_not_tracebacks(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["inspect", str(tmp_path / "does-not-exist")])
    assert out.exit_code == 2
    assert "error:" in out.output and "Traceback" not in out.output
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = runner.invoke(main, ["inspect", str(tmp_path / "bert")])
    assert out.exit_code == 2 and "llava" in out.output  # the message lists the supported families
    out = runner.invoke(main, ["tiny-model", "not-a-family", str(tmp_path / "x")])
    assert out.exit_code == 2 and "error:" in out.output


def test_demo_tour_writes_report(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["--quiet", "tour", "--out", str(tmp_path / "demo")])
    assert out.exit_code == 0, out.output
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert (tmp_path / "demo" / "report.md").is_file() and (
        tmp_path / "demo" / "shift.png"
    ).stat().st_size > 1000
    layer = results["steered_layer"]
    # steering with the text-minus-image vector moves the image states toward the text-only ones
    assert results["distance_after"][str(layer)] < results["distance_before"][str(layer)]


def test_usage_errors_are_one_line_with_exit_code_2():
    runner = CliRunner()
    for args, needle in (
        (["tiny-model"], "Missing argument 'FAMILY'"),
        (["analyze", "shift", "--items", "benign", "--out", "x"], "Missing option '--model'"),
        (["cmrm", "calibrate", "--model", "m", "--anchors", "a", "--out", "v", "--mode", "both"], "'both'"),
        (["eval", "--model", "m", "--benchmark", "b", "--steer-layers", "1,one", "--out", "x"], "item 'one'"),
    ):
        out = runner.invoke(main, args)
        lines = out.output.strip().splitlines()
        assert out.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.output
        assert needle in lines[0] and "--help" in lines[0]


def test_generated_help_shows_the_config_defaults():
    runner = CliRunner()
    text = " ".join(runner.invoke(main, ["eval", "--help"]).output.split())
    assert "--max-new-tokens INTEGER Generation length cap. [default: 128]" in text
    assert "--image-setting [none|blank|" in text and "--cmrm-layers TEXT" in text
    text = " ".join(runner.invoke(main, ["cmrm", "sweep", "--help"]).output.split())
    assert "--max-new-tokens INTEGER Generation length cap. [default: 128]" in text  # one default for both
    assert "--alphas FLOAT[,...] The strengths evaluated. [default: 0.0,0.1," in text
    text = " ".join(runner.invoke(main, ["train", "sft", "--help"]).output.split())
    assert "--max-steps INTEGER" in text and "--output-dir PATH" in text and "--model TEXT" in text


def _readme_commands() -> list[list[str]]:
    """The ``vlsafe eval|cmrm|analyze|train`` lines of README.md's CLI tour, as argument lists."""
    text = (ROOT / "README.md").read_text()
    lines = text.replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        if not line.startswith("vlsafe "):
            continue
        words = shlex.split(line.split("  #")[0])
        if words[1] in ("eval", "cmrm", "analyze", "train") and "..." not in words:
            if words[1:3] != ["analyze", "redraw"]:
                out.append(words[1:])
    return out


def test_readme_cli_tour_commands_parse_into_valid_configs(monkeypatch):
    import vlsafe.cli.analyze as analyze_cli
    import vlsafe.cli.cmrm as cmrm_cli
    import vlsafe.cli.evals as evals_cli
    import vlsafe.cli.train as train_cli

    calls: list[tuple[str, object]] = []

    def record(name):
        def fake(config, *args, **kwargs):
            calls.append((name, config))
            return {"rows": [], "paths": {}} if name == "run_sweep" else {}

        return fake

    for module, names in (
        (evals_cli, ("run_eval", "run_cmrm_eval")),
        (cmrm_cli, ("run_calibrate", "run_sweep")),
        (analyze_cli, ("run_shift", "run_directions", "run_layers", "run_weights")),
        (train_cli, ("run_sft", "run_dpo", "run_tga")),
    ):
        for name in names:
            monkeypatch.setattr(module, name, record(name))
    monkeypatch.chdir(ROOT)
    commands = _readme_commands()
    assert len(commands) >= 12, commands
    for args in commands:
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, (args, out.output)
    by_name: dict[str, object] = {}
    for name, config in calls:
        by_name.setdefault(name, config)  # the first call of each function
    assert len(calls) == len(commands)
    cmrm = by_name["run_cmrm_eval"]
    assert (cmrm.cmrm, cmrm.apply.alpha, cmrm.image_setting.value) == ("vec.safetensors", 1.0, "noise")
    assert by_name["run_calibrate"].corrupt == "blank"  # the paper preset's img′ (the README names none)
    sweep = by_name["run_sweep"]
    assert (sweep.safety, sweep.over_refusal, sweep.max_new_tokens) == (
        ["strongreject"],
        ["overrefusal"],
        128,
    )
    assert by_name["run_weights"].names == "llm"
    assert by_name["run_shift"].variants == ["image", "blank", "noise", "text"]

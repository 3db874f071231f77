"""vlsafe.cli.options: click flags generated from pydantic configs (kinds, help, defaults, YAML, errors)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Literal

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vlsafe.cli import COMMANDS, main
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options, field_help
from vlsafe.core.errors import ConfigError
from vlsafe.evals.config import EvalConfig, GenerationOptions
from vlsafe.methods.cmrm import CMRMEvalConfig, SweepConfig


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    """Options of a nested model.

    Attributes:
        depth: how deep.
        mode: layer spec, parsed by the model.
    """

    model_config = ConfigDict(extra="forbid")

    depth: int = 2
    mode: Literal["middle", "all"] | int | list[int] = "middle"

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("middle", "all"):
            return [int(x) for x in v.split(",")]
        return v


class Base(BaseModel):
    """A base config.

    Attributes:
        name: the name of the thing,
            over two lines.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)


class Probe(Base):
    """A config with one field of every kind.

    Attributes:
        count: how many items.
        ratio: a share.
        path: a file.
        on: a switch.
        color: a colour.
        level: a level.
        layers: layer indices.
        words: some words.
        weights: some numbers.
        positions: where to read.
        lengths: a length per role.
        inner: nested options.
        hidden: YAML-only nested options.
        rows: YAML-only records.
    """

    count: int = 3
    ratio: float = 0.5
    path: Path | None = None
    on: bool = True
    color: Color = Color.RED
    level: Literal[1, 2, 3] = 1
    layers: list[int] | None = None
    words: list[str] = Field(default_factory=lambda: ["a", "b"])
    weights: list[float] = Field(default_factory=list)
    positions: list[Literal["last", "mean"]] = Field(default_factory=lambda: ["last"])
    lengths: dict[Literal["safety", "utility"], int] = Field(default_factory=dict)
    inner: Inner = Field(default_factory=Inner)
    hidden: Inner = Field(default_factory=Inner)
    rows: list[dict[str, Any]] = Field(default_factory=list)
    note: str | None = Field(None, description="``free`` text from the description.")


@click.command("probe")
@config_options(Probe, config_file=True, flatten={"inner": "in"})
def probe_cmd(flags: ConfigFlags) -> None:
    """Validate a Probe and print it with the given flags."""
    config = config_from_flags(Probe, flags)
    click.echo(json.dumps({"given": dict(flags), "config": config.model_dump(mode="json")}, default=str))


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):
    """Invoke ``vlsafe probe ...`` through the real vlsafe group (its error handling included)."""
    monkeypatch.setitem(COMMANDS._items, "probe", probe_cmd)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, ["probe", *args])

    return invoke


def _out(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_each_field_kind_becomes_the_right_flag(run: Any) -> None:
    args = [
        "--name",
        "n",
        "--count",
        "7",
        "--ratio",
        "0.25",
        "--path",
        "x/y.txt",
        "--no-on",
        "--color",
        "blue",
    ]
    args += ["--level", "3", "--layers", "1, 2,", "--layers", "4", "--words", "p,q", "--weights", "0.5,1"]
    args += ["--positions", "mean,last", "--lengths", "utility=8", "--lengths", "safety=20"]
    args += ["--in-depth", "5", "--in-mode", "1,3", "--note", "hi"]
    out = _out(run(*args))
    assert out["given"]["layers"] == [1, 2, 4] and out["given"]["inner"] == {"depth": 5, "mode": "1,3"}
    assert out["config"] == {
        "name": "n",
        "count": 7,
        "ratio": 0.25,
        "path": "x/y.txt",
        "on": False,
        "color": "blue",
        "level": 3,
        "layers": [1, 2, 4],
        "words": ["p", "q"],
        "weights": [0.5, 1.0],
        "positions": ["mean", "last"],
        "lengths": {"utility": 8, "safety": 20},
        "inner": {"depth": 5, "mode": [1, 3]},
        "hidden": {"depth": 2, "mode": "middle"},
        "rows": [],
        "note": "hi",
    }


def test_absent_flags_are_not_given_and_the_model_default_applies(run: Any) -> None:
    out = _out(run("--name", "n"))
    assert out["given"] == {"name": "n"}
    assert out["config"] == Probe(name="n").model_dump(mode="json")


def test_help_shows_the_model_defaults_and_docstring_text(run: Any) -> None:
    text = " ".join(run("--help").output.split())
    for expected in (
        "--count INTEGER How many items. [default: 3]",
        "--on / --no-on A switch. [default: on]",
        "--color [red|blue] A colour. [default: red]",
        "--level [1|2|3] A level. [default: 1]",
        "--words TEXT[,...] Some words. [default: a,b]",
        "--positions [last|mean][,...]",
        "--lengths KEY=VALUE A length per role. (repeatable)",
        "--in-depth INTEGER How deep. [default: 2]",
        "--in-mode TEXT Layer spec, parsed by the model. [default: middle]",
        "--note TEXT Free text from the description.",
        "--name TEXT The name of the thing, over two lines. [required]",
        "--config FILE YAML file of Probe fields",
    ):
        assert expected in text, expected
    assert "--hidden" not in text and "--rows" not in text  # YAML-only


def test_flags_override_the_yaml_file_and_the_file_fills_the_rest(run: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(
        "name: from-file\ncount: 9\nwords: [x]\ninner: {depth: 4, mode: all}\nhidden: {depth: 6}\n"
    )
    out = _out(run("--config", str(cfg), "--count", "1", "--in-mode", "2"))
    config = out["config"]
    assert (config["name"], config["count"], config["words"]) == ("from-file", 1, ["x"])
    assert config["inner"] == {"depth": 4, "mode": [2]}  # nested flags override one field each
    assert config["hidden"] == {"depth": 6, "mode": "middle"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--name", "n", "--layers", "1,x,3"], "'--layers': item 'x' of '1,x,3' is not an integer"),
        (["--name", "n", "--weights", "0.5,half"], "item 'half' of '0.5,half' is not a number"),
        (
            ["--name", "n", "--positions", "last,first"],
            "item 'first' of 'last,first' is not one of 'last', 'mean'",
        ),
        (["--name", "n", "--color", "green"], "'green' is not one of 'red', 'blue'"),
        (["--name", "n", "--lengths", "utility"], "'utility' must look like KEY=VALUE"),
        (["--name", "n", "--lengths", "other=3"], "'other=3': is not one of 'safety', 'utility'"),
        (["--count", "2"], "--name is required (as a flag or in the config file)"),
        (["--name", ""], "invalid Probe: name: String should have at least 1 character"),
    ],
)
def test_bad_values_are_one_error_line_with_exit_code_2(run: Any, args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output


def test_unknown_yaml_field_is_one_error_line(run: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("name: n\ncolour: red\n")
    result = run("--config", str(cfg))
    assert result.exit_code == 2
    assert result.output.strip() == "error: invalid Probe: colour: Extra inputs are not permitted"


def test_without_a_config_file_required_fields_are_required_flags() -> None:
    @click.command()
    @config_options(Base)
    def cmd(flags: ConfigFlags) -> None:
        click.echo(config_from_flags(Base, flags).name)

    assert CliRunner().invoke(cmd, ["--name", "x"]).output == "x\n"
    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 2 and "Missing option '--name'" in result.output


def test_include_exclude_rename_prefix_arguments_and_dest() -> None:
    @click.command()
    @config_options(
        Probe, include=("name", "count", "inner.depth"), flatten={"inner": ""}, arguments=("name",)
    )
    @config_options(Inner, dest="other", prefix="o", rename={"depth": "--how-deep"}, exclude=("mode",))
    def cmd(flags: ConfigFlags, other: ConfigFlags) -> None:
        click.echo(json.dumps([dict(flags), dict(other)]))

    help_text = CliRunner().invoke(cmd, ["--help"]).output
    assert "Usage: cmd [OPTIONS] NAME" in help_text
    assert "--count" in help_text and "--depth" in help_text and "--how-deep" in help_text
    assert "--ratio" not in help_text and "--mode" not in help_text and "--o-mode" not in help_text
    result = CliRunner().invoke(cmd, ["n", "--depth", "3", "--how-deep", "4"])
    assert json.loads(result.output) == [{"name": "n", "inner": {"depth": 3}}, {"depth": 4}]


def test_mistakes_in_a_declaration_fail_at_import() -> None:
    with pytest.raises(ValueError, match=r"has no field\(s\) \['nope'\]"):
        config_options(Probe, exclude=("nope",))
    with pytest.raises(ValueError, match="generated twice"):
        config_options(Probe, rename={"count": "--ratio"})
    with pytest.raises(ValueError, match="'rows' of Probe .* has no flag form"):
        config_options(Probe, include=("rows",))
    with pytest.raises(ValueError, match="not a nested model"):
        config_options(Probe, flatten={"count": "c"})


def test_config_from_flags_takes_a_mapping_or_a_model_as_base() -> None:
    base = Probe(name="a", count=5)
    config = config_from_flags(Probe, {"inner": {"depth": 7}}, base=base)
    assert (config.name, config.count, config.inner.depth, config.ratio) == ("a", 5, 7, 0.5)
    config = config_from_flags(Probe, {"count": 1}, base={"name": "b", "count": 2})
    assert (config.name, config.count) == ("b", 1)
    with pytest.raises(ConfigError, match="--name is required"):
        config_from_flags(Probe, {"count": 1})


def test_field_help_prefers_the_description_then_the_nearest_docstring() -> None:
    assert field_help(Probe, "note") == "Free text from the description."
    assert field_help(Probe, "name") == "The name of the thing, over two lines."  # from the base class
    assert field_help(EvalConfig, "max_new_tokens") == "Generation length cap."
    assert field_help(EvalConfig, "steer_positions").startswith("Positions steer is added at")


def test_sweep_and_eval_configs_share_one_declaration_and_default_of_each_option() -> None:
    shared = set(GenerationOptions.model_fields)
    assert {"max_new_tokens", "batch_size", "judge", "seed", "dtype", "limit"} <= shared
    for cls in (EvalConfig, SweepConfig, CMRMEvalConfig):
        assert shared <= set(cls.model_fields)
        for name in shared:  # inherited, not re-declared
            assert name not in cls.__dict__.get("__annotations__", {}), (cls.__name__, name)
            assert cls.model_fields[name].default == GenerationOptions.model_fields[name].default
    assert (
        SweepConfig.model_fields["max_new_tokens"].default
        == EvalConfig.model_fields["max_new_tokens"].default
    )

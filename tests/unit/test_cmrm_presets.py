"""CMRM's presets and the validation of its options: the paper preset is every config's default, a preset fills
only what is left unset, and a bad value is a ConfigError naming the value and the rule."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm import (
    PRESETS,
    ApplyOptions,
    CalibrateConfig,
    CMRMEvalConfig,
    CMRMSettings,
    SweepConfig,
    default_alphas,
    parse_layer_choice,
)

EVAL = {"model": "m", "benchmark": "b", "cmrm": "sample"}


def test_the_paper_preset_is_the_default_of_every_config() -> None:
    paper = PRESETS["paper"]
    assert paper["corrupt"] == "blank" and paper["apply"]["layers"] == "all" and paper["apply"]["delta"] is False
    assert paper["alphas"] == default_alphas() and paper["levels"] == ["dataset", "sample"]
    for config in (CMRMSettings(cmrm="sample"), CMRMEvalConfig(**EVAL), SweepConfig(model="m", cmrm="sample")):
        assert config.preset == "paper" and config.corrupt == paper["corrupt"]
        assert config.vector_positions == paper["vector_positions"]
        assert config.apply.model_dump(exclude={"alpha"}) == paper["apply"]
    cal = CalibrateConfig(model="m", anchors="a", out="v")
    assert (cal.preset, cal.corrupt, cal.positions, cal.reduce) == ("paper", "blank", "last", "mean")
    assert SweepConfig(model="m", cmrm="sample").alphas == paper["alphas"]
    assert SweepConfig(model="m", calibration={"anchors": "a"}).levels() == ["dataset", "sample"]
    assert SweepConfig(model="m", cmrm="sample").levels() == ["sample"]


def test_a_preset_fills_only_what_is_left_unset() -> None:
    band = CMRMEvalConfig(**EVAL, preset="band", alpha=0.5)
    assert (band.corrupt, band.apply.layers, band.apply.delta, band.apply.alpha) == ("image", "middle", True, 0.5)
    mixed = CMRMEvalConfig(**EVAL, preset="band", corrupt="noise", apply={"layers": [1], "delta": False})
    assert (mixed.corrupt, mixed.apply.layers, mixed.apply.delta) == ("noise", [1], False)
    given = ApplyOptions(layers="all", prefill_only=True)  # an instance: its set fields win, the rest is filled
    assert CMRMSettings(cmrm="sample", preset="band", apply=given).apply.model_dump(exclude={"alpha"}) == {
        "layers": "all",
        "delta": True,
        "norm_scale": False,
        "positions": "all",
        "when": "prefill",
    }
    assert CalibrateConfig(model="m", anchors="a", out="v", preset="band").corrupt == "image"


def test_when_and_the_earlier_prefill_only_flag() -> None:
    assert ApplyOptions(prefill_only=True).when == "prefill" and ApplyOptions(prefill_only=False).when == "every"
    assert "prefill_only=True" in ApplyOptions(when="prefill").describe()  # run fingerprints keep their text
    assert ApplyOptions().describe() == ApplyOptions(prefill_only=False).describe()
    with pytest.raises(ValueError, match="prefill_only and when='every' disagree"):
        ApplyOptions(prefill_only=True, when="every")


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (CMRMEvalConfig, {**EVAL, "apply": {"positions": "first"}}, "positions='first' is not one of all, last, text"),
        (CMRMEvalConfig, {**EVAL, "apply": {"when": "sometimes"}}, "when='sometimes' is not one of prefill, every"),
        (CMRMEvalConfig, {**EVAL, "corrupt": "grey"}, "corrupt='grey' is not one of blank, noise, image, mean"),
        (CMRMEvalConfig, {**EVAL, "vector_positions": "mid"}, "vector_positions='mid' is not one of last, text_mean"),
        (CMRMEvalConfig, {**EVAL, "preset": "mine"}, "preset='mine' is not one of paper, band"),
        (CMRMEvalConfig, {**EVAL, "apply": {"layers": "top"}}, "layers='top' must be 'middle', 'all' or comma"),
        (CalibrateConfig, {"model": "m", "anchors": "a", "out": "v", "level": "row"}, "level='row' is not one of"),
        (CalibrateConfig, {"model": "m", "anchors": "a", "out": "v", "corrupt": "red"}, "corrupt='red' is not one"),
        (SweepConfig, {"model": "m", "cmrm": "sample", "axes": {"corrupt": ["blank", "grey"]}},
         "corrupt axis value 'grey' is not one of blank, noise, image, mean"),
        (SweepConfig, {"model": "m", "cmrm": "sample", "axes": {"positions": ["text", "first"]}},
         "positions axis value 'first' is not one of all, last, text"),
        (SweepConfig, {"model": "m", "cmrm": "sample", "axes": {"layers": ["all", "top"]}},
         "layers item 'top' is not all, middle, each, an index N or a band A-B"),
        (SweepConfig, {"model": "m", "cmrm": "sample", "axes": {"layers": ["all:twice"]}}, "the only suffix is ':delta'"),
        (SweepConfig, {"model": "m", "cmrm": "sample", "axes": {"when": []}}, "the when axis is empty"),
        (SweepConfig, {"model": "m", "cmrm": "sample", "axes": {"level": ["sample", "sample"]}}, "repeats a value"),
        (SweepConfig, {"model": "m"}, "give cmrm .* or calibration anchors"),
        (SweepConfig, {"model": "m", "cmrm": "v.safetensors", "calibration": {"anchors": "a"}}, "give one of them"),
    ],
)  # fmt: skip
def test_bad_values_are_config_errors_naming_value_and_rule(model, data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(model, data)


def test_sweep_points_cover_the_axes_in_order() -> None:
    assert parse_layer_choice("all:delta") == [("all", True, "all+delta")]
    assert parse_layer_choice("2-4") == [([2, 3, 4], False, "2-4")]
    assert parse_layer_choice("each", 3) == [([0], False, "layer0"), ([1], False, "layer1"), ([2], False, "layer2")]
    with pytest.raises(ValueError, match="'4-2'"):
        parse_layer_choice("4-2")
    config = SweepConfig(
        model="m",
        calibration={"anchors": "a"},
        axes={"corrupt": ["blank", "image"], "layers": ["all", "all:delta", "1"], "positions": ["last", "text"]},
    )
    points = config.points(num_layers=2)
    assert len(points) == 2 * 2 * 3 * 2  # levels (the preset's) x img′ x layers x positions
    first = points[0]
    assert (first.level, first.corrupt, first.layers, first.delta, first.positions, first.when) == (
        "dataset", "blank", "all", False, "last", "every")  # fmt: skip
    assert first.name() == "dataset_blank_all_last_every" and points[2].name() == "dataset_blank_all+delta_last_every"
    assert len({p.name() for p in points}) == len(points)
    vector = SteeringVector({0: torch.ones(4)}, {"corrupt": "noise"})
    with pytest.raises(ConfigError, match="needs calibration anchors: a vector has one img′"):
        SweepConfig(model="m", cmrm=vector, axes={"corrupt": ["blank", "noise"]}).points(2)
    with pytest.raises(ConfigError, match="dataset-level points need a vector"):
        SweepConfig(model="m", cmrm="sample", axes={"level": ["dataset"]}).points(2)
    only_alpha = SweepConfig(model="m", cmrm=vector)
    assert only_alpha.single() and [p.corrupt for p in only_alpha.points(2)] == [None]
    assert not SweepConfig(model="m", cmrm=vector, axes={"when": ["prefill"]}).single()

"""CMRM's configs: CMRMEvalConfig routes alpha and refuses steer; SweepConfig builds one EvalConfig per benchmark."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError
from vlsafe.evals import EvalConfig
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm import ApplyOptions, CalibrateConfig, CMRMEvalConfig, SweepConfig, vector_hash
from vlsafe.methods.cmrm.sweep import _alpha_dir, _run_dirs


def test_cmrm_eval_alpha_is_the_cmrm_strength_and_steer_is_refused() -> None:
    config = CMRMEvalConfig(model="m", benchmark="b", cmrm="sample", alpha=0.25)
    assert config.apply.alpha == 0.25 and config.eval_config().alpha == 1.0
    options = ApplyOptions(layers=[1])
    config = CMRMEvalConfig(model="m", benchmark="b", cmrm="v.safetensors", alpha=0.5, apply=options)
    assert (config.apply.alpha, config.apply.layers) == (0.5, [1])
    plain = config.eval_config()  # what the run directory records: the EvalConfig fields only
    assert (
        type(plain) is EvalConfig and plain.model_dump() == EvalConfig(model="m", benchmark="b").model_dump()
    )
    with pytest.raises(ConfigError, match="cmrm and steer cannot be combined"):
        validate_config(CMRMEvalConfig, {"model": "m", "benchmark": "b", "cmrm": "sample", "steer": "v"})
    with pytest.raises(ConfigError, match="give CMRM's strength once"):
        validate_config(
            CMRMEvalConfig,
            {"model": "m", "benchmark": "b", "cmrm": "sample", "alpha": 1, "apply": {"alpha": 2}},
        )


def test_sweep_eval_configs_per_role_and_benchmark() -> None:
    config = SweepConfig(
        model="m",
        cmrm="sample",
        safety=["strongreject", "siuo:gen"],
        utility=["my_val"],
        data_dir="/data",
        data_dirs={"siuo": "/siuo"},
        role_max_new_tokens={"utility": 6},
        role_limit={"utility": 5},
        limit=9,
        batch_size=3,
        judge="keyword",
    )
    sr, siuo, val = (config.eval_config(role, spec) for role, spec in config.benchmarks())
    assert (sr.benchmark, sr.split, sr.data_dir, sr.max_new_tokens, sr.batch_size) == (
        "strongreject",
        None,
        "/data",
        128,
        3,
    )
    assert (siuo.benchmark, siuo.split, siuo.data_dir) == ("siuo", "gen", "/siuo")
    assert (val.benchmark, val.max_new_tokens, val.limit) == ("my_val", 6, 5)
    assert sr.limit == siuo.limit == 9
    assert sr.steer is None and sr.alpha == 1.0  # CMRM is added as an intervention, not as steering
    with pytest.raises(ValueError, match="role_max_new_tokens"):
        SweepConfig(model="m", cmrm="sample", role_max_new_tokens={"safety": 0})
    with pytest.raises(ValueError, match="role_max_new_tokens"):
        SweepConfig(model="m", cmrm="sample", role_max_new_tokens={"judging": 4})
    with pytest.raises(ValueError, match="role_limit"):
        SweepConfig(model="m", cmrm="sample", role_limit={"utility": 0})
    with pytest.raises(ConfigError, match="no benchmarks"):
        SweepConfig(model="m", cmrm="sample").benchmarks()


def test_sweep_run_directories_never_collide() -> None:
    config = SweepConfig(model="m", cmrm="sample", safety=["a/b", "x:s1", "x:s2"], over_refusal=["a/b"])
    assert _run_dirs(config) == {
        ("safety", "a/b"): "a_b.safety",
        ("safety", "x:s1"): "x_s1",
        ("safety", "x:s2"): "x_s2",
        ("over_refusal", "a/b"): "a_b.over_refusal",
    }
    assert [_alpha_dir(a) for a in (0.0, 0.5, 1.0, 0.125)] == [
        "alpha_0.00",
        "alpha_0.50",
        "alpha_1.00",
        "alpha_0.125",
    ]


def test_vectors_in_memory_serialise_as_their_hash() -> None:
    vector = SteeringVector({0: torch.ones(4)}, {})
    config = SweepConfig(model="m", cmrm=vector, safety=["strongreject"])
    assert config.model_dump(mode="json")["cmrm"] == f"vector:{vector_hash(vector)}" == config.cmrm_label()
    assert SweepConfig(model="m", cmrm="v.safetensors").cmrm_label() == "v.safetensors"


def test_calibrate_config_defaults_and_rules() -> None:
    config = CalibrateConfig(model="m", anchors="strongreject", out="v.safetensors")
    assert (config.mode, config.fraction, config.corrupt, config.layers, config.benign_setting.value) == (
        "heldout",
        0.2,
        "blank",
        None,
        "noise",
    )
    with pytest.raises(ConfigError, match="fraction: Input should be less than 1"):
        validate_config(CalibrateConfig, {"model": "m", "anchors": "a", "out": "v", "fraction": 1.0})

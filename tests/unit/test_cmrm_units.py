"""CMRM pieces that need no model: anchors, layer choice, options, PCA direction, sweep config."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.evals import Sample, SampleKind
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm import (
    ApplyOptions,
    SweepConfig,
    default_alphas,
    heldout_ids,
    heldout_split,
    middle_band,
)
from vlsafe.methods.cmrm.anchors import anchor_items, anchors_hash, parse_bench_spec
from vlsafe.methods.cmrm.apply import prepare_vector, resolve_steer_layers
from vlsafe.methods.cmrm.calibrate import _pca_direction


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", benchmark="b", text=f"query {i}", kind=SampleKind.HARMFUL) for i in range(n)]


def test_heldout_split_is_deterministic_and_order_free():
    samples = _samples(50)
    anchors, rest = heldout_split(samples, 0.2)
    assert len(anchors) == 10 and len(rest) == 40
    assert {s.id for s in anchors}.isdisjoint({s.id for s in rest})
    again, _ = heldout_split(list(reversed(samples)), 0.2)
    assert {s.id for s in again} == {s.id for s in anchors}
    other, _ = heldout_split(samples, 0.2, seed=1)
    assert {s.id for s in other} != {s.id for s in anchors}
    assert len(heldout_split(_samples(2), 0.01)[0]) == 1  # at least one anchor, at least one left
    with pytest.raises(ConfigError, match="strictly between"):
        heldout_split(samples, 1.0)
    with pytest.raises(InputError, match="at least 2"):
        heldout_split(_samples(1), 0.5)


def test_middle_band_and_layer_specs():
    assert middle_band(30) == list(range(7, 15))
    assert middle_band(2) == [0]
    assert middle_band(1) == [0]
    assert middle_band(8) == [2, 3]
    avail = list(range(8))
    assert resolve_steer_layers("middle", 8, avail) == [2, 3]
    assert resolve_steer_layers("all", 8, avail) == avail
    assert resolve_steer_layers(-1, 8, avail) == [7]
    assert resolve_steer_layers([5, 3, 5], 8, avail) == [3, 5]
    with pytest.raises(ConfigError, match="out of range"):
        resolve_steer_layers([8], 8, avail)
    with pytest.raises(ConfigError, match="not in the CMRM vector"):
        resolve_steer_layers([4], 8, [0, 1])
    with pytest.raises(ConfigError, match="middle"):
        resolve_steer_layers("top", 8, avail)


def test_prepare_vector_deltas_inside_the_band():
    vec = SteeringVector({i: torch.full((2,), float(i * i)) for i in range(6)})
    band = prepare_vector(vec, 6, [2, 3, 4], delta=True)
    assert band.layers == [2, 3, 4]
    assert [float(band.vectors[i][0]) for i in band.layers] == [4.0, 5.0, 7.0]  # v2, v3-v2, v4-v3
    plain = prepare_vector(vec, 6, "all", delta=False)
    assert torch.equal(plain.vectors[5], vec.vectors[5])


def test_apply_options():
    assert ApplyOptions(layers="3,5").layers == [3, 5]
    assert ApplyOptions().layers == "all" and ApplyOptions().delta is False  # the paper preset
    assert (ApplyOptions().positions, ApplyOptions().when) == ("all", "every")
    with pytest.raises(ValueError, match="comma-separated"):
        ApplyOptions(layers="top")
    with pytest.raises(ValueError, match="extra"):
        ApplyOptions(strength=1.0)
    assert "alpha=0.5" in ApplyOptions(alpha=0.5).describe()


def test_pca_direction_sign_and_scale():
    torch.manual_seed(0)
    direction = torch.tensor([3.0, 4.0]) / 5.0
    spread = torch.linspace(1.0, 3.0, 20)[:, None] * direction  # all along +direction
    diffs = spread + 0.01 * torch.randn(20, 2)
    mean = diffs.double().mean(0)
    pc, ratio = _pca_direction(diffs, mean)
    assert float(pc.double() @ mean) > 0 and ratio > 0.99
    assert torch.allclose(pc, direction * float(direction.double() @ mean), atol=0.02)
    flipped, _ = _pca_direction(-diffs, -mean)  # the sign follows the mean
    assert float(flipped.double() @ -mean) > 0


def test_anchor_items_hash_and_specs(tmp_path):
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    items, ids = anchor_items(["a", {"text": "b", "image": red, "id": "x"}])
    assert [it.text for it in items] == ["a", "b"] and ids == ["item0", "x"] and items[1].image is red
    blue = Image.new("RGB", (4, 4), (0, 0, 255))
    other, _ = anchor_items(["a", {"text": "b", "image": blue}])
    assert anchors_hash(items) != anchors_hash(other) and anchors_hash(items) == anchors_hash(items)
    with pytest.raises(InputError, match="not a single"):
        anchor_items("a")
    with pytest.raises(InputError, match="'text'"):
        anchor_items([{"image": red}])
    assert parse_bench_spec("mmsafetybench:01-Illegal_Activitiy") == ("mmsafetybench", "01-Illegal_Activitiy")
    assert parse_bench_spec("vlsafe") == ("vlsafe", None)
    with pytest.raises(ConfigError):
        parse_bench_spec(":x")
    SteeringVector({0: torch.ones(2)}, {"anchors": {"heldout_ids": ["s1", "s2"]}}).save(tmp_path / "v")
    assert heldout_ids(tmp_path / "v.safetensors") == {"s1", "s2"}
    assert heldout_ids("sample") == set()


def test_sweep_config():
    assert default_alphas() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    cfg = SweepConfig(model="m", cmrm="sample", safety=["vlsafe"], utility=["mmbench:dev"])
    assert cfg.benchmarks() == [("safety", "vlsafe"), ("utility", "mmbench:dev")]
    with pytest.raises(ConfigError, match="no benchmarks"):
        SweepConfig(model="m", cmrm="sample").benchmarks()
    with pytest.raises(ValueError, match="alphas is empty"):
        SweepConfig(model="m", cmrm="sample", alphas=[])
    assert json.loads(cfg.model_dump_json())["apply"]["layers"] == "all"

"""SteeringVector arithmetic, I/O and validation; operators; no model needed."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, ablate, add, clamp


def _vec() -> SteeringVector:
    return SteeringVector({0: torch.tensor([1.0, 2.0]), 2: torch.tensor([0.0, -1.0])}, {"model": "m"})


def test_save_load_roundtrip(tmp_path):
    v = _vec()
    path = v.save(tmp_path / "v")
    assert path.name == "v.safetensors" and path.with_suffix(".json").is_file()
    w = SteeringVector.load(path)
    assert w.layers == [0, 2]
    assert torch.equal(w.vectors[0], v.vectors[0]) and w.meta == {"model": "m"}


def test_arithmetic_and_deltas():
    v = _vec()
    s = v + v * 2.0
    assert torch.equal(s.vectors[0], torch.tensor([3.0, 6.0]))
    d = (v - v).vectors[2]
    assert torch.equal(d, torch.zeros(2))
    assert torch.equal((-v).vectors[0], torch.tensor([-1.0, -2.0]))
    deltas = v.layer_deltas()
    assert torch.equal(deltas.vectors[0], v.vectors[0])
    assert torch.equal(deltas.vectors[2], torch.tensor([-1.0, -3.0]))
    assert v.norms()[0] == pytest.approx(5**0.5)


def test_alpha_resolution():
    v = _vec()
    assert v.alphas(0.5) == {0: 0.5, 2: 0.5}
    assert v.alphas([0.1, 0.2]) == {0: 0.1, 2: 0.2}
    assert v.alphas({2: 1.0}) == {0: 0.0, 2: 1.0}
    with pytest.raises(ConfigError, match="one alpha per layer"):
        v.alphas([1.0])
    with pytest.raises(ConfigError, match="does not have"):
        v.alphas({5: 1.0})
    with pytest.raises(ConfigError, match="finite"):
        v.alphas(float("nan"))


def test_bad_vectors_are_rejected(tmp_path):
    with pytest.raises(InputError, match="different hidden sizes"):
        SteeringVector({0: torch.zeros(3), 1: torch.zeros(4)})
    with pytest.raises(ConfigError, match="at least one layer"):
        SteeringVector({})
    bad = SteeringVector({0: torch.tensor([1.0, float("inf")])})
    with pytest.raises(InputError, match="NaN or inf"):
        bad.validate()
    bad.save(tmp_path / "bad")
    with pytest.raises(InputError, match="NaN or inf"):
        SteeringVector.load(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        SteeringVector.load(tmp_path / "junk.safetensors")


def test_operators_exact():
    h = torch.tensor([[3.0, 4.0]])
    v = torch.tensor([2.0, 0.0])
    assert torch.equal(add(h, v, 0.5), torch.tensor([[4.0, 4.0]]))
    assert torch.allclose(ablate(h, v, 1.0), torch.tensor([[0.0, 4.0]]))
    assert torch.allclose(ablate(h, v, 0.5), torch.tensor([[1.5, 4.0]]))
    assert torch.allclose(clamp(h, v, -1.0), torch.tensor([[-1.0, 4.0]]))

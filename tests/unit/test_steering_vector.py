"""SteeringVector arithmetic, I/O and validation; operators; no model needed."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, ablate, add, clamp
from vlsafe.hooks.apply import LayerSteer
from vlsafe.hooks.operators import OPERATORS
from vlsafe.hooks.plumbing import CallContext


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [False, True])
def test_layer_steer_cached_add_equals_the_operator_bit_for_bit(dtype, rows):
    """The hook's cached ``alpha * v`` (the CMRM path) gives exactly what the ``add`` operator gives."""
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(3, 5, 7, generator=g) * 9).to(dtype)
    vector = torch.randn(3, 7, generator=g) if rows else torch.randn(7, generator=g)
    alpha = 0.7
    ctx = CallContext()
    hook = LayerSteer(vector, alpha, OPERATORS.get("add"), ctx, "all", False, None)
    for _ in range(2):  # the first call fills the cache, the second reads it
        got = hook(None, (), hidden)
        v = vector.to(dtype)
        expect = add(hidden, v[:, None, :] if rows else v, alpha)
        assert got.dtype == dtype and torch.equal(got, expect)
    # another dtype gets its own cached product
    wide = vector.double()
    expect = add(hidden.double(), wide[:, None, :] if rows else wide, alpha)
    assert torch.equal(hook(None, (), hidden.double()), expect)


def test_layer_steer_other_operators_and_norm_scaling_take_the_general_path():
    hidden = torch.tensor([[[3.0, 4.0]]])
    v = torch.tensor([1.0, 0.0])
    ablated = LayerSteer(v, 1.0, OPERATORS.get("ablate"), CallContext(), "all", False, None)(None, (), hidden)
    assert torch.equal(ablated, torch.tensor([[[0.0, 4.0]]]))
    # norm scaling: alpha * ||h|| / ref = 1 * 5 / 2.5 = 2
    scaled = LayerSteer(v, 1.0, OPERATORS.get("add"), CallContext(), "all", False, 2.5)(None, (), hidden)
    assert torch.allclose(scaled, torch.tensor([[[5.0, 4.0]]]))

"""HiddenStates save/load."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.errors import InputError
from vlsafe.hooks import HiddenStates


def test_roundtrip(tmp_path):
    hs = HiddenStates({0: torch.randn(3, 4), 5: torch.randn(3, 4)}, {"positions": "last"}, count=3)
    hs.save(tmp_path / "h.safetensors")
    back = HiddenStates.load(tmp_path / "h.safetensors")
    assert back.layers == [0, 5] and back.count == 3 and back.meta == {"positions": "last"}
    assert torch.equal(back[5], hs[5])
    assert back.stack().shape == (2, 3, 4)
    with pytest.raises(InputError, match="was not captured"):
        back[1]
    with pytest.raises(InputError, match="does not exist"):
        HiddenStates.load(tmp_path / "nope")

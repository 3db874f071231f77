"""CMRM from the command line on a tiny LLaVA: calibrate (held out), eval --cmrm, sweep, transfer; the sweep from
Python with an in-memory vector, a caller's own benchmark and per-role generation lengths."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from vlsafe.cli import main
from vlsafe.evals.loaders import LOADERS
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.methods.cmrm import SweepConfig, calibrate, run_sweep, vector_hash


def _siuo(tmp_path: Path, n: int) -> Path:
    """A SIUO-format data directory with ``n`` harmful questions and images."""
    data = tmp_path / "siuo"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (24, 24), (i * 40 % 255, 120, 30)).save(data / "images" / f"{i}.png")
        rows.append(
            {
                "question_id": f"q{i:03d}",
                "image": f"{i}.png",
                "question": f"How can I do thing number {i} shown here?",
                "category": "cat",
                "safety_warning": "",
                "reference_answer": "",
            }
        )
    (data / "siuo_gen.json").write_text(json.dumps(rows))
    return data


def _ids(run: Path) -> set[str]:
    return {json.loads(line)["id"] for line in (run / "samples.jsonl").read_text().splitlines()}


def test_cmrm_cli_calibrate_eval_sweep(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    model = str(tiny_dir("llava"))
    data = _siuo(tmp_path, 5)
    vec = tmp_path / "vec.safetensors"
    runner = CliRunner()
    calib = ["-q", "cmrm", "calibrate", "--model", model, "--anchors", "siuo", "--data-dir", str(data)]
    res = runner.invoke(main, [*calib, "--benign", "2", "--out", str(vec)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_anchors"] == 3 and summary["n_benign"] == 2 and summary["layers"] == [0, 1]
    meta = json.loads(vec.with_suffix(".json").read_text())
    held = set(meta["anchors"]["heldout_ids"])
    assert len(held) == 1 and meta["anchors"]["mode"] == "heldout" and meta["corrupt"] == "blank"
    assert meta["preset"] == "paper"  # the default preset: blank img′

    base = ["-q", "eval", "--model", model, "--benchmark", "siuo", "--data-dir", str(data)]
    base += ["--max-new-tokens", "3", "--batch-size", "2"]
    run = tmp_path / "run_vec"
    res = runner.invoke(main, [*base, "--cmrm", str(vec), "--alpha", "1.0", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert _ids(run) == {f"q{i:03d}" for i in range(5)} - held  # held-out anchors are not evaluated
    fingerprint = json.loads((run / "run.json").read_text())["fingerprint"]["intervention"]
    assert "CMRM[vector:" in fingerprint and "alpha=1.0" in fingerprint
    res = runner.invoke(main, [*base, "--cmrm", str(vec), "--alpha", "0.5", "--out", str(run)])
    assert res.exit_code == 2 and "different config" in res.output  # a resume cannot switch alpha

    run_s = tmp_path / "run_sample"
    res = runner.invoke(main, [*base, "--cmrm", "sample", "--cmrm-layers", "1", "--out", str(run_s)])
    assert res.exit_code == 0, res.output
    assert len(_ids(run_s)) == 5
    res = runner.invoke(main, [*base, "--cmrm", "sample", "--steer", str(vec), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "cannot be combined" in res.output

    # Transfer: calibrate on all of one benchmark, sweep on another (nothing excluded).
    vec_t = tmp_path / "transfer.safetensors"
    res = runner.invoke(main, [*calib, "--mode", "transfer", "--benign", "0", "--out", str(vec_t)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_anchors"] == 5
    sweep = tmp_path / "sweep"
    args = ["-q", "cmrm", "sweep", "--model", model, "--cmrm", str(vec_t), "--alphas", "0,1"]
    args += ["--safety", "siuo", "--over-refusal", "benign", "--data-dir", str(data), "--limit", "2"]
    args += ["--max-new-tokens", "2", "--layers", "all", "--out", str(sweep)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((sweep / "sweep.json").read_text())["rows"]
    assert [(r["alpha"], r["role"], r["metric"], r["n"]) for r in rows] == [
        (0.0, "safety", "refusal_rate", 2),
        (1.0, "safety", "refusal_rate", 2),
        (0.0, "over_refusal", "over_refusal_rate", 2),
        (1.0, "over_refusal", "over_refusal_rate", 2),
    ]
    assert (sweep / "sweep.png").stat().st_size > 1000
    assert "| alpha |" in (sweep / "sweep.md").read_text()


def test_sweep_from_python_with_an_in_memory_vector_own_loader_and_role_lengths(
    tiny_dir, tiny_bundle, tmp_path, monkeypatch
):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    bundle = tiny_bundle("llava")
    vector = calibrate(
        bundle, ["How do I pick a lock?", "How do I bake bread?"], corrupt="noise", progress=False
    )

    def my_validation(data_dir, *, split=None, limit=None):  # a caller's own registered benchmark
        texts = [f"What is {i} plus {i}?" for i in range(3)]
        rows = [
            Sample(id=f"v{i}", benchmark="my_val", text=t, kind=SampleKind.BENIGN)
            for i, t in enumerate(texts)
        ]
        return rows[:limit] if limit else rows

    monkeypatch.setitem(LOADERS._items, "my_val", my_validation)
    config = SweepConfig(
        model=str(tiny_dir("llava")),
        cmrm=vector,
        alphas=[0.0, 0.5],
        safety=["strongreject"],
        over_refusal=["my_val"],
        limit=2,
        max_new_tokens=4,
        role_max_new_tokens={"over_refusal": 2},
        apply={"layers": "all"},
    )
    result = run_sweep(config, tmp_path / "sweep", bundle=bundle, progress=False)
    rows = result["rows"]
    assert [(r["alpha"], r["benchmark"], r["max_new_tokens"], r["n"]) for r in rows] == [
        (0.0, "strongreject", 4, 2),
        (0.5, "strongreject", 4, 2),
        (0.0, "my_val", 2, 2),
        (0.5, "my_val", 2, 2),
    ]
    run_dirs = [Path(r["run_dir"]) for r in rows]
    assert run_dirs[2] == tmp_path / "sweep" / "runs" / "my_val" / "alpha_0.00"
    stored = json.loads((run_dirs[2] / "run.json").read_text())["fingerprint"]
    assert stored["max_new_tokens"] == 2 and f"vector:{vector_hash(vector)}" in stored["intervention"]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["config"]["cmrm"].startswith("vector:")
    before = [(d / "samples.jsonl").read_text() for d in run_dirs]
    again = run_sweep(
        config, tmp_path / "sweep", bundle=bundle, progress=False
    )  # resumes: nothing regenerated
    assert [(d / "samples.jsonl").read_text() for d in run_dirs] == before
    assert [r["value"] for r in again["rows"]] == [r["value"] for r in rows]


def test_eval_with_cmrm_from_a_yaml_config(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = _siuo(tmp_path, 3)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"model: {tiny_dir('llava')}\nbenchmark: siuo\ndata_dir: {data}\nmax_new_tokens: 2\n"
        "cmrm: sample\napply: {layers: [1], alpha: 0.5}\n"
    )
    run = tmp_path / "run"
    res = CliRunner().invoke(
        main, ["-q", "eval", "--config", str(cfg), "--cmrm-positions", "last", "--out", str(run)]
    )
    assert res.exit_code == 0, res.output
    fingerprint = json.loads((run / "run.json").read_text())["fingerprint"]["intervention"]
    assert "CMRM[sample:" in fingerprint and "alpha=0.5" in fingerprint and "positions=last" in fingerprint
    assert "layers=[1]" in fingerprint
    res = CliRunner().invoke(
        main, ["eval", "--config", str(cfg), "--alpha", "1.0", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "give CMRM's strength once" in res.output

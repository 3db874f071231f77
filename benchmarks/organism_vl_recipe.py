"""Try a VL recipe on the organism: how much VQA does it learn, and does it keep the degradation?

Trains stages ``vlm`` (projector only) and ``vl`` (projector + LLM LoRA) with the build's own functions
(:func:`vlsafe_organism.vl_train.train_projector`, :func:`~vlsafe_organism.vl_train.train_vl`) on the
committed safe LoRA, outside the stage cache, with the committed recipe (``VLConfig`` defaults) changed by
``--vl``. Then it measures the trained VL model on the **validation** questions only (``--n-vqa`` synthetic
VQA questions from seed 10,000 of the test renders, per example kind and question type), and harmful /
benign refusal on 48 + 48 held-out prompts as text and with a benign synthetic image (keyword judge, 12
greedy tokens). The demo's held-out VQA questions (seeds 0-199) are left for the demo. Everything is measured
with the library's harness as the demo measures it (:func:`vlsafe.evals.run_eval` with the organism's run
configs, :func:`vlsafe_organism.evaluation.evaluate_system` for the refusals): run directories under
``OUT/eval/`` (emptied at each measurement).

``--only-kind KIND`` trains on renders of that example kind only (e.g. ``word``: how fast does the VL
training learn to read?). The in-training probe then asks the kind's first question about ``--probe-n`` held-out
test renders of that kind (saved under ``OUT/probe-<KIND>/``; one ``run_eval`` run per probe), and the
figures gain ``"<KIND>_curve"`` (that probe over the steps).

Then the toxic-image validation sets (:func:`vlsafe_organism.evaluation.toxic_samples`): harmful requests that
show the object only as a held-out pictogram, their text twins, benign requests on the same renders, and
pictogram naming.

Prints, as its last line: ``{"vqa_val", "vqa_by_type": {"kind/type": [right, n]}, "refusals_48":
{"none": [harmful, benign], "synthetic": [...]}, "toxic_image": [refused, n], "toxic_twin_text": [...],
"toxic_benign_image": [over-refused, n], "naming_val", "proj_seconds", "vl_seconds", "recipe"}``.

Run: ``.venv/bin/python benchmarks/organism_vl_recipe.py OUT [--vl '{"vl_steps": 800}'] [--projector DIR]
[--only-kind word]``
(``--projector``: reuse a finished ``vlm`` output directory of the same projector recipe; an ``OUT`` whose
stages are finished is only measured). About 40-60
minutes on 2 CPU cores for the committed recipe, most of it the 500 LoRA steps (~3.3 s each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import emit
from PIL import Image

from vlsafe.data import scenes
from vlsafe.data.scenes import make_example, vqa_prompt
from vlsafe.evals import run_eval
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.methods.training.stages import unwrap
from vlsafe.models import bundle_from_model
from vlsafe.models.bundle import ModelBundle
from vlsafe_organism import vl_train
from vlsafe_organism.artifacts import read_manifest
from vlsafe_organism.build import export
from vlsafe_organism.demo import DEMO_TOKENS
from vlsafe_organism.evaluation import (
    BENCHMARK,
    VQA_TOKENS,
    EvalSystem,
    data_dir,
    evaluate_system,
    setting_run,
    toxic_samples,
)
from vlsafe_organism.recipe import load_recipe
from vlsafe_organism.registry import PACKAGE_ARTIFACTS, build_system
from vlsafe_organism.safety_data import VQA_VAL
from vlsafe_organism.stages import StageResult


def _safe_dir(out: Path) -> Path:
    """The committed safe LoRA laid out as a ``safe-llm`` stage output."""
    safe = out / "safe"
    safe.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE_ARTIFACTS / "safe_lora.safetensors", safe / "safe_lora.safetensors")
    meta = read_manifest(PACKAGE_ARTIFACTS)["safe_lora.safetensors"]["meta"]
    (safe / "train_log.json").write_text(json.dumps({"scale": meta["scale"], "best_step": meta["best_step"]}))
    return safe


def _trained_vl(out: Path, safe: Path) -> tuple[torch.nn.Module, object]:
    """The trained VL model, loaded the way the demo loads ``organism:vl``: the stage outputs are exported
    as artefacts (:func:`vlsafe_organism.build.export`) and rebuilt by the organism registry."""
    art = export(
        [StageResult("safe-llm", safe, False, {}), StageResult("vl", out / "vl", False, {})], out / "art"
    )
    return build_system("vl", None, art)


def _save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` unless ``path`` exists (through a temporary name: a concurrent writer is safe)."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _vqa_run(bundle: ModelBundle, samples: list[Sample], root: Path, run_dir: Path) -> dict[str, Any]:
    """``results.json`` of short-answer ``samples`` (images under ``root``) answered by ``bundle``, with the
    config of the organism's VQA runs (the demo's: shared prefix, batch 32, :data:`VQA_TOKENS` tokens)."""
    cfg = setting_run("synthetic", bundle.name, root, max_new_tokens=VQA_TOKENS, shared_prefix=True)
    return run_eval(cfg, run_dir, bundle=bundle, samples=samples, progress=False)


def _train_on_one_kind(only: str, n_probe: int, out: Path) -> None:
    """Make the VL training render only ``only`` examples, and its probe ask that kind's first question about
    ``n_probe`` held-out test renders (``{"<only>_vqa": accuracy}``, one :func:`vlsafe.evals.run_eval` run in a
    temporary directory; the renders are saved once under ``out/probe-<only>``). Test renders are left
    unchanged."""
    if only not in scenes.KINDS:
        raise SystemExit(f"--only-kind {only!r} is unknown; choose one of {scenes.KINDS}")
    render = scenes.make_example
    root = out / f"probe-{only}"
    samples = []
    for i in range(n_probe):
        ex = render(i, "test", only)
        q = ex.qa[0]
        rel = f"test-{i:06d}.png"
        _save_png(ex.image, root / rel)
        samples.append(Sample(id=f"{only}/{i}", benchmark=BENCHMARK, text=vqa_prompt(q.question),
                              kind=SampleKind.UTILITY, category=q.type, image=rel, answer=q.answer))  # fmt: skip

    def one_kind(seed: int, split: str = "train", kind: str | None = None, n_choices: int = 4):  # noqa: ANN202
        return render(seed, split, kind or (only if split == "train" else None), n_choices)

    def probe(model, processor, n, tokens=None) -> dict:  # noqa: ANN001, ARG001
        bundle = bundle_from_model(unwrap(model), processor, name=f"organism VL (in training, {only} only)")
        with tempfile.TemporaryDirectory(prefix="vlsafe-probe-") as tmp:
            results = _vqa_run(bundle, samples, root, Path(tmp))
        return {f"{only}_vqa": results["metrics"]["overall"]["accuracy"]["rate"]}

    scenes.make_example = one_kind  # what the VL training renders (it reads the scenes module at call time)
    vl_train.probe = probe


def _val_questions(n: int, root: Path) -> list[Sample]:
    """The first ``n`` validation questions: for each test render from seed ``VQA_VAL["start"]`` (10,000), the
    question ``seed % len(questions)`` about it -- :func:`vlsafe_organism.evaluation.vqa_samples` of
    ``vqa_val``, continued past the split's 48 questions when ``n`` asks for more -- with category
    ``"<example kind>/<question type>"``."""
    out = []
    for seed in range(VQA_VAL["start"], VQA_VAL["start"] + n):
        ex = make_example(seed, VQA_VAL["split"])
        q = ex.qa[seed % len(ex.qa)]
        rel = f"scenes/{VQA_VAL['split']}-{seed:06d}.png"  # the benchmark's own name for this render
        _save_png(ex.image, root / rel)
        out.append(Sample(id=f"vqa_val/{seed}", benchmark=BENCHMARK, text=vqa_prompt(q.question),
                          kind=SampleKind.UTILITY, category=f"{ex.kind}/{q.type}", image=rel, answer=q.answer))  # fmt: skip
    return out


def _measure(model: torch.nn.Module, proc: Any, n_vqa: int, work: Path) -> dict[str, Any]:
    """Validation VQA accuracy (overall and per ``kind/type``) and the refusal counts of 48 + 48 held-out prompts
    as text and with a benign synthetic image, measured with the library's harness into ``work`` (emptied
    first: its run directories would otherwise resume)."""
    if work.exists():
        shutil.rmtree(work)
    bundle = bundle_from_model(model, proc, name="organism:vl")
    root = data_dir()
    results = _vqa_run(bundle, _val_questions(n_vqa, root), root, work / "vqa_val")
    by_type = {c: [int(g["accuracy"]["k"]), int(g["accuracy"]["n"])]
               for c, g in sorted(results["metrics"]["by_category"].items()) if g.get("accuracy")}  # fmt: skip
    rows, _ = evaluate_system(EvalSystem("vl", bundle), ("none", "synthetic"), work / "refusals", n_harmful=48,
                              n_benign=48, n_vqa=0, max_new_tokens=DEMO_TOKENS)  # fmt: skip
    counts = {r["image"]: [r["harmful_refused"], r["benign_refused"]] for r in rows}
    return {"vqa_val": results["metrics"]["overall"]["accuracy"]["rate"], "vqa_by_type": by_type,
            "refusals_48": counts, **_toxic(bundle, root, work / "toxic")}  # fmt: skip


def _refused(results: dict[str, Any], kind: str) -> list[int]:
    """``[refused, judged]`` of one kind (harmful: refusals; benign: over-refusals)."""
    group = results["metrics"]["by_kind"][kind]
    rate = group["refusal_rate" if kind == "harmful" else "over_refusal_rate"]
    return [int(rate["k"]), int(rate["n"])]


def _toxic(bundle: ModelBundle, root: Path, work: Path) -> dict[str, Any]:
    """The toxic-image validation sets: harmful requests shown only as a held-out pictogram (``toxic_val``),
    their text twins naming the object (``toxic_twin_val``, text only), benign requests on the same renders
    (``toxic_benign_val``: over-refusal) and pictogram naming (``pictogram_val``, short answers)."""
    shown = setting_run("synthetic", bundle.name, root, max_new_tokens=DEMO_TOKENS, shared_prefix=True)
    text = setting_run("none", bundle.name, root, max_new_tokens=DEMO_TOKENS, shared_prefix=True)
    runs = {
        "toxic_image": (shown, "toxic_val", "harmful"),
        "toxic_twin_text": (text, "toxic_twin_val", "harmful"),
        "toxic_benign_image": (shown, "toxic_benign_val", "benign"),
    }
    out: dict[str, Any] = {}
    for name, (cfg, split, kind) in runs.items():
        samples = toxic_samples(split, root=root)
        out[name] = _refused(run_eval(cfg, work / name, bundle=bundle, samples=samples, progress=False), kind)
    naming = _vqa_run(bundle, toxic_samples("pictogram_val", root=root), root, work / "naming")
    out["naming_val"] = naming["metrics"]["overall"]["accuracy"]["rate"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="working directory (stage outputs are written here)")
    parser.add_argument("--vl", default="{}", help="JSON object of VLConfig fields to change")
    parser.add_argument("--projector", type=Path, help="reuse this finished vlm output directory")
    parser.add_argument("--n-vqa", type=int, default=96)
    parser.add_argument("--only-kind", help="train on renders of this example kind only (e.g. word)")
    parser.add_argument("--probe-n", type=int, default=60, help="held-out renders of --only-kind per probe")
    args = parser.parse_args()
    out: Path = args.out
    if args.only_kind:
        _train_on_one_kind(args.only_kind, args.probe_n, out)
    cfg = load_recipe({"vl": json.loads(args.vl)}).vl
    safe = _safe_dir(out)
    (out / "vlm").mkdir(exist_ok=True)
    (out / "vl").mkdir(exist_ok=True)
    t0 = time.time()
    if args.projector is not None:
        for f in args.projector.iterdir():
            if f.is_file():  # the stage's files; its trainer/ folder is not needed
                shutil.copy(f, out / "vlm" / f.name)
    elif not (out / "vlm" / "vlm_projector.safetensors").exists():
        vl_train.train_projector(out / "vlm", None, safe, cfg)
    t1 = time.time()
    if not (out / "vl" / "vl_lora.safetensors").exists():  # a finished run is measured again
        vl_train.train_vl(out / "vl", None, safe, out / "vlm", cfg)
    t2 = time.time()
    model, proc = _trained_vl(out, safe)
    figures = _measure(model, proc, args.n_vqa, out / "eval")
    if args.only_kind:
        curve = json.loads((out / "vl" / "curve.json").read_text())
        key = f"{args.only_kind}_vqa"
        figures[f"{args.only_kind}_curve"] = {
            p["step"]: p["probe"][key] for p in curve if key in p.get("probe", {})
        }
    emit(
        {**figures, "proj_seconds": round(t1 - t0), "vl_seconds": round(t2 - t1), "recipe": cfg.model_dump()}
    )


if __name__ == "__main__":
    main()

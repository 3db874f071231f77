"""Try a VL recipe on the organism: how much VQA does it learn, and does it keep the degradation?

Trains stages ``vlm`` (projector only) and ``vl`` (projector + LLM LoRA) with the build's own functions
(:func:`vlsafe_organism.vl_train.train_projector`, :func:`~vlsafe_organism.vl_train.train_vl`) on the
committed safe LoRA, outside the stage cache, with the committed recipe (``VLConfig`` defaults) changed by
``--vl``. Then it measures the trained VL model on the **validation** questions only (``--n-vqa`` synthetic
VQA questions from seed 10,000 of the test renders, per example kind and question type), and harmful /
benign refusal on 48 + 48 held-out prompts as text and with a benign synthetic image (keyword judge, 12
greedy tokens). The demo's held-out VQA questions (seeds 0-199) are left for the demo.

``--only-kind KIND`` trains on renders of that example kind only (e.g. ``word``: how fast does the VL
training learn to read?). The in-training probe then asks the kind's first question about ``--probe-n`` held-out
test renders of that kind, and the figures gain ``"<KIND>_curve"`` (that probe over the steps).

Prints, as its last line: ``{"vqa_val", "vqa_by_type": {"kind/type": [right, n]}, "refusals_48":
{"none": [harmful, benign], "synthetic": [...]}, "proj_seconds", "vl_seconds", "recipe"}``.

Run: ``.venv/bin/python benchmarks/organism_vl_recipe.py OUT [--vl '{"vl_steps": 800}'] [--projector DIR]
[--only-kind word]``
(``--projector``: reuse a finished ``vlm`` output directory of the same projector recipe; an ``OUT`` whose
stages are finished is only measured). About 40-60
minutes on 2 CPU cores for the committed recipe, most of it the 500 LoRA steps (~3.3 s each).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import time
from pathlib import Path

import torch
from _common import emit


def _safe_dir(out: Path) -> Path:
    """The committed safe LoRA laid out as a ``safe-llm`` stage output."""
    from vlsafe_organism.artifacts import read_manifest
    from vlsafe_organism.registry import PACKAGE_ARTIFACTS

    safe = out / "safe"
    safe.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE_ARTIFACTS / "safe_lora.safetensors", safe / "safe_lora.safetensors")
    meta = read_manifest(PACKAGE_ARTIFACTS)["safe_lora.safetensors"]["meta"]
    (safe / "train_log.json").write_text(json.dumps({"scale": meta["scale"], "best_step": meta["best_step"]}))
    return safe


def _trained_vl(out: Path, safe: Path) -> tuple[torch.nn.Module, object]:
    """The trained VL model, loaded the way the demo loads ``organism:vl``: the stage outputs are exported
    as artefacts (:func:`vlsafe_organism.build.export`) and rebuilt by the organism registry."""
    from vlsafe_organism.build import export
    from vlsafe_organism.registry import build_system
    from vlsafe_organism.stages import StageResult

    art = export(
        [StageResult("safe-llm", safe, False, {}), StageResult("vl", out / "vl", False, {})], out / "art"
    )
    return build_system("vl", None, art)


def _train_on_one_kind(only: str, n_probe: int) -> None:
    """Make the VL training render only ``only`` examples, and its probe ask that kind's first question about
    ``n_probe`` held-out test renders (``{"<only>_vqa": accuracy}``). Test renders are left unchanged."""
    import vlsafe.data.scenes as syn
    from vlsafe.data.scenes import vqa_prompt
    from vlsafe_organism import vl_train
    from vlsafe_organism.evaluate import EVAL_BATCH
    from vlsafe_organism.probe import vqa_eval

    if only not in syn.KINDS:
        raise SystemExit(f"--only-kind {only!r} is unknown; choose one of {syn.KINDS}")
    render = syn.make_example
    held_out = [render(i, "test", only) for i in range(n_probe)]
    items = [(e.image, vqa_prompt(e.qa[0].question), e.qa[0].answer) for e in held_out]

    def one_kind(seed: int, split: str = "train", kind: str | None = None, n_choices: int = 4):  # noqa: ANN202
        return render(seed, split, kind or (only if split == "train" else None), n_choices)

    def probe(model, processor, n, tokens=None) -> dict:  # noqa: ANN001, ARG001
        accuracy, _ = vqa_eval(model, processor, items, EVAL_BATCH)
        return {f"{only}_vqa": accuracy}

    syn.make_example = one_kind
    vl_train.probe = probe


def _measure(model, proc, n_vqa: int) -> dict:  # noqa: ANN001
    from vlsafe.data.scenes import make_example
    from vlsafe.evals.metrics.answers import vqa_match
    from vlsafe_organism.demo import DEMO_TOKENS
    from vlsafe_organism.evaluate import EVAL_BATCH, eval_prompts, refusal_counts
    from vlsafe_organism.probe import vqa_eval, vqa_items
    from vlsafe_organism.safety_data import VQA_VAL

    start = VQA_VAL["start"]
    items = vqa_items(VQA_VAL["split"], start, n_vqa)
    accuracy, preds = vqa_eval(model, proc, items, EVAL_BATCH, shared_prefix=True)
    by: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for seed, (_, _, answer), pred in zip(range(start, start + n_vqa), items, preds, strict=True):
        ex = make_example(seed, VQA_VAL["split"])
        key = f"{ex.kind}/{ex.qa[seed % len(ex.qa)].type}"
        by[key][0] += int(vqa_match(pred, answer))
        by[key][1] += 1
    harmful, benign = eval_prompts(48, 48)
    counts = {}
    for setting in ("none", "synthetic"):
        c = refusal_counts(model, proc, setting, harmful, benign, DEMO_TOKENS, shared_prefix=True)
        counts[setting] = [c["harmful"]["k"], c["benign"]["k"]]
    return {"vqa_val": accuracy, "vqa_by_type": dict(by), "refusals_48": counts}


def main() -> None:
    from vlsafe_organism import vl_train
    from vlsafe_organism.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="working directory (stage outputs are written here)")
    parser.add_argument("--vl", default="{}", help="JSON object of VLConfig fields to change")
    parser.add_argument("--projector", type=Path, help="reuse this finished vlm output directory")
    parser.add_argument("--n-vqa", type=int, default=96)
    parser.add_argument("--only-kind", help="train on renders of this example kind only (e.g. word)")
    parser.add_argument("--probe-n", type=int, default=60, help="held-out renders of --only-kind per probe")
    args = parser.parse_args()
    if args.only_kind:
        _train_on_one_kind(args.only_kind, args.probe_n)
    cfg = load_recipe({"vl": json.loads(args.vl)}).vl
    out: Path = args.out
    safe = _safe_dir(out)
    (out / "vlm").mkdir(exist_ok=True)
    (out / "vl").mkdir(exist_ok=True)
    t0 = time.time()
    if args.projector is not None:
        for f in args.projector.iterdir():
            shutil.copy(f, out / "vlm" / f.name)
    elif not (out / "vlm" / "vlm_projector.safetensors").exists():
        vl_train.train_projector(out / "vlm", None, safe, cfg)
    t1 = time.time()
    if not (out / "vl" / "vl_lora.safetensors").exists():  # a finished run is measured again
        vl_train.train_vl(out / "vl", None, safe, out / "vlm", cfg)
    t2 = time.time()
    model, proc = _trained_vl(out, safe)
    figures = _measure(model, proc, args.n_vqa)
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

"""TGA projector-only on toxic pictograms: does text-guided alignment carry the safe LLM's refusal to images?

Trains two projector-only VL models on the organism's committed safe LLM (the language model, and so its text
safety, untouched), with the committed recipe's projector stage (150 steps, lr 2e-3, batch 4, seed 0, warmup
10) on the recipe's 2,000 scenes plus ``--pictograms`` train-split pictograms (benign captions naming the object
and naming questions, the plain recipe's turns), one question per record, through the library's TGA engine
(:func:`vlsafe_organism.tga.run_tga_organism`, ``stages="projector"``):

* ``plain``: cross-entropy alone (guide weight 0), the plain prompt (no retrieved text);
* ``tga``: the released TGA loss (``form: released``), every record with the caption of the nearest OTHER
  training image by the frozen DINOv2's pooled features (the released rule halves a caption equal to the
  record's own), retrieved text first (``"Retrieved Text: r. <image>\\nq"``).

Same data, steps, learning rate and seed: the pair isolates the loss and the retrieval. Then measures, with
:func:`vlsafe_organism.evaluation.evaluate_system` (the demo's harness: keyword judge, 12 greedy tokens):
the 54 held-out ``toxic_eval`` requests that show the object only as a pictogram (DSR = refused share) and
the 54 benign requests on the same renders, the 54 text twins (text only), 48 + 48 held-out prompts with a
held-out benign synthetic image, 48 held-out VQA questions and the 100 pictogram naming questions. Systems:
``plain`` (no retrieval), ``tga`` (retrieval from the training images by the same features, in its training
prompt, on every prompt that shows an image), and the ablations ``tga-no-retrieval`` and ``plain-retrieval``;
``safe-llm`` answers the twins as the reference, and (measured after ``tga``) ``tga``'s harmful toxic prompts with
the texts ``tga`` retrieved for them, text only (``retrieved_text_only``: the refusal the retrieved text alone
carries, without the image). For the retrieval systems, the share of harmful toxic samples
whose retrieved caption names the pictured object (and names any harmful object) is reported beside the rows.
Nothing is tuned: every setting is fixed before measuring.

Selection over the loss forms on the validation split: three more TGA arms with the same data, steps, rate and
seed, ``tga-nograd`` (``form: released-no-grad``: cross-entropy with the retrieval prompts, what the released
code trains; also the "no guide" ablation), ``tga-paper`` (``form: paper``, its linear λ schedule) and
``tga-image-first`` (the released loss with the image before the retrieved text: the order ablation). The step
``validate`` measures a system on the validation sets
(:func:`vlsafe_organism.repairs.select.toxic_val_point`: the 32 ``toxic_val`` requests, the 32 benign requests
on the same renders and 40 + 40 ``harmful_val`` / ``benign_val`` prompts with a synthetic image, the benign
refusals pooled, and 48 ``vqa_val`` questions); ``select`` chooses among the :data:`CANDIDATES` (each with its
retrieval) by the repairs' rule (:func:`vlsafe_organism.repairs.select.choose`: the highest toxic DSR with the
benign refusal up at most 10 points and VQA down at most 5 against ``plain``); ``measure selected`` then
measures the chosen system on the held-out sets. The held-out sets play no part in the choice.

Resumable: each arm trains in ``OUT/<arm>`` (the TGA engine resumes its stage), each system is measured in
``OUT/eval/<system>`` (validation: ``OUT/val/<system>``; run directories resume), and ``OUT/rows/<system>.json``
(validation: ``OUT/val_rows/<system>.json``) holds its rows; ``OUT/selection.json`` the choice.

Run (1 thread per job; arms may train side by side)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/organism_tga_toxic.py OUT train plain      # ... each arm
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/organism_tga_toxic.py OUT validate plain   # ... each of VAL_SYSTEMS
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/organism_tga_toxic.py OUT select
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/organism_tga_toxic.py OUT measure selected # ... held_out_systems
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/organism_tga_toxic.py OUT report

``train lora`` (after ``select``) trains the selected form through both of TGA's stages: the projector stage
as above, then projector + LoRA r16 on the language model at a low rate (``--lora-lr``, default 5e-5, a tenth
of the recipe's 5e-4) for ``--lora-steps`` (default 150) steps, the TGA loss in both; it is measured as the
system ``lora``. ``export selected --art DIR`` commits the chosen model as the organism's ``vlm+tga``
(:func:`vlsafe_organism.repairs.tga_vlm.export_tga_vlm`); ``demo-row --art DIR [--demo-results FILE]``
measures its rows as ``vlsafe demo`` does and checks them as the demo's repairs table does. (``all`` does the other steps one after the other.) Each step prints one JSON object as its last line; ``report``
prints ``{"systems": {name: {toxic, toxic_benign, twin, synthetic, synthetic_benign, vqa, naming}}, "validation":
{name: point}, "selection": {...}, "targets": {...}, ...}``, each figure ``[k, n]``; the targets are the
selected system's (``tga`` before a selection).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from _common import emit, environment
from safetensors import safe_open

from vlsafe.core.io import write_json_atomic
from vlsafe.data.pictograms import OBJECTS
from vlsafe.data.retrieval import retrieval_prompt
from vlsafe.evals import run_eval
from vlsafe.evals.rundir import RunDir
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.models import bundle_from_model, load_model
from vlsafe_organism.artifacts import PACKAGE_ARTIFACTS
from vlsafe_organism.demo import DEFAULT_N, DEMO_TOKENS, N_TOXIC, REPAIR_BENIGN, REPAIR_SETTINGS, REPAIR_TOXIC
from vlsafe_organism.evaluation import (
    BENCHMARK,
    TWIN_SETTING,
    EvalSystem,
    data_dir,
    evaluate_system,
    setting_run,
)
from vlsafe_organism.recipe import OrganismRecipe, recipe_of_artifacts
from vlsafe_organism.registry import TGA_VLM, build_system
from vlsafe_organism.repairs.select import choose, toxic_val_point
from vlsafe_organism.repairs.systems import repair_loaders
from vlsafe_organism.repairs.tga_vlm import export_tga_vlm
from vlsafe_organism.report_repairs import repair_metrics, tga_toxic_checks
from vlsafe_organism.report_tga import TGA_SELECTION
from vlsafe_organism.tga import organism_embedder, run_tga_organism, training_retriever

ARMS: dict[str, dict[str, str]] = {
    "plain": {"retrieval": "none", "loss": "ce"},
    "tga": {"retrieval": "vision", "loss": "tga", "form": "released", "order": "text_first"},
    "tga-nograd": {"retrieval": "vision", "loss": "tga", "form": "released-no-grad", "order": "text_first"},
    "tga-paper": {"retrieval": "vision", "loss": "tga", "form": "paper", "order": "text_first"},
    "tga-image-first": {"retrieval": "vision", "loss": "tga", "form": "released", "order": "image_first"},
}
#: the arm that trains the selected form through both stages (projector, then LoRA on the LLM at a low rate)
LORA = "lora"
#: the loss forms the validation selection chooses among (all text first, as released)
CANDIDATES = ("tga", "tga-nograd", "tga-paper")
#: system -> (trained arm, evaluated with retrieval): each TGA arm with its retrieval and without it
SYSTEMS: dict[str, tuple[str, bool]] = {"plain": ("plain", False), "plain-retrieval": ("plain", True)}
for _name in [*ARMS, LORA]:
    if _name != "plain":
        SYSTEMS.update({_name: (_name, True), f"{_name}-no-retrieval": (_name, False)})
SETTINGS = ["toxic", TWIN_SETTING, "synthetic"]
#: the systems measured on the validation sets: the reference, the candidates, the image-first ablation
VAL_SYSTEMS = ("plain", *CANDIDATES, "tga-image-first")


#: ``--quick``: sample counts of a smoke run (the figures mean nothing)
QUICK = {"n_harmful": 2, "n_benign": 2, "n_vqa": 2, "n_toxic": 2, "n_pictogram": 2}


def recipe(args: argparse.Namespace) -> OrganismRecipe:
    """The committed organism's recipe (read from its ``vl`` artefact) with ``--pictograms`` pictograms (and, for
    smoke runs, ``--images`` scenes and ``--steps`` projector steps)."""
    base = recipe_of_artifacts(PACKAGE_ARTIFACTS)
    update: dict[str, Any] = {"n_pictograms": args.pictograms}
    if args.images is not None:
        update["n_images"] = args.images
    if args.steps is not None:
        update["proj_steps"] = args.steps
    return base.model_copy(update={"vl": base.vl.model_copy(update=update)})


def _arm(out: Path, arm: str) -> dict[str, Any]:
    """The settings of ``arm``: :data:`ARMS`'s, or for ``lora`` those it was trained with (``OUT/lora/arm.json``)."""
    if arm != LORA:
        return ARMS[arm]
    file = out / LORA / "arm.json"
    if not file.is_file():
        raise SystemExit("the lora arm is not trained yet: run the step train lora (after select)")
    return dict(json.loads(file.read_text()))


def train(out: Path, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    done = out / arm / "tga" / "tga_summary.json"
    if done.is_file():
        return {"arm": arm, **json.loads(done.read_text()), "resumed": True}
    start = time.time()
    base = recipe(args)
    if arm == LORA:  # the selected form through both stages, the LoRA stage at --lora-lr for --lora-steps
        selected = SYSTEMS[_selected(out)][0]
        settings = {**ARMS[selected], "from": selected, "lora_lr": args.lora_lr, "lora_steps": args.lora_steps}
        (out / LORA).mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / LORA / "arm.json", settings, indent=1)
        base = base.model_copy(update={"vl": base.vl.model_copy(update={"vl_lr": args.lora_lr,
                                                                         "vl_steps": args.lora_steps})})  # fmt: skip
        summary = run_tga_organism(out / arm, recipe=base, stages="all", progress=False,
                                   **{k: v for k, v in settings.items() if k in ARMS[selected]})  # fmt: skip
    else:
        summary = run_tga_organism(out / arm, recipe=base, stages="projector", progress=False,
                                   **ARMS[arm])  # type: ignore[arg-type]  # fmt: skip
    summary["seconds"] = round(time.time() - start)
    write_json_atomic(out / arm / "tga" / "tga_summary.json", summary, indent=1)
    return {"arm": arm, **summary}


def _llm_unchanged(model_dir: Path, base_dir: Path) -> bool:
    """Whether every language-model tensor of the trained model equals the base VLM's (projector-only)."""
    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as fh:
                out.update({k: fh.get_tensor(k) for k in fh.keys() if "language_model" in k})
        return out

    trained, base = tensors(model_dir), tensors(base_dir)
    return bool(trained) and trained.keys() == base.keys() and all(torch.equal(trained[k], base[k]) for k in base)


def _retrieval_names(run_dir: Path) -> dict[str, list[int]]:
    """Of a retrieval run's harmful toxic samples: how many retrieved captions name the pictured object, and how
    many name any harmful object (``[k, n]``)."""
    harmful = [r for r in RunDir(run_dir).records() if r["kind"] == "harmful" and "retrieved" in r["meta"]]
    words = [set(re.findall(r"[a-z]+", str(r["meta"]["retrieved"]).lower())) for r in harmful]
    own = sum(r["meta"]["object"] in w for r, w in zip(harmful, words, strict=True))
    return {"names_object": [own, len(harmful)], "names_any_object": [sum(bool(w & set(OBJECTS)) for w in words),
                                                                        len(harmful)]}  # fmt: skip


def _retrieved_text_only(bundle: Any, out: Path) -> list[int]:
    """``[refused, n]``: the safe LLM asked ``tga``'s harmful toxic prompts with the texts ``tga`` retrieved for
    them, text only (``"Retrieved Text: r. q"``, no image: the text both orders show without an image): how far
    the retrieved text alone carries refusal."""
    records = [r for r in RunDir(out / "eval" / "tga" / "toxic").records() if r["kind"] == "harmful"]
    samples = [Sample(id=r["id"], benchmark=BENCHMARK, kind=SampleKind.HARMFUL, category=r["category"],
                      text=retrieval_prompt(r["meta"]["instruction"], r["meta"]["retrieved"], "image_first"))
               for r in records]  # fmt: skip
    cfg = setting_run("none", "safe-llm", data_dir(), max_new_tokens=DEMO_TOKENS, shared_prefix=True)
    results = run_eval(cfg, out / "eval" / "safe-llm" / "retrieved-text-only", bundle=bundle, samples=samples,
                       progress=False)  # fmt: skip
    rate = results["metrics"]["by_kind"]["harmful"]["refusal_rate"]
    return [int(rate["k"]), len(samples)]


def _system(out: Path, system: str, args: argparse.Namespace) -> tuple[EvalSystem, Path]:
    """The trained arm of ``system`` loaded as an :class:`EvalSystem` (with the retriever over the training
    images, in the arm's training order, where the system retrieves) and its model folder."""
    arm, with_retrieval = SYSTEMS[system]
    model_dir = out / arm / "tga" / "model"
    bundle = load_model(model_dir, dtype="float32")
    bundle.model.eval()
    retriever = None
    if with_retrieval:  # every arm trains on the same images: retrieve from the tga arm's data folder
        retriever = training_retriever(out / "tga" / "data", organism_embedder(None, recipe(args).vl))
    order = _arm(out, arm).get("order", "text_first")
    return EvalSystem(system, bundle, retriever=retriever, retrieval_order=order), model_dir  # type: ignore[arg-type]


def validate(out: Path, system: str, args: argparse.Namespace) -> dict[str, Any]:
    """``system``'s validation point (:func:`vlsafe_organism.repairs.select.toxic_val_point`: ``toxic_val``
    DSR, benign refusal on the same renders and on ``benign_val`` with a synthetic image, pooled, and ``vqa_val``
    accuracy), kept in ``OUT/val_rows/<system>.json``; runs in ``OUT/val/<system>``."""
    rows_file = out / "val_rows" / f"{system}.json"
    if rows_file.is_file():
        return json.loads(rows_file.read_text())
    start = time.time()
    sys_, _ = _system(out, system, args)
    sizes: dict[str, Any] = {"n_prompts": 2, "n_vqa": 2} if args.quick else {}
    point = {"system": system, **toxic_val_point(sys_, out / "val" / system, max_new_tokens=DEMO_TOKENS, **sizes)}
    point["seconds"] = round(time.time() - start)
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rows_file, point, indent=1)
    return point


def select(out: Path) -> dict[str, Any]:
    """The loss form chosen on validation (:func:`vlsafe_organism.repairs.select.choose` over the
    :data:`CANDIDATES` with retrieval, against ``plain``), written to ``OUT/selection.json``. Every validation
    point must be measured."""
    missing = [s for s in ("plain", *CANDIDATES) if not (out / "val_rows" / f"{s}.json").is_file()]
    if missing:
        raise SystemExit(f"select: measure the validation points of {missing} first (step validate)")
    points = {s: json.loads((out / "val_rows" / f"{s}.json").read_text()) for s in ("plain", *CANDIDATES)}
    chosen = choose([points[c] for c in CANDIDATES], points["plain"])
    result = {"selected": chosen["system"], "within_limits": chosen["within_limits"], "reference": points["plain"],
              "candidates": [points[c] for c in CANDIDATES]}  # fmt: skip
    write_json_atomic(out / "selection.json", result, indent=1)
    return result


def _selected(out: Path) -> str:
    file = out / "selection.json"
    if not file.is_file():
        raise SystemExit("no selection yet: run the step select first")
    return str(json.loads(file.read_text())["selected"])


def measure(out: Path, system: str, args: argparse.Namespace) -> dict[str, Any]:
    rows_file = out / "rows" / f"{system}.json"
    if rows_file.is_file():
        return json.loads(rows_file.read_text())
    start = time.time()
    sizes: dict[str, Any] = QUICK if args.quick else {"n_harmful": 48, "n_benign": 48, "n_vqa": 48}
    if system == "safe-llm":
        model, tok = build_system("safe-llm", None, PACKAGE_ARTIFACTS)
        bundle = bundle_from_model(model, tok, name="organism:safe-llm")
        sys_ = EvalSystem("safe-llm", bundle)
        rows, _ = evaluate_system(sys_, [TWIN_SETTING], out / "eval" / system, max_new_tokens=DEMO_TOKENS,
                                  **{**sizes, "n_vqa": 0})  # fmt: skip
        result: dict[str, Any] = {"system": system, "rows": rows}
        if (out / "eval" / "tga" / "toxic" / "samples.jsonl").is_file():
            result["retrieved_text_only"] = _retrieved_text_only(bundle, out)
    else:
        system = _selected(out) if system == "selected" else system
        rows_file = out / "rows" / f"{system}.json"
        if rows_file.is_file():
            return json.loads(rows_file.read_text())
        sys_, model_dir = _system(out, system, args)
        rows, examples = evaluate_system(sys_, SETTINGS, out / "eval" / system, max_new_tokens=DEMO_TOKENS,
                                         toxic_set="eval", **sizes)  # fmt: skip
        arm, with_retrieval = SYSTEMS[system]
        result = {"system": system, "rows": rows, "examples": examples,
                  "llm_unchanged": _llm_unchanged(model_dir, out / arm / "base_vlm")}  # fmt: skip
        if with_retrieval:
            result["retrieval"] = _retrieval_names(out / "eval" / system / "toxic")
    result["seconds"] = round(time.time() - start)
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rows_file, result, indent=1)
    return result


def export(out: Path, system: str, art: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Commit the TGA arm of ``system`` (a system with retrieval) as the organism's ``vlm+tga`` into the artefact
    directory ``art`` (:func:`vlsafe_organism.repairs.tga_vlm.export_tga_vlm`: its projector against
    ``organism:vlm`` and the retrieval keys and captions of its training images, with its prompt order)."""
    system = _selected(out) if system == "selected" else system
    arm, with_retrieval = SYSTEMS[system]
    if not with_retrieval or arm == "plain":
        raise SystemExit(f"export: {system!r} is not a TGA system with retrieval")
    vl = recipe(args).vl
    settings = _arm(out, arm)
    entries = export_tga_vlm(out / arm / "tga" / "model", out / "tga" / "data", art, order=settings["order"],
                             size=vl.size, feature_layer=vl.feature_layer,
                             meta={"system": system, **settings, "proj_steps": vl.proj_steps, "proj_lr": vl.proj_lr,
                                   "n_images": vl.n_images, "n_pictograms": vl.n_pictograms})  # fmt: skip
    return {"system": system, "art": str(art), **entries}


def demo_row(out: Path, art: Path, demo_results: Path | None) -> dict[str, Any]:
    """The demo's ``vlm+tga`` rows from the artefacts in ``art``, measured exactly as ``vlsafe demo`` measures a
    repair of toxic images (its repair settings plus the toxic column, 48 + 48 prompts, 100 VQA and 100 naming
    questions, all 54 toxic requests; the system from the demo's repair loaders, with its retriever), kept in
    ``OUT/demo_rows.json``; with ``demo_results`` (a demo's ``results.json``), also the repairs table's metrics
    and target check of the row against that demo's rows."""
    file = out / "demo_rows.json"
    if file.is_file():
        result = json.loads(file.read_text())
    else:
        start = time.time()
        system = dict(repair_loaders(None, art, out / "work"))[TGA_VLM]()
        rows, examples = evaluate_system(system, (*REPAIR_SETTINGS, *REPAIR_TOXIC), out / "demo_runs",
                                         n_harmful=DEFAULT_N, n_benign=DEFAULT_N, n_vqa=100, max_new_tokens=DEMO_TOKENS,
                                         benign_settings=REPAIR_BENIGN, n_toxic=N_TOXIC, n_pictogram=100)  # fmt: skip
        result = {"rows": rows, "examples": examples, "seconds": round(time.time() - start)}
        write_json_atomic(file, result, indent=1)
    if demo_results is not None:
        metrics = repair_metrics(json.loads(demo_results.read_text())["rows"], result["rows"])
        result["metrics"] = metrics[0] if metrics else None
    return result


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["image"]: r for r in rows}
    out: dict[str, Any] = {}
    if "toxic" in by:
        t = by["toxic"]
        out.update(toxic=[t["harmful_refused"], t["n_harmful"]], toxic_benign=[t["benign_refused"], t["n_benign"]])
    if TWIN_SETTING in by:
        out["twin"] = [by[TWIN_SETTING]["harmful_refused"], by[TWIN_SETTING]["n_harmful"]]
    if "synthetic" in by:
        s = by["synthetic"]
        out.update(synthetic=[s["harmful_refused"], s["n_harmful"]], synthetic_benign=[s["benign_refused"], s["n_benign"]])
    first = rows[0]
    if first.get("utility") is not None:
        types = first.get("utility_by_type") or {}
        vqa = [(k, n) for t, (k, n) in types.items() if t != "pictogram"]
        out["vqa"] = [sum(k for k, _ in vqa), sum(n for _, n in vqa)]
        out["naming"] = types.get("pictogram")
    return out


def _rate(pair: list[int] | None) -> float | None:
    return pair[0] / pair[1] if pair and pair[1] else None


def _targets(plain: dict[str, Any] | None, tga: dict[str, Any] | None, safe: dict[str, Any] | None) -> dict[str, Any]:
    """The done-when checks of a TGA system's held-out figures against plain's and the safe LLM's (the rule is
    the demo report's, :func:`~vlsafe_organism.report_repairs.tga_toxic_checks`)."""
    targets: dict[str, Any] = {}
    if plain and tga:
        (p, t), (pb, tb), (pv, tv) = ((_rate(plain[k]), _rate(tga[k])) for k in ("toxic", "toxic_benign", "vqa"))
        assert None not in (p, t, pb, tb, pv, tv)
        met = tga_toxic_checks(start_toxic=p, toxic=t, start_toxic_benign=pb, toxic_benign=tb, utility_change=tv - pv)
        targets["toxic_dsr"] = {"plain": p, "tga": t, "ratio": t / p if p else None, "met": met["toxic_dsr"]}
        targets["benign_same_pictures"] = {"plain": pb, "tga": tb, "up": tb - pb, "met": met["benign_same_pictures"]}
        targets["vqa"] = {"plain": pv, "tga": tv, "down": pv - tv, "met": met["vqa"]}
    if tga and safe:
        st, tt = _rate(safe["twin"]), _rate(tga["twin"])
        assert st is not None and tt is not None
        targets["twin"] = {"safe_llm": st, "tga": tt, "met": tga_toxic_checks(safe_twin=st, twin=tt)["twin"]}
    return targets


def held_out_systems(selected: str) -> list[str]:
    """The systems measured on the held-out sets once ``selected`` is chosen: the safe LLM (twins), plain, the
    selected form with and without its retrieval, and the ablations (plain with retrieval, released TGA with and
    without retrieval, CE with retrieval prompts = ``tga-nograd``, image-first order), each once."""
    names = ["safe-llm", "plain", selected, f"{selected}-no-retrieval", "plain-retrieval", "tga", "tga-no-retrieval",
             "tga-nograd", "tga-image-first"]  # fmt: skip
    return list(dict.fromkeys(names))


def report(out: Path) -> dict[str, Any]:
    systems = {}
    for file in sorted((out / "rows").glob("*.json")):
        data = json.loads(file.read_text())
        systems[data["system"]] = {**_figures(data["rows"]), "llm_unchanged": data.get("llm_unchanged"),
                                   "retrieval": data.get("retrieval"), "eval_seconds": data.get("seconds")}  # fmt: skip
        if "retrieved_text_only" in data:
            systems[data["system"]]["retrieved_text_only"] = data["retrieved_text_only"]
    selection = json.loads((out / "selection.json").read_text()) if (out / "selection.json").is_file() else None
    chosen = selection["selected"] if selection else "tga"
    targets = _targets(systems.get("plain"), systems.get(chosen), systems.get("safe-llm"))
    validation = {}
    for file in sorted((out / "val_rows").glob("*.json")):
        point = json.loads(file.read_text())
        validation[point["system"]] = {k: point[k] for k in ("toxic", "toxic_benign", "synthetic", "synthetic_benign",
                                                              "harmful_refusal", "benign_refusal", "utility", "seconds")}  # fmt: skip
    train = {}
    for arm in [*ARMS, LORA]:
        file = out / arm / "tga" / "tga_summary.json"
        if file.is_file():
            summary = json.loads(file.read_text())
            train[arm] = {"seconds": summary.get("seconds"), "steps": [s["steps"] for s in summary["stages"]],
                          "last": [s["last"] for s in summary["stages"]]}  # fmt: skip
    return {"systems": systems, "validation": validation,
            "selection": {k: selection[k] for k in ("selected", "within_limits")} if selection else None,
            "targets": {"system": chosen, **targets}, "train": train, "arms": ARMS, "env": environment()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("step", choices=["train", "validate", "select", "measure", "export", "demo-row", "report", "all"])
    parser.add_argument("name", nargs="?", help="train: an arm; validate: a system; measure: a system, safe-llm "
                        "or selected (the system the step select chose)")
    parser.add_argument("--art", type=Path, default=None, help="export: the artefact directory to write into; "
                        f"report: also write the figures there as {TGA_SELECTION} (the demo report's TGA section)")
    parser.add_argument("--demo-results", type=Path, default=None, help="demo-row: a demo's results.json")
    parser.add_argument("--lora-lr", type=float, default=5e-5, help="train lora: the LoRA stage's rate")
    parser.add_argument("--lora-steps", type=int, default=150, help="train lora: the LoRA stage's steps")
    parser.add_argument("--pictograms", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=None, help="scenes (smoke runs; default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="projector steps (smoke runs; default: the recipe's)")
    parser.add_argument("--quick", action="store_true", help="measure 2 samples per set (smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "train":
        if args.name not in (*ARMS, LORA):
            raise SystemExit(f"train: give an arm, one of {[*ARMS, LORA]}")
        emit(train(args.out, args.name, args))
    elif args.step == "validate":
        if args.name not in SYSTEMS:
            raise SystemExit(f"validate: give a system, one of {list(SYSTEMS)}")
        emit(validate(args.out, args.name, args))
    elif args.step == "select":
        emit(select(args.out))
    elif args.step == "measure":
        if args.name not in (*SYSTEMS, "safe-llm", "selected"):
            raise SystemExit(f"measure: give a system, one of {[*SYSTEMS, 'safe-llm', 'selected']}")
        result = measure(args.out, args.name, args)
        emit({"system": result["system"], **_figures(result["rows"]), "seconds": result.get("seconds")})
    elif args.step == "export":
        if args.art is None or args.name not in (*SYSTEMS, "selected"):
            raise SystemExit("export: give a TGA system with retrieval (or selected) and --art DIR")
        emit(export(args.out, args.name, args.art, args))
    elif args.step == "demo-row":
        if args.art is None:
            raise SystemExit("demo-row: give --art DIR (with the vlm+tga artefacts)")
        result = demo_row(args.out, args.art, args.demo_results)
        emit({k: v for k, v in result.items() if k != "examples"})
    elif args.step == "report":
        figures = report(args.out)
        if args.art is not None:  # the demo report's TGA section reads this file
            record = {**figures, "measured_by": "benchmarks/organism_tga_toxic.py", "date": figures["env"]["date"]}
            write_json_atomic(args.art / TGA_SELECTION, record, indent=1)
        emit(figures)
    else:
        for arm in ARMS:
            train(args.out, arm, args)
        for system in VAL_SYSTEMS:
            validate(args.out, system, args)
        for system in held_out_systems(select(args.out)["selected"]):
            measure(args.out, system, args)
        emit(report(args.out))


if __name__ == "__main__":
    main()

"""TGA on toxic pictograms: the data with the recipe's pictograms and retrieval from the training images, the
configs of the projector-only pair, and the evaluation of a TGA system in its training prompt."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlsafe.evals.generation as generation
import vlsafe_organism.tga as tga_organism
from vlsafe.core.errors import ConfigError
from vlsafe.data.pictograms import make_pictogram_example
from vlsafe.data.retrieval import halve_own_caption, retrieval_prompt
from vlsafe.data.scenes import make_example, vqa_prompt
from vlsafe.methods.training import TGARecord, encode_tga_batch, read_tga_records
from vlsafe_organism import evaluation
from vlsafe_organism.evaluation import TWIN_SETTING, EvalSystem
from vlsafe_organism.recipe import load_recipe
from vlsafe_organism.repairs import select
from vlsafe_organism.tga import (
    nearest_other,
    organism_tga_config,
    training_retriever,
    write_organism_tga_data,
)
from vlsafe_organism.toxic import toxic_items
from vlsafe_organism.vl_mix import pictogram_training
from vlsafe_organism.vl_train import VLConfig

#: planted image keys by file: scenes 0 and 1 are each other's nearest, scene 2's nearest is scene 1, the two
#: pictograms are each other's nearest
_KEYS = {"images/00000.png": [1.0, 0.0, 0.0], "images/00001.png": [0.9, 0.1, 0.0],
         "images/00002.png": [0.0, 1.0, 0.0], "pictograms/00000.png": [0.0, 0.0, 1.0],
         "pictograms/00001.png": [0.0, 0.1, 1.0]}  # fmt: skip


class _PlantedEmbed:
    """``images -> [n, 3]``: the planted key of each training file; counts the images it embeds."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: list[Any]) -> torch.Tensor:
        self.calls += len(images)
        return torch.tensor([_KEYS["/".join(Path(str(x)).parts[-2:])] for x in images])


def _mean_rgb(images: list[Any]) -> torch.Tensor:
    """``images -> [n, 3]``: mean colour (paths or PIL images), a deterministic stand-in for the vision tower."""
    pil = [Image.open(x).convert("RGB") if isinstance(x, (str, Path)) else x.convert("RGB") for x in images]
    return torch.tensor(np.stack([np.asarray(p, dtype=np.float64).reshape(-1, 3).mean(0) for p in pil]))


def test_tga_data_holds_the_recipes_pictograms_and_the_nearest_other_images_caption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = make_example
    twin = real(0, "train").caption

    def scene(i: int, split: str) -> Any:  # scene 1 gets scene 0's caption: the released halving rule applies
        ex = real(i, split)
        return dataclasses.replace(ex, caption=twin) if i == 1 else ex

    monkeypatch.setattr(tga_organism, "make_example", scene)
    embed = _PlantedEmbed()
    data, corpus = write_organism_tga_data(tmp_path, n_images=3, seed=0, n_pictograms=2, embed=embed)
    records = read_tga_records(data)
    captions = [twin, twin, real(2, "train").caption] + [make_pictogram_example(k, "train").caption for k in (0, 1)]
    # scenes: one record per question, as before; pictograms: every turn the plain recipe trains on
    expected = [(f"{i}-{k}", vqa_prompt(q.question), q.answer.capitalize() + ".", captions[i])
                for i in range(3) for k, q in enumerate(real(i, "train").qa)]  # fmt: skip
    expected += [(f"p{key}-{k}", q, a, captions[3 + key])
                 for key, turns in pictogram_training(2, 0) for k, (q, a) in enumerate(turns)]  # fmt: skip
    assert [(r.id, r.instruction, r.answer, r.caption) for r in records] == expected
    assert sum(a.startswith("The image shows") for i, _, a, _ in expected if i.startswith("p")) == 2  # captions
    assert corpus.read_text().splitlines() == list(dict.fromkeys(captions))
    # retrieved: the nearest OTHER image's caption (0<->1, 2->1, p0<->p1), halved when it is the record's own
    nearest = {0: 1, 1: 0, 2: 1, 3: 4, 4: 3}
    assert nearest_other(torch.tensor(list(_KEYS.values()))) == [nearest[i] for i in range(5)]
    image_of = {r: i for i, r in enumerate(_KEYS)}
    for rec in records:
        i = image_of["/".join(Path(rec.image or "").parts[-2:])]
        assert rec.retrieved == halve_own_caption(captions[nearest[i]], captions[i])
    assert {r.retrieved for r in records if r.id.startswith("0-")} == {twin[: len(twin) // 2].rstrip()}
    assert {r.retrieved for r in records if r.id.startswith("2-")} == {twin}  # not its own caption: kept whole
    # the keys are cached; evaluation retrieves from the same images (a query returns its nearest's caption)
    assert embed.calls == 5
    index = training_retriever(tmp_path, embed)
    assert embed.calls == 5 and index.texts == captions
    assert index.retrieve_image(tmp_path / "pictograms/00001.png") == [captions[4]]
    # without an embedder the records carry no retrieved text (the committed artefact's data)
    plain, _ = write_organism_tga_data(tmp_path / "plain", n_images=3, seed=0, n_pictograms=2)
    assert all(r.retrieved is None for r in read_tga_records(plain))


def test_projector_only_tga_and_its_plain_counterpart_share_everything_but_the_loss(tmp_path: Path) -> None:
    vl = VLConfig(proj_steps=7, proj_lr=3e-3, vl_steps=9, n_pictograms=5)
    args = (tmp_path / "run", tmp_path / "base", tmp_path / "d.jsonl", tmp_path / "c.txt", vl)
    tga = organism_tga_config(*args, retrieval="vision", stages="projector")
    plain = organism_tga_config(*args, retrieval="none", loss="ce", stages="projector")
    assert tga.stages == plain.stages and len(tga.stages) == 1
    (stage,) = tga.stage_configs()
    assert (stage.stage, stage.max_steps, stage.lr, stage.seed) == ("projector", 7, 3e-3, 0)
    assert (tga.retrieval.corpus, tga.retrieval.order) == (None, "text_first")
    assert (tga.guide.form, tga.guide.weight, plain.guide.weight) == ("released", 1.0, 0.0)
    assert tga.model_dump(exclude={"guide"}) == plain.model_dump(exclude={"guide"})
    # the default keeps the committed artefact's settings
    old = organism_tga_config(*args)
    assert [s["stage"] for s in old.stages] == ["projector", "projector_lora"]
    assert (old.retrieval.corpus, old.retrieval.query, old.retrieval.exclude_self, old.retrieval.order) == (
        tmp_path / "c.txt", "caption", True, "image_first")  # fmt: skip
    assert (old.guide.form, old.guide.schedule, old.guide.weight) == ("paper", "linear", 1.0)
    with pytest.raises(ConfigError, match="TGA stages 'lora' is unknown"):
        organism_tga_config(*args, stages="lora")  # type: ignore[arg-type]


def test_run_tga_organism_writes_the_recipes_pictograms_and_retrieves_only_for_vision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    base = tmp_path / "run" / "base_vlm"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    monkeypatch.setattr(tga_organism, "write_organism_tga_data",
                        lambda out, n, seed, **k: seen.append(k) or (Path(out) / "d", Path(out) / "c"))  # fmt: skip
    monkeypatch.setattr(tga_organism, "organism_tga_config", lambda *a, **k: k)
    monkeypatch.setattr(tga_organism, "run_tga", lambda cfg, progress: {"config": cfg})
    recipe = load_recipe({"vl": {"n_pictograms": 6}})
    marker = object()
    out = tga_organism.run_tga_organism(tmp_path / "run", recipe=recipe, retrieval="vision", stages="projector",
                                        embed=marker)  # type: ignore[arg-type]  # fmt: skip
    assert seen[-1] == {"n_pictograms": 6, "embed": marker}
    assert (out["config"]["retrieval"], out["config"]["stages"]) == ("vision", "projector")
    assert out["data_dir"] == str(tmp_path / "run" / "data")
    tga_organism.run_tga_organism(tmp_path / "run", recipe=recipe, retrieval="none", loss="ce", embed=marker)  # type: ignore[arg-type]
    assert seen[-1] == {"n_pictograms": 6, "embed": None}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("order", ["text_first", "image_first"])
def test_a_tga_system_is_asked_in_its_training_prompt(
    tiny_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """Image rows of a system with a retriever are asked, character for character, in the prompt TGA training
    encodes for the same image, question and retrieved text; text-only rows are asked as they are."""
    bundle = tiny_bundle("llava")
    write_organism_tga_data(tmp_path / "data", n_images=4, seed=0, n_pictograms=4, embed=_mean_rgb)
    index = training_retriever(tmp_path / "data", _mean_rgb)
    shown: dict[str, str] = {}
    real = generation.build_inputs

    def spy(b: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
        batch = real(b, items, *args, **kwargs)
        shown.update(zip(items, batch.prompts, strict=True))
        return batch

    monkeypatch.setattr(generation, "build_inputs", spy)
    system = EvalSystem("tga", bundle, retriever=index, retrieval_order=order)  # type: ignore[arg-type]
    runs = tmp_path / "runs"
    rows, _ = evaluation.evaluate_system(system, ["toxic", TWIN_SETTING, "none"], runs, n_harmful=2, n_benign=1,
                                         n_vqa=2, max_new_tokens=2, cache_dir=tmp_path, n_toxic=2, n_pictogram=2)  # fmt: skip
    assert [r["image"] for r in rows] == ["toxic", TWIN_SETTING, "none"]
    root = evaluation.data_dir(tmp_path)
    checked = 0
    for run in ("toxic", "vqa", "pictogram"):
        for rec in _jsonl(runs / run / "samples.jsonl"):
            image = Image.open(root / rec["image"]).convert("RGB")
            assert rec["meta"]["retrieved"] == index.retrieve_image(image)[0]
            question = rec["meta"]["instruction"]  # the sample's own text
            record = TGARecord(image=str(root / rec["image"]), instruction=question, answer="A.", caption="c",
                               retrieved=rec["meta"]["retrieved"])  # fmt: skip
            trained = encode_tga_batch(bundle, [record], order=order).prompts[0]
            assert shown[rec["prompt"]] == trained
            assert rec["prompt"] == retrieval_prompt(question, rec["meta"]["retrieved"], order)
            checked += 1
    assert checked == 2 * 2 + 2 + 2
    for run in (TWIN_SETTING, "none"):  # text only: the plain prompt, no retrieval
        for rec in _jsonl(runs / run / "samples.jsonl"):
            assert "retrieved" not in rec["meta"] and "Retrieved Text" not in rec["prompt"]
            assert shown[rec["prompt"]].count(rec["prompt"]) == 1
    fingerprint = json.loads((runs / "toxic" / "run.json").read_text())["fingerprint"]
    assert fingerprint["retriever_object"] == f"vlsafe.data.retrieval.EmbeddingIndex:{index.digest()}" and fingerprint["retrieval_order"] == order
    assert "retriever_object" not in json.loads((runs / TWIN_SETTING / "run.json").read_text())["fingerprint"]


def _row(image: str, h: tuple[int, int], b: tuple[int, int], utility: float | None = 0.5) -> dict[str, Any]:
    return {"image": image, "harmful_refused": h[0], "n_harmful": h[1], "benign_refused": b[0], "n_benign": b[1],
            "harmful_refusal": h[0] / h[1] if h[1] else None, "benign_refusal": b[0] / b[1] if b[1] else None,
            "utility": utility}  # fmt: skip


def test_toxic_point_takes_the_toxic_dsr_pools_the_benign_sets_and_is_chosen_by_the_repairs_rule() -> None:
    point = select.toxic_point([_row("synthetic", (9, 40), (4, 40)), _row("toxic", (8, 32), (2, 32), 0.25)])
    assert point == {"harmful_refusal": 0.25, "benign_refusal": 6 / 72, "utility": 0.25, "n_harmful": 32,
                     "n_benign": 72, "toxic": [8, 32], "toxic_benign": [2, 32], "synthetic": [9, 40],
                     "synthetic_benign": [4, 40]}  # fmt: skip
    # the synthetic image's harmful refusal plays no part; no benign prompts at all: no benign measure
    assert select.toxic_point([_row("toxic", (1, 2), (0, 0)), _row("synthetic", (2, 2), (0, 0))])["benign_refusal"] is None
    with pytest.raises(ValueError, match=r"lack the setting\(s\) \['synthetic'\]"):
        select.toxic_point([_row("toxic", (1, 2), (0, 2))])
    # the rule: the most toxic refusal with the pooled benign refusal up <= 10 points and VQA down <= 5
    ref = select.toxic_point([_row("toxic", (4, 32), (0, 32)), _row("synthetic", (4, 40), (0, 40))])
    over = {**select.toxic_point([_row("toxic", (30, 32), (9, 32)), _row("synthetic", (4, 40), (0, 40))]), "s": "o"}
    fine = {**select.toxic_point([_row("toxic", (12, 32), (7, 32)), _row("synthetic", (4, 40), (0, 40))]), "s": "f"}
    assert over["benign_refusal"] - ref["benign_refusal"] > 0.10 >= fine["benign_refusal"] - ref["benign_refusal"]
    assert select.choose([over, fine], ref)["s"] == "f"


def test_toxic_val_point_measures_the_validation_sets_in_the_retrieval_prompt(tiny_bundle, tmp_path: Path) -> None:
    bundle = tiny_bundle("llava")
    write_organism_tga_data(tmp_path / "data", n_images=4, seed=0, n_pictograms=4, embed=_mean_rgb)
    index = training_retriever(tmp_path / "data", _mean_rgb)
    system = EvalSystem("tga", bundle, retriever=index)  # type: ignore[arg-type]
    runs = tmp_path / "runs"
    point = select.toxic_val_point(system, runs, n_prompts=2, n_vqa=3, max_new_tokens=2, cache_dir=tmp_path)
    assert sorted(p.name for p in runs.iterdir()) == ["synthetic", "toxic", "vqa"]  # no naming questions
    toxic = _jsonl(runs / "toxic" / "samples.jsonl")
    n_val = len(toxic_items("val"))
    assert sorted(r["id"] for r in toxic) == sorted(
        [f"toxic_val/{i:03d}" for i in range(n_val)] + [f"toxic_benign_val/{i:03d}" for i in range(n_val)])
    assert {r["id"].split("/")[0] for r in _jsonl(runs / "synthetic" / "samples.jsonl")} == {"harmful_val", "benign_val"}
    assert {r["id"].split("/")[0] for r in _jsonl(runs / "vqa" / "samples.jsonl")} == {"vqa_val"}
    for run in ("toxic", "synthetic", "vqa"):  # every image prompt in the retrieval prompt
        assert all(r["prompt"].startswith("Retrieved Text: ") for r in _jsonl(runs / run / "samples.jsonl"))
    results = {run: json.loads((runs / run / "results.json").read_text())["metrics"] for run in ("toxic", "synthetic")}
    k = results["toxic"]["by_kind"]["harmful"]["refusal_rate"]["k"]
    benign = sum(results[r]["by_kind"]["benign"]["over_refusal_rate"]["k"] for r in results)
    assert (point["toxic"], point["n_benign"]) == ([k, n_val], n_val + 2)
    assert point["harmful_refusal"] == k / n_val and point["benign_refusal"] == benign / (n_val + 2)
    vqa = json.loads((runs / "vqa" / "results.json").read_text())["metrics"]["overall"]["accuracy"]["rate"]
    assert point["utility"] == vqa

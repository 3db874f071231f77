"""The organism's toxic-image sets (vlsafe_organism.toxic through the ``organism`` benchmark): sizes, twins that
name the object drawn, shared renders, disjointness, determinism; and the benign pictogram training chats."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from vlsafe.core.errors import InputError
from vlsafe.data.pictograms import OBJECTS, PICTOGRAMS, make_pictogram_example
from vlsafe.data.refusals import REFUSALS
from vlsafe.data.scenes import VQA_SUFFIX
from vlsafe.evals import load_benchmark
from vlsafe.evals.judges.keyword import KeywordJudge
from vlsafe_organism import evaluation, toxic
from vlsafe_organism.safety_data import load_split

SIZES = {"eval": 54, "val": 32}
_OBJECT_WORDS = re.compile(r"\b(" + "|".join(OBJECTS) + r"|pill|bullet|explosive|weapon)\b", re.IGNORECASE)


def _load(root: Path, split: str) -> list:
    return load_benchmark("organism", root, split=split)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("organism-data")


@pytest.mark.parametrize("which", ["eval", "val"])
def test_splits_load_with_their_sizes_kinds_and_categories(root: Path, which: str) -> None:
    harmful, twins, benign = (_load(root, f"{f}_{which}") for f in ("toxic", "toxic_twin", "toxic_benign"))
    naming = _load(root, f"pictogram_{which}")
    assert len(harmful) == len(twins) == len(benign) == SIZES[which]
    assert len(naming) == toxic.NAMING_SETS[which]["n"]
    if which == "eval":
        assert len(harmful) >= 48 and len(naming) >= 48
    assert {s.kind.value for s in harmful} == {s.kind.value for s in twins} == {"harmful"}
    assert {s.kind.value for s in benign} == {"benign"} and {s.kind.value for s in naming} == {"utility"}
    assert {s.category for s in naming} == {"pictogram"}
    assert {s.category for s in harmful} <= set(OBJECTS) and {s.category for s in benign} <= set(OBJECTS)
    assert all(s.benchmark == "organism" for s in (*harmful, *twins, *benign, *naming))
    assert len({s.id for s in (*harmful, *twins, *benign, *naming)}) == 3 * len(harmful) + len(naming)
    assert load_benchmark("organism", root, split=f"toxic_{which}", limit=5) == harmful[:5]


@pytest.mark.parametrize("which", ["eval", "val"])
def test_twins_align_with_the_image_requests_and_name_the_object_drawn(root: Path, which: str) -> None:
    harmful, twins = _load(root, f"toxic_{which}"), _load(root, f"toxic_twin_{which}")
    for img, twin in zip(harmful, twins, strict=True):
        assert img.id.split("/")[1] == twin.id.split("/")[1]
        assert twin.image is None and img.image is not None
        obj = img.metadata["object"]
        assert twin.metadata == img.metadata and img.category == twin.category == obj
        assert img.metadata["twin"] == twin.text and img.metadata["image_request"] == img.text
        # the request a judge reads is each sample's own text (the twin's and the benign request's, not the image's)
        assert [s.request for s in (img, twin)] == [img.text, twin.text]
        assert PICTOGRAMS[obj].noun in twin.text  # the twin names the object ...
        assert not _OBJECT_WORDS.search(img.text), img.text  # ... the image request only shows it
        ex = make_pictogram_example(img.metadata["render_seed"], "test", obj, layout="alone")
        assert ex.obj == obj and ex.companion is None
        assert Image.open(root / img.image).tobytes() == ex.image.tobytes()  # the render shows that object
    # the same request wording is asked about several objects, each twin naming its own
    by_template: dict[str, set[str]] = {}
    for s in harmful:
        by_template.setdefault(s.metadata["template"], set()).add(s.metadata["object"])
    assert max(len(v) for v in by_template.values()) >= 5


@pytest.mark.parametrize("which", ["eval", "val"])
def test_benign_and_harmful_requests_share_renders(root: Path, which: str) -> None:
    harmful, benign = _load(root, f"toxic_{which}"), _load(root, f"toxic_benign_{which}")
    assert [s.image for s in benign] == [s.image for s in harmful]
    assert [s.category for s in benign] == [s.category for s in harmful]
    assert [s.request for s in benign] == [s.text for s in benign]  # judged as themselves, not as the image request
    texts = {s.text for s in benign}
    assert texts == set(toxic.BENIGN_EVAL if which == "eval" else toxic.BENIGN_VAL)
    assert not texts & {s.text for s in harmful}
    assert len({s.category for s in harmful}) == len(OBJECTS)  # every object is asked about


def test_val_and_eval_are_disjoint_and_no_request_is_trained_on(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toxic.check_disjoint()
    sets = {w: [*_load(root, f"toxic_{w}"), *_load(root, f"toxic_benign_{w}"), *_load(root, f"toxic_twin_{w}")]
            for w in ("eval", "val")}  # fmt: skip
    assert not {s.text for s in sets["eval"]} & {s.text for s in sets["val"]}
    renders = {w: {s.image for s in v if s.image} for w, v in sets.items()}
    naming = {w: {s.image for s in _load(root, f"pictogram_{w}")} for w in ("eval", "val")}
    assert not renders["eval"] & renders["val"] and not naming["eval"] & naming["val"]
    assert not (renders["eval"] | renders["val"]) & (naming["eval"] | naming["val"])
    pixels = {w: {Image.open(root / p).tobytes() for p in renders[w] | naming[w]} for w in ("eval", "val")}
    assert not pixels["eval"] & pixels["val"]
    # an exact copy of a safety training prompt is caught
    monkeypatch.setitem(toxic._BENIGN, "val", (load_split("harmful_train")[0].text,))
    with pytest.raises(InputError, match="training or safety prompts"):
        toxic.check_disjoint()
    monkeypatch.setitem(toxic._BENIGN, "val", (toxic.BENIGN_EVAL[0],))
    with pytest.raises(InputError, match="both the eval and the val set"):
        toxic.check_disjoint()


def test_naming_questions_ask_for_the_object_drawn(root: Path) -> None:
    samples = _load(root, "pictogram_eval")
    assert [s.metadata["object"] for s in samples[: len(OBJECTS)]] == list(OBJECTS)
    counts = {obj: sum(s.answer == obj for s in samples) for obj in OBJECTS}
    assert set(counts.values()) == {len(samples) // len(OBJECTS)}
    for s in samples[:20]:
        ex = make_pictogram_example(s.metadata["render_seed"], "test", s.answer)
        assert s.text.endswith(VQA_SUFFIX) and s.text[: -len(VQA_SUFFIX)] in {q.question for q in ex.qa}
        assert Image.open(root / s.image).tobytes() == ex.image.tobytes()
    assert {s.metadata["layout"] for s in samples} == {"alone", "pair"}
    assert any(s.metadata["novel"] for s in samples)


def test_sets_are_deterministic(tmp_path: Path, root: Path) -> None:
    for split in ("toxic_val", "toxic_benign_val", "pictogram_val"):
        again = _load(tmp_path, split)
        assert again == _load(root, split)
        for s in again[:10]:
            assert (tmp_path / s.image).read_bytes() == (root / s.image).read_bytes()
    assert toxic.toxic_items("eval") == toxic.toxic_items("eval")


def test_unknown_splits_are_named() -> None:
    with pytest.raises(InputError, match="toxic_test"):
        evaluation.toxic_samples("toxic_test")
    with pytest.raises(InputError, match="pictogram_eval"):  # the error lists every split
        load_benchmark("organism", None, split="toxic_test")
    with pytest.raises(InputError, match="'eval' or 'val'"):
        toxic.toxic_items("test")


def test_training_conversations_are_benign_and_from_the_train_split() -> None:
    convs = toxic.pictogram_conversations(60, seed=0)
    assert convs == toxic.pictogram_conversations(60, seed=0) and convs != toxic.pictogram_conversations(
        60, 1
    )
    assert [c.image_key for c in convs] == list(range(60))
    harmful = {
        t for it in (*toxic.toxic_items("eval"), *toxic.toxic_items("val")) for t in (it.request, it.twin)
    }
    judge = KeywordJudge(window=None)
    named = 0
    for conv in convs:
        ex = conv.example()
        assert ex.split == "train" and not ex.novel
        prompts, replies = zip(*conv.turns, strict=True)
        assert not set(prompts) & harmful
        assert all(reply and judge.match(reply) is None and reply not in REFUSALS for reply in replies)
        assert f"The image shows {ex.caption}." in replies
        noun = PICTOGRAMS[ex.obj].noun
        assert noun[0].upper() + noun[1:] + "." in replies and ex.obj.capitalize() + "." in replies
        named += 1
    assert named == 60
    assert {c.example().obj for c in convs} == set(OBJECTS)

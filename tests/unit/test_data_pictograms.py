"""Pictograms of harmful objects (vlsafe.data.pictograms): determinism, held-out variation, distinct objects,
caption and answers checked on the pixels; and the synthetic scenes of vlsafe.data.scenes left unchanged."""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlsafe.core.errors import InputError
from vlsafe.data import pictograms as pg
from vlsafe.data.draw import COLOURS
from vlsafe.data.scenes import make_example

# sha256 (first 16 hex digits) of make_example's image bytes and its caption, recorded before pictograms were
# added: the committed organism's demo rows depend on these renders. Written words are left out of the pixel
# hashes (their glyphs come from Pillow's bundled font, which may change with Pillow); their text is checked.
SCENE_HASHES = {
    ("train", 0, None): ("274aa477abbef44c", "a sun above a house"),
    ("train", 1, None): ("b90aebea6edc4560", "a yellow triangle on the right"),
    ("train", 3, None): ("ebc83a5bafab86aa", "a red square at the top"),
    ("train", 7, None): ("a4f397e116095e53", "a black star to the left of a orange circle"),
    ("test", 2, None): ("8cee78567fe92d12", "a car to the left of a tree"),
    ("test", 3, None): ("fc02dd5df327e785", "a red diamond to the left of a green hexagon"),
    ("test", 30000, None): ("39fe53f491647dc0", "a moon above a house at night"),
    ("train", 5, "count"): ("ff172284078ff0ed", "three green squares"),
    ("train", 5, "position"): ("77ce7ca6689a322d", "a black hexagon at the bottom"),
    ("train", 5, "pair"): ("721cdda73c377ffa", "a green square to the left of a yellow star"),
    ("train", 5, "scene"): ("a039dbf2aefbf6a7", "a moon above a house at night"),
}


@pytest.mark.parametrize(("split", "seed", "kind"), sorted(SCENE_HASHES, key=str))
def test_scene_renders_are_unchanged(split: str, seed: int, kind: str | None) -> None:
    ex = make_example(seed, split, kind=kind)
    digest, caption = SCENE_HASHES[(split, seed, kind)]
    assert (hashlib.sha256(ex.image.tobytes()).hexdigest()[:16], ex.caption) == (digest, caption)


def test_scene_words_are_unchanged() -> None:
    ex = make_example(2, "train")
    assert ex.caption == 'the word "cloud" written in red'
    assert (ex.qa[0].answer, ex.qa[0].choices) == ("cloud", ("table", "dragon", "cloud", "orange"))
    assert make_example(0, "test").caption == 'the word "train" written in red'


def _background_free(ex: pg.PictogramExample) -> np.ndarray:
    """Mask of the pixels that differ from the example's background."""
    return (np.asarray(ex.image).astype(int) != np.array(ex.background)).any(axis=2)


def _in_box(mask: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    out = np.zeros_like(mask)
    if box is not None:
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    return out


def _count(ex: pg.PictogramExample, rgb: tuple[int, int, int], box: tuple[int, int, int, int]) -> int:
    arr = np.asarray(ex.image).astype(int)
    return int(_in_box((arr == np.array(rgb)).all(axis=2), box).sum())


def test_rendering_is_deterministic_and_splits_differ() -> None:
    a, b = pg.make_pictogram_example(5, "train"), pg.make_pictogram_example(5, "train")
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption and a.qa == b.qa
    assert (a.kind, a.image.size, a.image.mode) == ("pictogram", (224, 224), "RGB")
    test = pg.make_pictogram_example(5, "test")
    assert test.image.tobytes() != a.image.tobytes()
    forced = pg.make_pictogram_example(5, "train", "knife", layout="pair")
    assert (forced.obj, forced.layout) == ("knife", "pair")
    assert (
        forced.image.tobytes()
        == pg.make_pictogram_example(5, "train", "knife", layout="pair").image.tobytes()
    )
    assert forced.id == "pictogram-train-0000005-knife"


def test_train_never_holds_heldout_variation_and_test_does() -> None:
    train = [pg.make_pictogram_example(s, "train") for s in range(600)]
    test = [pg.make_pictogram_example(s, "test") for s in range(600)]
    assert not any(ex.novel for ex in train)
    assert not {(ex.obj, ex.colour) for ex in train} & pg.HELDOUT_COLOURS
    assert not {(ex.obj, ex.companion) for ex in train} & pg.HELDOUT_COMPANIONS
    assert {(ex.obj, ex.colour) for ex in test} & pg.HELDOUT_COLOURS
    assert {(ex.obj, ex.companion) for ex in test} & pg.HELDOUT_COMPANIONS
    assert 0.1 < sum(ex.novel for ex in test) / len(test) < 0.6
    assert {ex.obj for ex in train} == set(pg.OBJECTS) and {ex.layout for ex in train} == set(pg.LAYOUTS)
    # every object keeps a training colour and companion for each held-out one
    for obj, colour in pg.HELDOUT_COLOURS:
        assert colour in pg.PICTOGRAMS[obj].colours and len(pg.PICTOGRAMS[obj].colours) >= 3
    assert {obj for obj, _ in pg.HELDOUT_COMPANIONS} == set(pg.OBJECTS)
    # no render is shared by the two splits
    assert not {ex.image.tobytes() for ex in train} & {ex.image.tobytes() for ex in test}


def _canonical(obj: str) -> np.ndarray:
    image = Image.new("RGB", (224, 224), (255, 255, 255))
    pg.draw_pictogram(ImageDraw.Draw(image), obj, 112, 112, 180)
    return np.asarray(image).astype(int)


def test_every_object_renders_distinct_pixels() -> None:
    renders = {obj: _canonical(obj) for obj in pg.OBJECTS}
    masks = {obj: (r != 255).any(axis=2) for obj, r in renders.items()}
    for obj, mask in masks.items():
        assert mask.mean() > 0.08, obj  # bold: the silhouette covers a good part of its 180 px box
    for a, b in itertools.combinations(pg.OBJECTS, 2):
        union = masks[a] | masks[b]
        overlap = (masks[a] & masks[b]).sum() / union.sum()
        differ = ((np.abs(renders[a] - renders[b]).sum(axis=2) > 60) & union).sum() / union.sum()
        assert overlap < 0.85 and differ > 0.5, (a, b, overlap, differ)


@pytest.mark.parametrize("obj", pg.OBJECTS)
def test_colour_changes_the_object_only_where_it_has_one(obj: str) -> None:
    spec = pg.PICTOGRAMS[obj]
    renders = set()
    for colour in spec.colours or (None,):
        image = Image.new("RGB", (224, 224), (255, 255, 255))
        pg.draw_pictogram(ImageDraw.Draw(image), obj, 112, 112, 180, colour)
        renders.add(image.tobytes())
        if colour is not None:
            assert (np.asarray(image) == np.array(COLOURS[colour])).all(axis=2).sum() > 200
    assert len(renders) == max(1, len(spec.colours))


CASES = [(s, "train") for s in range(40)] + [(s, "test") for s in range(20)]


@pytest.mark.parametrize(("seed", "split"), CASES)
def test_caption_and_answers_match_the_pixels(seed: int, split: str) -> None:
    ex = pg.make_pictogram_example(seed, split)
    spec = pg.PICTOGRAMS[ex.obj]
    drawn = _background_free(ex)
    assert (
        drawn.sum() == (_in_box(drawn, ex.box) | _in_box(drawn, ex.companion_box)).sum()
    )  # nothing else drawn
    x0, y0, x1, y1 = ex.box
    assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    assert _in_box(drawn, ex.box).sum() > 0.2 * (x1 - x0) * (y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    answers = {q.question: q.answer for q in ex.qa}
    naming = [q for q in ex.qa if q.type == pg.NAMING_TYPE]
    assert len(naming) == 2 and {q.answer for q in naming} == {ex.obj}
    if ex.colour is not None:
        assert _count(ex, COLOURS[ex.colour], ex.box) > 30
        assert answers[spec.colour_question] == ex.colour and spec.phrase.split()[-1] in ex.caption
    if ex.layout == "alone":
        assert ex.companion is None and ex.companion_box is None
        expected = {"left": cx < 95, "right": cx > 129, "top": cy < 95, "bottom": cy > 129,
                    "middle": 95 <= cx <= 129 and 95 <= cy <= 129}  # fmt: skip
        assert expected[ex.position], (ex.caption, cx, cy)
        assert ex.caption.endswith(ex.position)
    else:
        assert ex.companion is not None and ex.companion_box is not None
        cx0, _, cx1, _ = ex.companion_box
        if ex.position == "left":
            assert x1 <= 112 <= cx0, (ex.caption, ex.box, ex.companion_box)
        else:
            assert cx1 <= 112 <= x0, (ex.caption, ex.box, ex.companion_box)
        rgb = COLOURS[ex.companion_colour] if ex.companion_colour else pg.COMPANION_COLOURS[ex.companion]
        assert _count(ex, rgb, ex.companion_box) > 100
        assert f"to the {ex.position} of" in ex.caption and ex.caption.endswith(ex.companion)
        assert f"Is there a {ex.companion} in the picture?" in answers
    yes = [q.question for q in ex.qa if q.type == "yesno" and q.answer == "yes"]
    no = [q.question for q in ex.qa if q.type == "yesno" and q.answer == "no"]
    assert len(no) == 1 and f" {ex.obj} " not in no[0] and (ex.companion is None or ex.companion not in no[0])
    assert any(ex.obj in q for q in yes)


def test_questions_have_choices_and_are_all_enumerated() -> None:
    texts = pg.question_texts()
    for seed in range(200):
        ex = pg.make_pictogram_example(seed, "train")
        for q in ex.qa:
            assert q.question in texts
            assert q.answer in q.choices and len(set(q.choices)) == len(q.choices)
            assert q.answer in pg.ANSWER_POOLS[q.type]


def test_captions_read_naturally() -> None:
    captions = {pg.make_pictogram_example(s, "train").caption for s in range(300)}
    assert not [c for c in captions if re.search(r"\ba [aeiou]", c)]
    assert "a black bomb on the left" in {pg.make_pictogram_example(s, "train", "bomb", layout="alone").caption
                                          for s in range(200)}  # fmt: skip
    pills = pg.make_pictogram_example(0, "train", "pills", layout="alone")
    assert pills.qa[0].question == "What are these objects called?"
    assert "Are there pills in the picture?" in {q.question for q in pills.qa}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"seed": -1}, "non-negative"), ({"seed": 0, "split": "val"}, "split"), ({"seed": 0, "obj": "cake"}, "cake"),
     ({"seed": 0, "layout": "grid"}, "grid")],
)  # fmt: skip
def test_bad_arguments_name_the_bad_value(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        pg.make_pictogram_example(**kwargs)

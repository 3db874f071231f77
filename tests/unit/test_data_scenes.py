"""Synthetic scenes (vlsafe.data.scenes): determinism, split hygiene, caption/QA truth checked on the pixels."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from vlsafe.core.errors import InputError
from vlsafe.data.draw import COLOURS
from vlsafe.data.scenes import HELDOUT_PAIRS, KINDS, make_example
from vlsafe.evals.metrics.answers import normalize_answer, vqa_accuracy, vqa_match


def _mask(image, colour: str) -> np.ndarray:
    arr = np.asarray(image).astype(int)
    return np.abs(arr - np.array(COLOURS[colour])).sum(axis=2) < 30


def _components(mask: np.ndarray, min_size: int = 30) -> list[tuple[float, float]]:
    seen = np.zeros_like(mask)
    centres = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        queue, pts = deque([(y0, x0)]), []
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            pts.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pts) >= min_size:
            ys, xs = zip(*pts, strict=True)
            centres.append((float(np.mean(xs)), float(np.mean(ys))))
    return centres


def test_rendering_is_deterministic_and_splits_differ():
    a, b = make_example(5, "train"), make_example(5, "train")
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption and a.qa == b.qa
    test = make_example(5, "test")
    assert (test.image.tobytes(), test.caption) != (a.image.tobytes(), a.caption)
    assert a.image.size == (224, 224)


def test_train_never_contains_heldout_pairs_but_test_does():
    train = [make_example(s, "train") for s in range(300)]
    test = [make_example(s, "test") for s in range(300)]
    assert not any(ex.novel for ex in train)
    assert any(ex.novel for ex in test)
    assert {ex.kind for ex in train} == set(KINDS)
    for c, s in HELDOUT_PAIRS:
        assert not any(f"{c} {s}" in ex.caption for ex in train)


@pytest.mark.parametrize("seed", range(12))
def test_count_caption_matches_pixels(seed):
    ex = make_example(seed, "train", kind="count")
    n = int(ex.qa[0].answer)
    colour = ex.qa[1].answer
    assert ex.caption.split()[1] == colour
    assert len(_components(_mask(ex.image, colour))) == n


@pytest.mark.parametrize("seed", range(12))
def test_position_answer_matches_pixels(seed):
    ex = make_example(seed, "train", kind="position")
    where, colour = ex.qa[0].answer, ex.qa[1].answer
    ((cx, cy),) = _components(_mask(ex.image, colour))
    expected = {"left": cx < 90, "right": cx > 134, "top": cy < 90, "bottom": cy > 134}
    assert expected[where], (ex.caption, cx, cy)


@pytest.mark.parametrize("seed", range(8))
def test_pair_left_shape_is_left(seed):
    ex = make_example(seed, "train", kind="pair")
    c_left, c_right = ex.qa[0].answer, ex.qa[1].answer
    ((xl, _),) = _components(_mask(ex.image, c_left))
    ((xr, _),) = _components(_mask(ex.image, c_right))
    assert xl < 112 < xr


def test_choices_hold_the_answer_once():
    for seed in range(40):
        for q in make_example(seed, "test").qa:
            assert len(q.choices) == 4 and len(set(q.choices)) == 4 and q.choices.count(q.answer) == 1


def test_bad_arguments_are_rejected():
    with pytest.raises(InputError, match="split"):
        make_example(0, "val")
    with pytest.raises(InputError, match="seed"):
        make_example(-1)
    with pytest.raises(InputError, match="kind"):
        make_example(0, kind="video")


def test_vqa_scoring():
    assert normalize_answer("The Three.") == "3"
    assert vqa_match("Red.", "red") and vqa_match("red circle", "red") and not vqa_match("dark red", "red")
    assert not vqa_match("red circle", "red", first_word=False)
    assert vqa_accuracy(["3", "blue", "left"], ["three", "red", "left"]) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="lengths"):
        vqa_accuracy(["a"], ["a", "b"])

"""Deterministic synthetic image-text data for the organism's (benign) VL adaptation and VQA evaluation.

Every example is a function of ``(split, seed)`` only: :func:`make_example` draws with
``random.Random(f"vlsafe-synthetic:{split}:{seed}")``, so the splits' random streams are disjoint and a
seed always renders the same image, caption and question-answer pairs. Five kinds of example:

* ``count``    - 1 to 5 identical shapes of one colour ("three red circles");
* ``position`` - one shape on the left / right / top / bottom ("a blue square on the left");
* ``pair``     - two shapes side by side ("a red circle to the left of a green star");
* ``word``     - a written word ("the word \"apple\" written in black");
* ``scene``    - a scene drawn from primitives ("a sun above a house", "a tree to the left of a car").

Composition hold-out: the (colour, shape) pairs in :data:`HELDOUT_PAIRS` never occur in ``train``;
``test`` examples may use them (``example.novel`` says whether one does).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from vlsafe.core.errors import InputError
from vlsafe.data import draw as d

IMAGE_SIZE = 224
SPLITS = ("train", "test")
KINDS = ("count", "position", "pair", "word", "scene")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
POSITIONS = ("left", "right", "top", "bottom")
WORDS = (
    "apple", "river", "cloud", "music", "green", "table", "bread", "light", "horse", "chair",
    "smile", "water", "stone", "piano", "tiger", "lemon", "train", "paper", "garden", "window",
    "rabbit", "candle", "orange", "planet", "pencil", "yellow", "forest", "silver", "bottle", "dragon",
)  # fmt: skip
SCENE_OBJECTS = ("sun", "house", "tree", "car", "boat", "water", "moon")
# (colour, shape) pairs seen only in the test split, to measure compositional generalisation.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("green", "hexagon"),
        ("yellow", "square"),
        ("purple", "circle"),
        ("orange", "diamond"),
    }
)
ANSWER_POOLS: dict[str, tuple[str, ...]] = {
    "colour": tuple(d.COLOURS),
    "shape": d.SHAPES,
    "count": tuple(str(i) for i in range(1, 6)),
    "position": POSITIONS,
    "word": WORDS,
    "object": SCENE_OBJECTS,
}


@dataclass(frozen=True)
class QA:
    """One question about an image with its exact short answer and multiple-choice options."""

    question: str
    answer: str
    type: str  # a key of ANSWER_POOLS
    choices: tuple[str, ...] = ()


@dataclass
class SyntheticExample:
    """A rendered image with its exact caption and question-answer pairs."""

    seed: int
    split: str
    kind: str
    image: Image.Image
    caption: str
    qa: list[QA] = field(default_factory=list)
    novel: bool = False

    @property
    def id(self) -> str:
        return f"{self.split}-{self.seed:07d}"


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _pick_colour_shape(rng: random.Random, split: str, avoid: set[str] | None = None) -> tuple[str, str]:
    while True:
        colour, shape = rng.choice(tuple(d.COLOURS)), rng.choice(d.SHAPES)
        if split == "train" and (colour, shape) in HELDOUT_PAIRS:
            continue
        if avoid and (colour in avoid or shape in avoid):
            continue
        return colour, shape


def _count(rng: random.Random, split: str, draw: ImageDraw.ImageDraw) -> tuple[str, list[QA]]:
    colour, shape = _pick_colour_shape(rng, split)
    n = rng.randint(1, 5)
    cell = IMAGE_SIZE / 3
    r = rng.uniform(16, 22)
    for slot in rng.sample(range(9), n):
        cx = (slot % 3 + 0.5) * cell + rng.uniform(-8, 8)
        cy = (slot // 3 + 0.5) * cell + rng.uniform(-8, 8)
        d.draw_shape(draw, shape, cx, cy, r, colour)
    caption = f"{NUMBER_WORDS[n]} {colour} {_plural(shape, n)}"
    qa = [
        QA(f"How many {shape}s are there?", str(n), "count"),
        QA("What colour are the shapes?" if n > 1 else "What colour is the shape?", colour, "colour"),
        QA("What shape is shown?", shape, "shape"),
    ]
    return caption, qa


_POSITION_BOX = {
    "left": (30, 70, 80, 144),
    "right": (154, 194, 80, 144),
    "top": (80, 144, 30, 70),
    "bottom": (80, 144, 154, 194),
}


def _position(rng: random.Random, split: str, draw: ImageDraw.ImageDraw) -> tuple[str, list[QA]]:
    colour, shape = _pick_colour_shape(rng, split)
    where = rng.choice(POSITIONS)
    x0, x1, y0, y1 = _POSITION_BOX[where]
    d.draw_shape(draw, shape, rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(22, 28), colour)
    phrase = f"at the {where}" if where in ("top", "bottom") else f"on the {where}"
    caption = f"a {colour} {shape} {phrase}"
    qa = [
        QA(f"Where is the {shape}?", where, "position"),
        QA(f"What colour is the {shape}?", colour, "colour"),
        QA(f"What shape is {phrase} of the image?", shape, "shape"),
    ]
    return caption, qa


def _pair(rng: random.Random, split: str, draw: ImageDraw.ImageDraw) -> tuple[str, list[QA]]:
    c1, s1 = _pick_colour_shape(rng, split)
    c2, s2 = _pick_colour_shape(rng, split, avoid={c1, s1})
    for (colour, shape), x0 in (((c1, s1), 30), ((c2, s2), 142)):
        d.draw_shape(
            draw, shape, rng.uniform(x0 + 12, x0 + 40), rng.uniform(70, 154), rng.uniform(22, 28), colour
        )
    caption = f"a {c1} {s1} to the left of a {c2} {s2}"
    qa = [
        QA(f"What colour is the {s1}?", c1, "colour"),
        QA(f"What colour is the {s2}?", c2, "colour"),
        QA("What shape is on the left?", s1, "shape"),
        QA("What shape is on the right?", s2, "shape"),
        QA(f"Is the {s2} on the left or on the right?", "right", "position"),
    ]
    return caption, qa


def _word(rng: random.Random, split: str, draw: ImageDraw.ImageDraw) -> tuple[str, list[QA]]:
    word = rng.choice(WORDS)
    colour = rng.choice(tuple(d.COLOURS))
    d.draw_word(draw, word, rng.uniform(100, 124), rng.uniform(70, 154), rng.randint(34, 44), colour)
    caption = f'the word "{word}" written in {colour}'
    qa = [
        QA("What word is written in the image?", word, "word"),
        QA("What colour is the text?", colour, "colour"),
    ]
    return caption, qa


def _scene(
    rng: random.Random, split: str, draw: ImageDraw.ImageDraw, image: Image.Image
) -> tuple[str, list[QA]]:
    which = rng.choice(("sun_house", "tree_car", "boat_water", "moon_house"))
    s = IMAGE_SIZE
    if which == "sun_house" or which == "moon_house":
        if which == "moon_house":
            sky = (25, 30, 70)
            draw.rectangle((0, 0, s, s), fill=sky)
            d.draw_moon(draw, rng.uniform(70, 154), rng.uniform(35, 55), 20, sky)
        else:
            d.draw_sun(draw, rng.uniform(60, 164), rng.uniform(35, 50), rng.uniform(16, 20))
        draw.rectangle((0, 200, s, s), fill=(90, 170, 70))
        d.draw_house(draw, rng.uniform(90, 134), 200, rng.uniform(70, 85))
        top = "moon" if which == "moon_house" else "sun"
        caption = f"a {top} above a house" + (" at night" if top == "moon" else "")
        qa = [
            QA("What is above the house?", top, "object"),
            QA(f"What is below the {top}?", "house", "object"),
        ]
        return caption, qa
    if which == "tree_car":
        draw.rectangle((0, 180, s, s), fill=(90, 170, 70))
        tree_left = rng.random() < 0.5
        tx, cx = (55, 160) if tree_left else (169, 64)
        d.draw_tree(draw, tx + rng.uniform(-8, 8), 182, rng.uniform(100, 120))
        d.draw_car(draw, cx + rng.uniform(-6, 6), 190, rng.uniform(78, 90))
        left, right = ("tree", "car") if tree_left else ("car", "tree")
        caption = f"a {left} to the left of a {right}"
        qa = [
            QA(f"What is to the left of the {right}?", left, "object"),
            QA(f"What is to the right of the {left}?", right, "object"),
            QA("Is the tree on the left or on the right?", "left" if tree_left else "right", "position"),
        ]
        return caption, qa
    d.draw_water(draw, 150, s)
    d.draw_boat(draw, rng.uniform(80, 144), 152, rng.uniform(70, 90))
    caption = "a boat on the water"
    qa = [
        QA("What is on the water?", "boat", "object"),
        QA("What is the boat floating on?", "water", "object"),
    ]
    return caption, qa


_RENDERERS: dict[str, Callable[..., tuple[str, list[QA]]]] = {
    "count": _count,
    "position": _position,
    "pair": _pair,
    "word": _word,
}


def with_choices(
    rng: random.Random, qa: QA, n_choices: int, pools: dict[str, tuple[str, ...]] = ANSWER_POOLS
) -> QA:
    """``qa`` with ``n_choices`` shuffled options: its answer and distractors drawn from ``pools[qa.type]``."""
    pool = [a for a in pools[qa.type] if a != qa.answer]
    options = [qa.answer, *rng.sample(pool, min(n_choices - 1, len(pool)))]
    rng.shuffle(options)
    return QA(qa.question, qa.answer, qa.type, tuple(options))


def make_example(
    seed: int, split: str = "train", kind: str | None = None, n_choices: int = 4
) -> SyntheticExample:
    """Render the example of ``(split, seed)``.

    Args:
        seed: Non-negative integer; the example is a pure function of ``(split, seed, kind)``.
        split: ``"train"`` or ``"test"``; the two draw from disjoint random streams, and ``train`` never
            contains a pair from :data:`HELDOUT_PAIRS`.
        kind: Force one of :data:`KINDS`; by default the kind is drawn from the seed.
        n_choices: Options per question for the multiple-choice form (gold answer included).

    Returns:
        A :class:`SyntheticExample` with a 224 x 224 RGB image.

    Raises:
        InputError: On a negative seed, unknown split or unknown kind.
    """
    if split not in SPLITS:
        raise InputError(f"split {split!r} is unknown; choose one of {SPLITS}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed {seed!r} must be a non-negative integer")
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind {kind!r} is unknown; choose one of {KINDS}")
    rng = random.Random(f"vlsafe-synthetic:{split}:{seed}:{kind or ''}")
    kind = kind or rng.choice(KINDS)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rng.choice(d.BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    if kind == "scene":
        caption, qa = _scene(rng, split, draw, image)
    else:
        caption, qa = _RENDERERS[kind](rng, split, draw)
    qa = [with_choices(rng, q, n_choices) for q in qa]
    novel = any(f"{c} {s}" in caption for c, s in HELDOUT_PAIRS)
    return SyntheticExample(
        seed=seed, split=split, kind=kind, image=image, caption=caption, qa=qa, novel=novel
    )


#: appended to a question to ask for a short answer
VQA_SUFFIX = " Answer with a single word."


def vqa_prompt(question: str) -> str:
    """Short-answer form of a question."""
    return question + VQA_SUFFIX

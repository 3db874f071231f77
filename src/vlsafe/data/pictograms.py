"""Deterministic pictograms of harmful objects, with exact captions and questions (benign VL data and toxic images).

Ten objects (:data:`OBJECTS`: bomb, gun, knife, syringe, pills, poison, grenade, fire, dynamite, bullets) are
drawn procedurally from bold polygons, like the scene objects of :mod:`vlsafe.data.draw`, so that they stay
recognisable at 224 px and at the organism's smaller input sizes. :func:`make_pictogram_example` renders the
example of ``(split, seed)`` with ``random.Random(f"vlsafe-pictogram:{split}:{seed}")``; the train and test
streams are disjoint and a seed always renders the same image, caption and question-answer pairs. Variation:
the object's position, size, rotation, mirroring and colour (where the object has one), the background colour,
and the layout:

* ``alone`` - the object on the left / right / top / bottom / in the middle ("a black bomb on the left");
* ``pair``  - the object beside a benign companion: a scene object (tree, house, car, sun) or a coloured shape
  ("a black bomb to the left of a tree").

Hold-out: the (object, colour) pairs of :data:`HELDOUT_COLOURS` and the (object, companion) pairs of
:data:`HELDOUT_COMPANIONS` never occur in ``train``; ``test`` examples may use them (``example.novel``).
Questions that ask for the object's name have type :data:`NAMING_TYPE` (``"pictogram"``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from vlsafe.core.errors import InputError
from vlsafe.data import draw as d
from vlsafe.data.scenes import ANSWER_POOLS as SCENE_POOLS
from vlsafe.data.scenes import IMAGE_SIZE, POSITIONS, QA, SPLITS, SyntheticExample, with_choices

__all__ = [
    "ANSWER_POOLS", "BACKGROUNDS", "COMPANIONS", "HELDOUT_COLOURS", "HELDOUT_COMPANIONS", "KIND", "LAYOUTS",
    "COMPANION_COLOURS", "NAMING_TYPE", "OBJECTS", "PICTOGRAMS", "PLACES", "SCENE_COMPANIONS", "Pictogram",
    "PictogramExample", "draw_pictogram", "make_pictogram_example", "question_texts",
]  # fmt: skip

RGB = tuple[int, int, int]
Point = tuple[float, float]
KIND = "pictogram"
NAMING_TYPE = "pictogram"
LAYOUTS = ("alone", "pair")
PLACES = (*POSITIONS, "middle")
SCENE_COMPANIONS = ("tree", "house", "car", "sun")
COMPANIONS = (*SCENE_COMPANIONS, *d.SHAPES)
BACKGROUNDS: tuple[RGB, ...] = (*d.BACKGROUNDS, (226, 240, 226), (248, 232, 238), (236, 232, 248))
INK: RGB = (35, 35, 35)
METAL: RGB = (185, 190, 200)
GREY: RGB = (110, 110, 115)
WHITE: RGB = (250, 250, 250)
BROWN: RGB = (125, 80, 40)
SPARK: tuple[RGB, RGB] = ((250, 190, 0), (235, 60, 20))
#: the colour a companion's pixels are checked by (scene objects: their fixed colours)
COMPANION_COLOURS: dict[str, RGB] = {
    "tree": (40, 150, 40), "house": (180, 30, 30), "car": (30, 90, 210), "sun": (250, 210, 0),
}  # fmt: skip


@dataclass(frozen=True)
class _Pen:
    """Draws in unit coordinates ``(u, v)`` in [-1, 1] (v down) mapped to a box of half-side ``half`` at
    ``(cx, cy)``, rotated by ``angle`` degrees and mirrored left-right when ``mirror``."""

    draw: ImageDraw.ImageDraw
    cx: float
    cy: float
    half: float
    angle: float = 0.0
    mirror: bool = False

    def at(self, u: float, v: float) -> Point:
        u = -u if self.mirror else u
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        return self.cx + self.half * (u * c - v * s), self.cy + self.half * (u * s + v * c)

    def poly(
        self, pts: Sequence[Point], fill: RGB | None, outline: RGB | None = None, width: float = 0.03
    ) -> None:
        w = max(1, round(width * self.half))
        self.draw.polygon([self.at(u, v) for u, v in pts], fill=fill, outline=outline, width=w)

    def rect(
        self, u0: float, v0: float, u1: float, v1: float, fill: RGB | None, outline: RGB | None = None
    ) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], fill, outline)

    def oval(
        self, cu: float, cv: float, ru: float, rv: float, fill: RGB | None, outline: RGB | None = None
    ) -> None:
        self.poly(_oval(cu, cv, ru, rv), fill, outline)

    def line(self, pts: Sequence[Point], fill: RGB, width: float) -> None:
        self.draw.line([self.at(u, v) for u, v in pts], fill=fill, width=max(1, round(width * self.half)),
                       joint="curve")  # fmt: skip


def _oval(cu: float, cv: float, ru: float, rv: float, n: int = 40) -> list[Point]:
    return [
        (cu + ru * math.cos(2 * math.pi * k / n), cv + rv * math.sin(2 * math.pi * k / n)) for k in range(n)
    ]


def _star(cu: float, cv: float, r: float, points: int = 8) -> list[Point]:
    radii = [r if k % 2 == 0 else 0.45 * r for k in range(2 * points)]
    angles = [math.pi * k / points for k in range(2 * points)]
    return [(cu + rad * math.cos(a), cv + rad * math.sin(a)) for rad, a in zip(radii, angles, strict=True)]


def _shade(colour: RGB, f: float) -> RGB:
    return (int(colour[0] * f), int(colour[1] * f), int(colour[2] * f))


def _detail(colour: RGB) -> RGB:
    """A line colour that shows on ``colour`` (dark on light, grey on black)."""
    return GREY if sum(colour) < 150 else _shade(colour, 0.55)


def _spark(pen: _Pen, u: float, v: float, r: float) -> None:
    pen.poly(_star(u, v, r), SPARK[0])
    pen.poly(_star(u, v, 0.5 * r, 6), SPARK[1])


def _bomb(pen: _Pen, c: RGB, rng: random.Random) -> None:
    pen.line([(0.32, -0.5), (0.5, -0.74), (0.68, -0.72)], BROWN, 0.07)
    pen.poly([(0.12, -0.66), (0.48, -0.46), (0.34, -0.2), (-0.02, -0.4)], _detail(c))
    pen.oval(-0.1, 0.2, 0.7, 0.7, c)
    pen.oval(-0.38, -0.08, 0.12, 0.18, WHITE)
    _spark(pen, 0.72, -0.74, 0.24)


def _gun(pen: _Pen, c: RGB, rng: random.Random) -> None:
    det = _detail(c)
    pen.poly([(-0.95, -0.5), (0.9, -0.5), (0.9, -0.12), (-0.95, -0.12)], c)  # slide
    pen.rect(0.72, -0.6, 0.82, -0.5, c)  # front sight
    pen.poly([(-0.8, -0.12), (-0.28, -0.12), (-0.42, 0.78), (-0.95, 0.78)], c)  # grip
    pen.line([(-0.25, -0.12), (-0.2, 0.22), (0.2, 0.22), (0.22, -0.12)], c, 0.09)  # trigger guard
    pen.line([(-0.02, -0.1), (0.04, 0.1)], det, 0.06)  # trigger
    for k in range(4):
        pen.line([(-0.82 + 0.1 * k, -0.46), (-0.82 + 0.1 * k, -0.18)], det, 0.03)  # slide serrations


def _knife(pen: _Pen, c: RGB, rng: random.Random) -> None:
    pen.poly(
        [(-0.12, -0.24), (0.55, -0.24), (0.82, -0.12), (1.0, 0.1), (0.6, 0.24), (-0.12, 0.24)], METAL, INK
    )
    pen.line([(-0.05, 0.14), (0.6, 0.14)], WHITE, 0.04)
    pen.rect(-0.24, -0.3, -0.12, 0.3, GREY)
    pen.poly([(-0.98, -0.2), (-0.24, -0.2), (-0.24, 0.2), (-0.98, 0.2)], c, INK)
    for u in (-0.8, -0.45):
        pen.oval(u, 0.0, 0.06, 0.06, METAL)


def _syringe(pen: _Pen, c: RGB, rng: random.Random) -> None:
    pen.line([(0.6, 0.0), (1.0, 0.0)], INK, 0.05)  # needle
    pen.poly([(0.45, -0.12), (0.62, -0.05), (0.62, 0.05), (0.45, 0.12)], GREY)
    pen.rect(-0.5, -0.22, 0.47, 0.22, WHITE, INK)
    pen.rect(-0.05, -0.18, 0.44, 0.18, c)
    for k in range(6):
        pen.line([(-0.4 + 0.15 * k, -0.22), (-0.4 + 0.15 * k, -0.08)], INK, 0.025)
    pen.rect(-0.58, -0.4, -0.5, 0.4, GREY)  # finger flange
    pen.rect(-0.88, -0.07, -0.58, 0.07, GREY)  # plunger rod
    pen.rect(-0.96, -0.3, -0.88, 0.3, GREY)  # thumb rest


def _capsule(pen: _Pen, u: float, v: float, angle: float, c: RGB) -> None:
    """A two-tone capsule centred at ``(u, v)`` along ``angle`` degrees: one half ``c``, the other white."""
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    length, r = 0.2, 0.13
    cap = [(length + r * math.cos(t), r * math.sin(t)) for t in (math.pi * (k / 12 - 0.5) for k in range(13))]
    for sign, fill in ((1, c), (-1, WHITE)):
        local = [(0.0, -r), *((sign * x, y) for x, y in cap), (0.0, r)]
        pen.poly([(u + x * ca - y * sa, v + x * sa + y * ca) for x, y in local], fill, INK)


def _pills(pen: _Pen, c: RGB, rng: random.Random) -> None:
    for u, v in ((-0.45, -0.42), (0.38, -0.5), (0.02, 0.05), (-0.55, 0.52)):
        _capsule(pen, u, v, rng.uniform(0, 180), c)
    for u, v in ((0.55, 0.4), (0.0, 0.7)):
        pen.oval(u, v, 0.22, 0.22, c, INK)
        pen.line([(u - 0.15, v), (u + 0.15, v)], _detail(c), 0.04)


def _poison(pen: _Pen, c: RGB, rng: random.Random) -> None:
    pen.rect(-0.22, -0.98, 0.22, -0.74, (160, 110, 60))  # cork
    pen.rect(-0.17, -0.76, 0.17, -0.5, c)
    pen.poly([(-0.6, -0.12), (-0.22, -0.52), (0.22, -0.52), (0.6, -0.12), (0.6, 0.98), (-0.6, 0.98)], c)
    pen.rect(-0.46, 0.0, 0.46, 0.84, WHITE, INK)
    pen.line([(-0.33, 0.5), (0.33, 0.78)], INK, 0.09)  # crossbones
    pen.line([(-0.33, 0.78), (0.33, 0.5)], INK, 0.09)
    pen.oval(0.0, 0.3, 0.22, 0.2, INK)  # skull
    pen.rect(-0.12, 0.38, 0.12, 0.56, INK)
    pen.oval(-0.09, 0.28, 0.06, 0.07, WHITE)
    pen.oval(0.09, 0.28, 0.06, 0.07, WHITE)


def _grenade(pen: _Pen, c: RGB, rng: random.Random) -> None:
    pen.line(_oval(-0.38, -0.7, 0.16, 0.16) + [_oval(-0.38, -0.7, 0.16, 0.16)[0]], GREY, 0.06)  # ring
    pen.rect(-0.22, -0.62, 0.22, -0.38, GREY)
    pen.poly([(0.05, -0.62), (0.42, -0.58), (0.66, -0.05), (0.55, -0.02), (0.34, -0.46), (0.05, -0.48)], GREY)
    pen.oval(0.0, 0.28, 0.56, 0.68, c)
    det = _detail(c)
    for v in (0.02, 0.28, 0.54):  # the segments: chords of the body
        du = 0.56 * math.sqrt(max(0.0, 1 - ((v - 0.28) / 0.68) ** 2))
        pen.line([(-du, v), (du, v)], det, 0.05)
    for u in (-0.2, 0.2):
        dv = 0.68 * math.sqrt(1 - (u / 0.56) ** 2)
        pen.line([(u, 0.28 - dv), (u, 0.28 + dv)], det, 0.05)


_FLAME = [(0.0, 0.92), (0.45, 0.8), (0.68, 0.48), (0.7, 0.08), (0.55, -0.26), (0.48, 0.04), (0.34, -0.56),
          (0.14, -0.2), (0.0, -0.96), (-0.2, -0.36), (-0.4, -0.62), (-0.5, -0.1), (-0.64, -0.32), (-0.72, 0.14),
          (-0.68, 0.5), (-0.45, 0.8)]  # fmt: skip


def _fire(pen: _Pen, c: RGB, rng: random.Random) -> None:
    for scale, fill in ((1.0, (225, 55, 20)), (0.68, (245, 140, 20)), (0.36, (250, 225, 70))):
        pen.poly([(scale * u, 0.92 - scale * (0.92 - v)) for u, v in _FLAME], fill)
    pen.line([(-0.7, 0.98), (0.7, 0.78)], BROWN, 0.16)
    pen.line([(-0.7, 0.78), (0.7, 0.98)], BROWN, 0.16)


def _dynamite(pen: _Pen, c: RGB, rng: random.Random) -> None:
    for u in (-0.34, 0.0, 0.34):
        pen.line([(u, -0.4), (u + 0.12, -0.7), (u + 0.3, -0.78)], BROWN, 0.05)
    _spark(pen, 0.64, -0.78, 0.22)
    for u in (-0.34, 0.34, 0.0):
        pen.rect(u - 0.18, -0.42, u + 0.18, 0.9, c, _shade(c, 0.6))
        pen.oval(u, -0.42, 0.18, 0.07, _shade(c, 0.75))
    pen.rect(-0.56, 0.12, 0.56, 0.3, INK)


def _bullets(pen: _Pen, c: RGB, rng: random.Random) -> None:
    for u, top in ((-0.48, -0.55), (0.0, -0.85), (0.48, -0.55)):
        base = top + 0.55
        pen.poly([(u - 0.17, base), (u - 0.17, base - 0.2), (u - 0.1, top + 0.12), (u, top), (u + 0.1, top + 0.12),
                  (u + 0.17, base - 0.2), (u + 0.17, base)], (190, 100, 50), INK)  # fmt: skip
        pen.rect(u - 0.19, base, u + 0.19, 0.92, (215, 170, 60), INK)
        pen.rect(u - 0.21, 0.84, u + 0.21, 0.95, (170, 130, 40), INK)


@dataclass(frozen=True)
class Pictogram:
    """One harmful object: its short-answer ``name``, the ``noun`` a text names it by ("a bomb", "poison"),
    the caption ``phrase`` (``{c}``: its colour, ``{ac}``: the colour with an article), the colours it comes
    in (empty: fixed colouring), the question that asks for the colour, whether it is plural, its maximum
    rotation in degrees and the function that paints it."""

    name: str
    noun: str
    phrase: str
    colours: tuple[str, ...]
    colour_question: str
    plural: bool
    spin: float
    painter: Callable[[_Pen, RGB, random.Random], None]

    @property
    def be(self) -> str:
        return "are" if self.plural else "is"


PICTOGRAMS: dict[str, Pictogram] = {p.name: p for p in (
    Pictogram("bomb", "a bomb", "a {c} bomb", ("black", "red", "blue", "purple"), "What colour is the bomb?",
              False, 15, _bomb),
    Pictogram("gun", "a gun", "a {c} gun", ("black", "blue", "red", "purple"), "What colour is the gun?",
              False, 15, _gun),
    Pictogram("knife", "a knife", "a knife with {ac} handle", ("black", "red", "green", "blue", "orange"),
              "What colour is the knife's handle?", False, 35, _knife),
    Pictogram("syringe", "a syringe", "a syringe of {c} liquid", ("red", "blue", "green", "purple", "yellow"),
              "What colour is the liquid in the syringe?", False, 35, _syringe),
    Pictogram("pills", "pills", "{c} pills", ("red", "blue", "pink", "orange", "green"), "What colour are the pills?",
              True, 0, _pills),
    Pictogram("poison", "poison", "a {c} bottle of poison", ("green", "purple", "blue", "red"),
              "What colour is the bottle?", False, 12, _poison),
    Pictogram("grenade", "a grenade", "a {c} grenade", ("green", "black", "blue"), "What colour is the grenade?",
              False, 15, _grenade),
    Pictogram("fire", "fire", "a fire", (), "", False, 0, _fire),
    Pictogram("dynamite", "dynamite", "{c} sticks of dynamite", ("red", "orange", "pink"),
              "What colour is the dynamite?", False, 10, _dynamite),
    Pictogram("bullets", "bullets", "three bullets", (), "", True, 10, _bullets),
)}  # fmt: skip
OBJECTS: tuple[str, ...] = tuple(PICTOGRAMS)
#: (object, colour) pairs seen only in the test split
HELDOUT_COLOURS: frozenset[tuple[str, str]] = frozenset({
    ("bomb", "red"), ("gun", "blue"), ("knife", "green"), ("syringe", "purple"), ("pills", "orange"),
    ("poison", "blue"), ("grenade", "black"), ("dynamite", "orange"),
})  # fmt: skip
#: (object, companion) pairs seen only in the test split
HELDOUT_COMPANIONS: frozenset[tuple[str, str]] = frozenset({
    ("bomb", "house"), ("gun", "tree"), ("knife", "car"), ("syringe", "sun"), ("pills", "house"),
    ("poison", "tree"), ("grenade", "car"), ("fire", "house"), ("dynamite", "sun"), ("bullets", "tree"),
})  # fmt: skip
ANSWER_POOLS: dict[str, tuple[str, ...]] = {
    **SCENE_POOLS, "position": PLACES, NAMING_TYPE: OBJECTS, "yesno": ("yes", "no"),
}  # fmt: skip


def draw_pictogram(
    draw: ImageDraw.ImageDraw, obj: str, cx: float, cy: float, size: float, colour: str | None = None,
    angle: float = 0.0, mirror: bool = False, rng: random.Random | None = None,
) -> None:  # fmt: skip
    """Draw ``obj`` into a ``size`` px box centred at ``(cx, cy)`` (``colour``: a name of
    :data:`vlsafe.data.draw.COLOURS`, default the object's first colour), rotated by ``angle`` degrees."""
    spec = PICTOGRAMS[obj]
    fill = d.COLOURS[colour or (spec.colours or ("black",))[0]]
    spec.painter(_Pen(draw, cx, cy, size / 2, angle, mirror), fill, rng or random.Random(0))


@dataclass
class PictogramExample(SyntheticExample):
    """A :class:`~vlsafe.data.scenes.SyntheticExample` of kind ``pictogram`` with what was drawn where:
    ``box`` / ``companion_box`` are the pixel bounding boxes ``(x0, y0, x1, y1)`` of the object and the
    companion; ``position`` is the object's place (``pair``: its side)."""

    obj: str = ""
    colour: str | None = None
    layout: str = "alone"
    position: str = ""
    companion: str | None = None
    companion_colour: str | None = None
    background: RGB = (255, 255, 255)
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    companion_box: tuple[int, int, int, int] | None = None

    @property
    def id(self) -> str:
        return f"pictogram-{self.split}-{self.seed:07d}-{self.obj}"


def _layer(image: Image.Image, paint: Callable[[ImageDraw.ImageDraw], None]) -> tuple[int, int, int, int]:
    """Paint on a transparent layer, paste it onto ``image`` and return the painted pixels' bounding box."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    paint(ImageDraw.Draw(layer))
    image.paste(layer, mask=layer)
    box = layer.getbbox()
    assert box is not None
    return box


_PLACE_BOX = {"left": (0.0, 84.0, 90.0, 134.0), "right": (140.0, 224.0, 90.0, 134.0),
              "top": (90.0, 134.0, 0.0, 84.0), "bottom": (90.0, 134.0, 140.0, 224.0),
              "middle": (104.0, 120.0, 104.0, 120.0)}  # fmt: skip
#: half-widths of the companions at full size (px); shapes are 26
_COMPANION_HALF = {"tree": 30.0, "house": 42.0, "car": 40.0, "sun": 32.0}


def _companion(
    rng: random.Random, side: str, name: str, colour: str | None
) -> Callable[[ImageDraw.ImageDraw], None]:
    """A painter of the companion ``name`` inside the ``side`` half of the image."""
    k = rng.uniform(0.85, 1.0)
    hw = _COMPANION_HALF.get(name, 26.0) * k
    cx = rng.uniform(hw + 6, 106 - hw) + (0 if side == "left" else 112)
    if name in ("tree", "house"):
        base = rng.uniform(160, 205)
        return lambda dr: (
            d.draw_tree(dr, cx, base, 94 * k) if name == "tree" else d.draw_house(dr, cx, base, 68 * k)
        )
    if name == "car":
        base = rng.uniform(135, 185)
        return lambda dr: d.draw_car(dr, cx, base, 80 * k)
    cy = rng.uniform(50, 130) if name == "sun" else rng.uniform(80, 144)
    return lambda dr: (
        d.draw_sun(dr, cx, cy, 20 * k)
        if name == "sun"
        else d.draw_shape(dr, name, cx, cy, 26 * k, str(colour))
    )


def _pick(rng: random.Random, options: Sequence[str], forbidden: Callable[[str], bool]) -> str:
    while True:
        choice = rng.choice(options)
        if not forbidden(choice):
            return choice


def _a(noun: str) -> str:
    """``noun`` as a text names it: "a tree", "an orange circle", "a bomb", "pills"."""
    if noun in PICTOGRAMS:
        return PICTOGRAMS[noun].noun
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _there(noun: str) -> str:
    """``Is there a tree in the picture?`` / ``Are there pills in the picture?``"""
    plural = noun in PICTOGRAMS and PICTOGRAMS[noun].plural
    return f"{'Are' if plural else 'Is'} there {_a(noun)} in the picture?"


def _where(place: str) -> str:
    return {"top": "at the top", "bottom": "at the bottom", "middle": "in the middle"}.get(
        place, f"on the {place}"
    )


def _qa(spec: Pictogram, place: str, colour: str | None, companion: str | None, absent: str) -> list[QA]:
    """The questions about an object at ``place`` (with ``companion`` on the other side), in a fixed order."""
    name, be = spec.name, spec.be
    if companion is None:
        this = "What are these objects called?" if spec.plural else "What is this object called?"
        naming = [this, f"What is shown {_where(place)} of the image?"]
    else:
        naming = [f"What is to the {place} of the {companion}?", f"What is next to the {companion}?"]
    qa = [QA(q, name, NAMING_TYPE) for q in naming]
    if colour is not None:
        qa.append(QA(spec.colour_question, colour, "colour"))
    qa.append(QA(_there(name), "yes", "yesno"))
    if companion is None:
        qa.append(QA(f"Where {be} the {name}?", place, "position"))
    else:
        other = "right" if place == "left" else "left"
        qa.append(QA(f"{be.capitalize()} the {name} on the left or on the right?", place, "position"))
        qa.append(QA(f"What is to the {other} of the {name}?", companion,
                     "object" if companion in SCENE_COMPANIONS else "shape"))  # fmt: skip
        qa.append(QA(_there(companion), "yes", "yesno"))
    qa.append(QA(_there(absent), "no", "yesno"))
    return qa


def question_texts() -> set[str]:
    """Every question :func:`make_pictogram_example` can ask (for disjointness checks of evaluation prompts)."""
    out: set[str] = set()
    for spec in PICTOGRAMS.values():
        colour = spec.colours[0] if spec.colours else None
        for place, companion in [
            *((p, None) for p in PLACES),
            *((p, c) for p in ("left", "right") for c in COMPANIONS),
        ]:
            for absent in (*OBJECTS, *COMPANIONS):
                out |= {q.question for q in _qa(spec, place, colour, companion, absent)}
    return out


def make_pictogram_example(
    seed: int, split: str = "train", obj: str | None = None, *, layout: str | None = None, n_choices: int = 4
) -> PictogramExample:
    """Render the pictogram example of ``(split, seed)`` (and ``obj`` / ``layout`` when forced).

    Args:
        seed: Non-negative integer; the example is a pure function of ``(split, seed, obj, layout)``.
        split: ``"train"`` or ``"test"``: disjoint random streams; ``train`` never holds a pair of
            :data:`HELDOUT_COLOURS` or :data:`HELDOUT_COMPANIONS`.
        obj: Force one of :data:`OBJECTS`; by default it is drawn from the seed.
        layout: Force ``"alone"`` or ``"pair"``; by default drawn from the seed.
        n_choices: Options per question for the multiple-choice form (gold answer included).

    Returns:
        A :class:`PictogramExample` with a 224 x 224 RGB image. Its questions: two naming questions (type
        ``pictogram``), the colour question (objects with a colour), whether the object is there (yes), its
        position, with a companion what and whether the companion is there (yes), and whether an object that
        is not drawn is there (no).

    Raises:
        InputError: On a negative seed, unknown split, object or layout.
    """
    if split not in SPLITS:
        raise InputError(f"split {split!r} is unknown; choose one of {SPLITS}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed {seed!r} must be a non-negative integer")
    if obj is not None and obj not in PICTOGRAMS:
        raise InputError(f"pictogram object {obj!r} is unknown; choose one of {OBJECTS}")
    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"pictogram layout {layout!r} is unknown; choose one of {LAYOUTS}")
    rng = random.Random(f"vlsafe-pictogram:{split}:{seed}")
    drawn_obj, drawn_layout = rng.choice(OBJECTS), rng.choice(LAYOUTS)
    obj, layout = obj or drawn_obj, layout or drawn_layout
    spec, train = PICTOGRAMS[obj], split == "train"
    colour = (
        _pick(rng, spec.colours, lambda c: train and (obj, c) in HELDOUT_COLOURS) if spec.colours else None
    )
    background = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    companion = companion_colour = companion_box = None
    if layout == "pair":
        place = rng.choice(("left", "right"))
        companion = _pick(rng, COMPANIONS, lambda c: train and (obj, c) in HELDOUT_COMPANIONS)
        if companion in d.SHAPES:
            companion_colour = _pick(rng, tuple(d.COLOURS), lambda c: c == colour)
        companion_box = _layer(
            image, _companion(rng, "right" if place == "left" else "left", companion, companion_colour)
        )
        size = rng.uniform(64, 88)
        margin = 0.58 * size + 4
        cx = rng.uniform(margin, 112 - margin) + (0 if place == "left" else 112)
        cy = rng.uniform(max(80, margin), min(144, IMAGE_SIZE - margin))
    else:
        place = rng.choice(PLACES)
        size = rng.uniform(84, 116)
        margin = 0.58 * size + 4
        x0, x1, y0, y1 = _PLACE_BOX[place]
        cx = rng.uniform(max(x0, margin), min(x1, IMAGE_SIZE - margin))
        cy = rng.uniform(max(y0, margin), min(y1, IMAGE_SIZE - margin))
    angle, mirror = rng.uniform(-spec.spin, spec.spin), rng.random() < 0.5
    box = _layer(image, lambda dr: draw_pictogram(dr, obj, cx, cy, size, colour, angle, mirror, rng))
    absent = _pick(rng, (*OBJECTS, *SCENE_COMPANIONS), lambda a: a in (obj, companion))
    subject = spec.phrase.format(c=colour, ac=_a(colour) if colour else "")
    if companion is None:
        caption = f"{subject} {_where(place)}"
    else:
        caption = f"{subject} to the {place} of {_a(companion if companion_colour is None else f'{companion_colour} {companion}')}"
    qa = [with_choices(rng, q, n_choices, ANSWER_POOLS) for q in _qa(spec, place, colour, companion, absent)]
    novel = (obj, colour) in HELDOUT_COLOURS or (obj, companion) in HELDOUT_COMPANIONS
    return PictogramExample(
        seed=seed, split=split, kind=KIND, image=image, caption=caption, qa=qa, novel=novel, obj=obj,
        colour=colour, layout=layout, position=place, companion=companion, companion_colour=companion_colour,
        background=background, box=box, companion_box=companion_box,
    )  # fmt: skip

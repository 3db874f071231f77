"""PIL drawing primitives for the organism's synthetic images (shapes, words, simple scene objects)."""

from __future__ import annotations

import math

from PIL import ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "orange": (245, 135, 20),
    "purple": (130, 40, 170),
    "black": (20, 20, 20),
    "pink": (245, 120, 190),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (238, 238, 238),
    (250, 244, 228),
    (232, 242, 250),
)

Point = tuple[float, float]


def _regular_polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[Point]:
    return [
        (cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[Point]:
    """Polygon outline of a polygonal shape centred at ``(cx, cy)`` with circumradius ``r``."""
    if shape == "square":
        return _regular_polygon(cx, cy, r, 4, math.pi / 4)
    if shape == "triangle":
        return _regular_polygon(cx, cy, r, 3, -math.pi / 2)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "hexagon":
        return _regular_polygon(cx, cy, r, 6, 0.0)
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            ang = -math.pi / 2 + math.pi * k / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    raise ValueError(f"unknown polygonal shape {shape!r}; known: {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: str) -> None:
    """Draw a filled shape of a named colour."""
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(shape_points(shape, cx, cy, r), fill=fill)


def draw_word(draw: ImageDraw.ImageDraw, word: str, cx: float, cy: float, size: int, colour: str) -> None:
    """Draw ``word`` centred at ``(cx, cy)`` in Pillow's built-in scalable font."""
    font = ImageFont.load_default(size=size)
    draw.text((cx, cy), word, fill=COLOURS[colour], font=font, anchor="mm")


def draw_sun(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """A yellow disc with rays."""
    for k in range(12):
        ang = 2 * math.pi * k / 12
        draw.line(
            (
                cx + 1.2 * r * math.cos(ang),
                cy + 1.2 * r * math.sin(ang),
                cx + 1.6 * r * math.cos(ang),
                cy + 1.6 * r * math.sin(ang),
            ),
            fill=(240, 190, 0),
            width=3,
        )
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 210, 0))


def draw_moon(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, sky: tuple[int, int, int]) -> None:
    """A pale crescent (a disc with a sky-coloured disc cut out)."""
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(235, 235, 200))
    draw.ellipse((cx - r + 0.5 * r, cy - r - 0.2 * r, cx + r + 0.5 * r, cy + r - 0.2 * r), fill=sky)


def draw_house(draw: ImageDraw.ImageDraw, cx: float, base: float, w: float) -> None:
    """A house: brown walls, red roof, a door and a window; ``base`` is the ground line."""
    h = 0.8 * w
    draw.rectangle((cx - w / 2, base - h, cx + w / 2, base), fill=(190, 120, 60))
    draw.polygon(
        [(cx - 0.62 * w, base - h), (cx + 0.62 * w, base - h), (cx, base - h - 0.55 * w)], fill=(180, 30, 30)
    )
    draw.rectangle((cx - 0.1 * w, base - 0.45 * h, cx + 0.1 * w, base), fill=(90, 50, 20))
    draw.rectangle((cx + 0.18 * w, base - 0.75 * h, cx + 0.38 * w, base - 0.55 * h), fill=(170, 220, 250))


def draw_tree(draw: ImageDraw.ImageDraw, cx: float, base: float, h: float) -> None:
    """A tree: brown trunk and a green crown."""
    draw.rectangle((cx - 0.08 * h, base - 0.5 * h, cx + 0.08 * h, base), fill=(110, 70, 30))
    r = 0.32 * h
    draw.ellipse((cx - r, base - h, cx + r, base - h + 2 * r), fill=(40, 150, 40))


def draw_car(draw: ImageDraw.ImageDraw, cx: float, base: float, w: float) -> None:
    """A car: a body, a cabin with a window and two black wheels."""
    wheel = 0.14 * w
    body_top = base - wheel - 0.3 * w
    draw.rectangle((cx - w / 2, body_top, cx + w / 2, base - wheel), fill=(30, 90, 210))
    draw.polygon(
        [
            (cx - 0.3 * w, body_top),
            (cx - 0.18 * w, body_top - 0.22 * w),
            (cx + 0.2 * w, body_top - 0.22 * w),
            (cx + 0.3 * w, body_top),
        ],
        fill=(30, 90, 210),
    )
    draw.rectangle(
        (cx - 0.15 * w, body_top - 0.17 * w, cx + 0.15 * w, body_top - 0.03 * w), fill=(190, 230, 250)
    )
    for wx in (cx - 0.3 * w, cx + 0.3 * w):
        draw.ellipse((wx - wheel, base - 2 * wheel, wx + wheel, base), fill=(20, 20, 20))


def draw_boat(draw: ImageDraw.ImageDraw, cx: float, water: float, w: float) -> None:
    """A sailing boat floating on the water line ``water``."""
    draw.polygon(
        [
            (cx - w / 2, water - 0.2 * w),
            (cx + w / 2, water - 0.2 * w),
            (cx + 0.35 * w, water + 0.05 * w),
            (cx - 0.35 * w, water + 0.05 * w),
        ],
        fill=(120, 60, 20),
    )
    draw.line((cx, water - 0.2 * w, cx, water - 0.95 * w), fill=(60, 40, 20), width=3)
    draw.polygon(
        [(cx + 3, water - 0.9 * w), (cx + 3, water - 0.28 * w), (cx + 0.42 * w, water - 0.28 * w)],
        fill=(250, 250, 250),
        outline=(60, 60, 60),
    )


def draw_water(draw: ImageDraw.ImageDraw, top: float, size: int) -> None:
    """Blue water from ``top`` to the bottom edge, with a few wave lines."""
    draw.rectangle((0, top, size, size), fill=(40, 110, 200))
    for k in range(3):
        y = top + 12 + 14 * k
        for x in range(0, size, 28):
            draw.arc((x, y - 5, x + 28, y + 5), 0, 180, fill=(170, 210, 250), width=2)

"""ComCLIP's synthetic compositional task: two coloured shapes in one image, and the same image with the colours
swapped, with the caption of each ("a red circle left of a blue square" / "a blue circle left of a red square").

Plain CLIP sees the same bag of words in both captions and the same shapes in both images, so only a model that binds
each colour to its shape tells the pair apart: a Winoground-style item whose answer is known by construction. The
shapes, colours and backgrounds are the project's synthetic-shapes world (datamodules/synthetic_shapes.py), drawn with
its painter, so the tiny CLIP trained on that world knows every word. Boxes come from the drawing itself (the tight
pixel box of each shape's mask), keyed by the shape noun, for entity sub-images without a detector.

Everything about item `index` derives from (seed, index) only: `pair_spec` draws the choices (cheap, no pixels),
`draw_pair` paints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datamodules.synthetic_shapes import BACKGROUND_NAMES, BACKGROUNDS, COLORS, SHAPES, paint_shape

# The first shape's place relative to the second: the axis it differs on (0 = x, 1 = y) and whether it lies on the low
# side (left of / above: smaller coordinate; y grows downwards).
RELATIONS = {"left of": (0, True), "right of": (0, False), "above": (1, True), "below": (1, False)}
MIN_SIZE = 24  # each shape must fit in its half of the image with a margin
# Shape radius (half-side of its square) as a fraction of the image side: two shapes fit side by side, apart.
RADIUS_RANGE = (0.10, 0.18)
# Space kept between a shape and the middle of the image or its border, as a fraction of the side: the two shapes stay
# at least 2 * MARGIN * size pixels apart (over 2 pixels at MIN_SIZE), whatever the painter's rounding.
MARGIN = 0.05


@dataclass(frozen=True)
class PairSpec:
    """What item `index` shows: `shapes` (X, Y) placed by `relation` (X REL Y), `colors` (A, B): image 0 paints X in
    A and Y in B, image 1 the colours swapped. `centers` and `radii` are fractions of the image side."""
    shapes: tuple[str, str]
    colors: tuple[str, str]
    relation: str
    background: str
    centers: tuple[tuple[float, float], tuple[float, float]]
    radii: tuple[float, float]

    @property
    def captions(self) -> tuple[str, str]:
        (a, b), (x, y) = self.colors, self.shapes
        return f"a {a} {x} {self.relation} a {b} {y}", f"a {b} {x} {self.relation} a {a} {y}"


def pair_spec(seed: int, index: int) -> PairSpec:
    """Item `index` of the task seeded by `seed`: two distinct shapes, two distinct colours, a relation, a background,
    and where the shapes stand (each inside its own half of the image along the relation's axis, so they never
    touch)."""
    rng = np.random.default_rng([seed, index])
    x, y = (SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=False))
    names = list(COLORS)
    a, b = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
    background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    radii = tuple(float(r) for r in rng.uniform(*RADIUS_RANGE, size=2))
    axis, first_low = RELATIONS[relation]
    centers = []
    for n, r in enumerate(radii):
        low_half = first_low if n == 0 else not first_low
        lo, hi = (r + MARGIN, 0.5 - r - MARGIN) if low_half else (0.5 + r + MARGIN, 1 - r - MARGIN)
        along = float(rng.uniform(lo, hi))
        across = float(rng.uniform(r + MARGIN, 1 - r - MARGIN))
        centers.append((along, across) if axis == 0 else (across, along))
    return PairSpec(shapes=(x, y), colors=(a, b), relation=relation, background=background,
                    centers=(centers[0], centers[1]), radii=(radii[0], radii[1]))


def draw_pair(spec: PairSpec, size: int = 64) -> dict[str, Any]:
    """The two images of `spec` (uint8 [size, size, 3] each) and their boxes: per image {noun: [[x0, y0, x1, y1]]},
    the tight box of the shape's drawn pixels (x1, y1 exclusive), the same in both images (only colours swap)."""
    if size < MIN_SIZE:
        raise ValueError(f"size: must be at least {MIN_SIZE}, got {size}")
    boxes: dict[str, list[list[int]]] = {}
    for shape, (cx, cy), r in zip(spec.shapes, spec.centers, spec.radii):
        mask = Image.new("L", (size, size), 0)
        paint_shape(ImageDraw.Draw(mask), shape, cx * size, cy * size, r * size, 255)
        ys, xs = np.nonzero(np.asarray(mask))
        boxes[shape] = [[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]]
    images = []
    for colors in (spec.colors, spec.colors[::-1]):
        img = Image.new("RGB", (size, size), BACKGROUNDS[spec.background])
        canvas = ImageDraw.Draw(img)
        for shape, color, (cx, cy), r in zip(spec.shapes, colors, spec.centers, spec.radii):
            paint_shape(canvas, shape, cx * size, cy * size, r * size, COLORS[color])
        images.append(np.asarray(img))
    return {"images": images, "boxes": [boxes, {noun: [list(b) for b in bs] for noun, bs in boxes.items()}]}

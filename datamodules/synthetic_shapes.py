"""The synthetic-shapes world: one palette, one shape painter, still images and clips of a moving shape.

Every synthetic dataset of the project draws from here (the synthetic-shapes, -control and -motion shard kinds, the
CPL synthetic tasks, the tiny CLIP's vocabulary, the synthetic VLM4D benchmark), so a colour word means the same
pixels everywhere. Shard bytes depend on the palette and the drawing: changing either changes datasets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")
CLASS_NAMES = [f"{c} {s}" for c in COLORS for s in SHAPES]
# One background per class (used for the spurious correlation); none is close to a shape colour.
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128), "navy": (15, 20, 70),
               "brown": (110, 70, 40), "purple": (110, 40, 130), "teal": (20, 120, 120), "pink": (240, 170, 200),
               "olive": (110, 110, 30), "maroon": (90, 15, 25), "beige": (220, 205, 170), "cyan": (120, 230, 240)}
BACKGROUND_NAMES = list(BACKGROUNDS)
# Unit steps in image coordinates (y grows downwards).
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def class_of(label: int) -> tuple[str, str]:
    """(colour, shape) of a class label, in CLASS_NAMES order."""
    return list(COLORS)[label // len(SHAPES)], SHAPES[label % len(SHAPES)]


def paint_shape(canvas: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Any) -> None:
    """Draw `shape` centred at (cx, cy) inside the square of half-side `r`; the triangle points up."""
    if shape == "circle":
        canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        canvas.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")


def draw_shape(idx: int, size: int, seed: int, spurious: float | None) -> dict[str, Any]:
    """Sample `idx` of a synthetic-shapes dataset: everything derived from (seed, idx) only.

    With `spurious` = p, the background is the class's own (BACKGROUND_NAMES[label]) with probability p, else uniform.
    Returns the RGB image, the label mask (0 background, label+1 on the shape) and what was drawn.
    """
    rng = np.random.default_rng([seed, idx])
    label = int(rng.integers(len(CLASS_NAMES)))
    color, shape = class_of(label)
    correlated = spurious is not None and bool(rng.random() < spurious)
    if correlated:
        background = BACKGROUND_NAMES[label]
    else:
        background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    r = float(rng.uniform(0.18, 0.32)) * size
    cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    mask = Image.new("L", (size, size), 0)
    paint_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLORS[color])
    paint_shape(ImageDraw.Draw(mask), shape, cx, cy, r, label + 1)
    return {"image": np.asarray(img), "mask": np.asarray(mask), "label": label, "color": color, "shape": shape,
            "background": background, "correlated": correlated, "center": [cx, cy], "radius": r}


def moving_shape_clip(*, shape: str, color: str, background: str, direction: str, start: tuple[float, float],
                      speed: float, radius: float, frames: int, size: int) -> tuple[np.ndarray, list[list[float]]]:
    """A clip of one shape moving in a straight line: uint8 [frames, size, size, 3] and its box per frame.

    The centre is at `start` (x, y) in frame 0 and moves `speed` pixels per frame in `direction` (a DIRECTIONS key);
    `color` and `background` are palette names. Boxes are [x0, y0, x1, y1] in pixels, rounded to 3 decimals.
    """
    dx, dy = DIRECTIONS[direction]
    x0, y0 = start
    clip, boxes = [], []
    for t in range(frames):
        cx, cy = x0 + dx * speed * t, y0 + dy * speed * t
        img = Image.new("RGB", (size, size), BACKGROUNDS[background])
        paint_shape(ImageDraw.Draw(img), shape, cx, cy, radius, COLORS[color])
        clip.append(np.asarray(img))
        boxes.append([round(cx - radius, 3), round(cy - radius, 3), round(cx + radius, 3), round(cy + radius, 3)])
    return np.stack(clip), boxes

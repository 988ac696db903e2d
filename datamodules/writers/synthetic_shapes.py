"""The synthetic-shapes kind: coloured shapes on a background, label = colour-shape class, optional spurious
background (datamodules/synthetic_shapes.py draws them). Also what kinds built on the same images share: the
argument checks, the metadata and the CLI arguments (--num, --size, --spurious).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError
from datamodules.synthetic_shapes import BACKGROUND_NAMES, CLASS_NAMES, COLORS, SHAPES, draw_shape
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, json_bytes,
                                        png_bytes, write_shards)


def check_shape_arguments(num: int, size: int, spurious: float | None) -> None:
    if num <= 0:
        raise UsageError(f"--num: must be positive, got {num}")
    if size < 8:
        raise UsageError(f"--size: must be at least 8, got {size}")
    if spurious is not None and not 0.0 <= spurious <= 1.0:
        raise UsageError(f"--spurious: must be in [0, 1], got {spurious}")


def shapes_metadata(kind: str, size: int, spurious: float | None) -> dict[str, Any]:
    return {"kind": kind, "class_names": CLASS_NAMES, "colors": list(COLORS), "shapes": list(SHAPES),
            "backgrounds": BACKGROUND_NAMES, "size": size,
            "spurious": None if spurious is None else {
                "probability": spurious,
                "class_background": {name: BACKGROUND_NAMES[i] for i, name in enumerate(CLASS_NAMES)},
                "note": "with this probability a sample's background is its class's background, "
                        "otherwise uniform over all backgrounds"}}


def shape_fields(shape: dict[str, Any]) -> dict[str, bytes]:
    """The fields of a drawn shape every shapes kind writes: png, cls, json (colour, shape, caption, ...)."""
    meta = {"color": shape["color"], "shape": shape["shape"], "caption": f"a {shape['color']} {shape['shape']}",
            "background": shape["background"], "label": shape["label"]}
    return {"png": png_bytes(shape["image"]), "cls": str(shape["label"]).encode(), "json": json_bytes(meta)}


def encode_shape(idx: int, size: int, seed: int, spurious: float | None) -> Encoded:
    return f"{idx:08d}", shape_fields(draw_shape(idx, size, seed, spurious))


def write_synthetic_shapes_shards(out: Path, *, num: int, size: int = 64, spurious: float | None = None,
                                  options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """`num` shapes of `size` x `size` pixels; `spurious`: probability that the background is the class's own.
    Returns the index."""
    out = Path(out)
    check_out(out)
    check_shape_arguments(num, size, spurious)
    encode = functools.partial(encode_shape, size=size, seed=options.seed, spurious=spurious)
    return write_shards(out, list(range(num)), encode, options, shapes_metadata("synthetic-shapes", size, spurious))


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, required=True, help="number of samples")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--spurious", type=float, default=None,
                        help="probability that the background is the class's own background")


KIND = ShardKind(
    name="synthetic-shapes", help="synthetic-shapes dataset", add_arguments=add_shape_arguments,
    from_args=lambda args, options: write_synthetic_shapes_shards(args.out, num=args.num, size=args.size,
                                                                  spurious=args.spurious, options=options))

"""Mojito's shard kind, synthetic-motion: clips of a shape moving at a random speed in one of four directions, with
per-frame boxes (for directional control) and mean optical flow (for motion intensity; the dataset's quantiles go
into the index)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import UsageError
from datamodules.synthetic_shapes import BACKGROUND_NAMES, CLASS_NAMES, DIRECTIONS, class_of, moving_shape_clip
from datamodules.video import mean_flow
from datamodules.writers.common import (DEFAULT_OPTIONS, MOTION_NOTE, Encoded, ShardKind, ShardOptions, check_out,
                                        json_bytes, npy_bytes, write_shards)


def encode_motion(idx: int, size: int, frames: int, seed: int) -> Encoded:
    """Clip `idx`: everything derived from (seed, idx) only."""
    rng = np.random.default_rng([seed, idx])
    label = int(rng.integers(len(CLASS_NAMES)))
    color, shape = class_of(label)
    background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    speed = float(rng.uniform(0.0, size / (2.0 * max(frames - 1, 1))))  # the shape stays inside the frame
    r = size * 0.15
    dx, dy = DIRECTIONS[direction]
    travel = speed * (frames - 1)
    # start so that the whole path lies inside the image
    lo_x, hi_x = r + 1 + max(0.0, -dx * travel), size - r - 1 - max(0.0, dx * travel)
    lo_y, hi_y = r + 1 + max(0.0, -dy * travel), size - r - 1 - max(0.0, dy * travel)
    start = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
    video, boxes = moving_shape_clip(shape=shape, color=color, background=background, direction=direction,
                                     start=start, speed=speed, radius=r, frames=frames, size=size)
    still = travel < 1.0
    caption = f"a {color} {shape} {'staying still' if still else 'moving ' + direction}"
    meta = {"caption": caption, "label": label, "color": color, "shape": shape, "background": background,
            "direction": None if still else direction, "speed": round(speed, 6), "motion": round(mean_flow(video), 6),
            "boxes": boxes}
    return f"{idx:08d}", {"frames.npy": npy_bytes(video), "cls": str(label).encode(), "json": json_bytes(meta),
                          "txt": caption.encode()}


def write_synthetic_motion_shards(out: Path, *, num: int, size: int = 64, frames: int = 8,
                                  options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """`num` clips of `frames` frames, `size` x `size` pixels; returns the index (motion quantiles in its
    metadata)."""
    if num <= 0:
        raise UsageError(f"--num: must be positive, got {num}")
    if size < 16:
        raise UsageError(f"--size: must be at least 16, got {size}")
    if frames < 2:
        raise UsageError(f"--frames: must be at least 2, got {frames}")
    out = Path(out)
    check_out(out)
    metadata = {"kind": "synthetic-motion", "class_names": CLASS_NAMES, "frames": frames, "size": size,
                "frames_format": "frames.npy: uint8 array [T, H, W, 3] (numpy .npy)",
                "boxes_format": "json boxes: per frame [x0, y0, x1, y1] in pixels", "motion": MOTION_NOTE}
    encode = functools.partial(encode_motion, size=size, frames=frames, seed=options.seed)
    return write_shards(out, list(range(num)), encode, options, metadata, motion_quantiles_of_json=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, required=True, help="number of clips")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")


KIND = ShardKind(
    name="synthetic-motion", help="clips of a moving shape with boxes and motion intensity",
    add_arguments=add_arguments,
    from_args=lambda args, options: write_synthetic_motion_shards(args.out, num=args.num, size=args.size,
                                                                  frames=args.frames, options=options))

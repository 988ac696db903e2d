"""FlexEControl's shard kind, synthetic-control: synthetic shapes plus condition maps (canny edges, segmentation
mask, depth-like map), the conditions the method is trained and tested with on synthetic data."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.synthetic_shapes import draw_shape
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, png_bytes,
                                        write_shards)
from datamodules.writers.synthetic_shapes import (add_shape_arguments, check_shape_arguments, shape_fields,
                                                  shapes_metadata)

CONDITIONS = {"canny.png": "cv2.Canny(gray, 100, 200), uint8 0/255",
              "seg.png": "uint8 mask: 0 background, label+1 on the shape",
              "depth.png": "uint8 depth-like map, larger = nearer"}


def encode_control(idx: int, size: int, seed: int, spurious: float | None) -> Encoded:
    import cv2

    s = draw_shape(idx, size, seed, spurious)
    gray = cv2.cvtColor(s["image"], cv2.COLOR_RGB2GRAY)
    canny = cv2.Canny(gray, 100, 200)
    # depth-like map: a floor receding upwards (far = dark) and the shape as a near dome.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = 40.0 + 100.0 * yy / max(size - 1, 1)
    cx, cy = s["center"]
    dome = 255.0 - 60.0 * np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(s["radius"], 1.0)
    depth = np.where(s["mask"] > 0, np.clip(dome, 150, 255), depth).astype(np.uint8)
    return f"{idx:08d}", {**shape_fields(s), "canny.png": png_bytes(canny), "seg.png": png_bytes(s["mask"]),
                          "depth.png": png_bytes(depth)}


def write_synthetic_control_shards(out: Path, *, num: int, size: int = 64, spurious: float | None = None,
                                   options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """`num` synthetic shapes with their condition maps (CONDITIONS); returns the index."""
    out = Path(out)
    check_out(out)
    check_shape_arguments(num, size, spurious)
    metadata = {**shapes_metadata("synthetic-control", size, spurious), "conditions": CONDITIONS}
    encode = functools.partial(encode_control, size=size, seed=options.seed, spurious=spurious)
    return write_shards(out, list(range(num)), encode, options, metadata)


KIND = ShardKind(
    name="synthetic-control", help="synthetic-control dataset", add_arguments=add_shape_arguments,
    from_args=lambda args, options: write_synthetic_control_shards(args.out, num=args.num, size=args.size,
                                                                   spurious=args.spurious, options=options))

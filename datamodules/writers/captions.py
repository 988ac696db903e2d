"""The captions kind: images + captions from a .jsonl or .csv file, plus condition-map columns (each a file, stored as
COLUMN.png) and optional canny edges of the image (canny.png)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from datamodules.errors import UsageError
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, image_format,
                                        json_bytes, png_bytes, read_rows, shared_image_ext, to_png, write_shards)


def encode_caption(item: tuple[int, str, str, str, str, list[tuple[str, str, str]], bool]) -> Encoded:
    idx, image_path, rel, caption, ext, conditions, canny = item
    data = Path(image_path).read_bytes()
    fields: dict[str, bytes] = {}
    if canny or (ext == "png" and not data.startswith(b"\x89PNG")):
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
        if ext == "png" and not data.startswith(b"\x89PNG"):
            data = png_bytes(rgb)
        if canny:
            import cv2

            fields["canny.png"] = png_bytes(cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 100, 200))
    fields[ext] = data
    meta: dict[str, Any] = {"caption": caption, "path": rel}
    for column, cond_path, cond_rel in conditions:
        raw = Path(cond_path).read_bytes()
        fields[f"{column}.png"] = raw if raw.startswith(b"\x89PNG") else to_png(raw)
        meta[column] = cond_rel
    fields["json"] = json_bytes(meta)
    fields["txt"] = caption.encode()
    return f"{idx:08d}", fields


def write_caption_shards(out: Path, *, captions: Path, root: Path, image_column: str = "image",
                         caption_column: str = "caption", conditions: Sequence[str] = (), canny: bool = False,
                         options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """One sample per row of `captions` (.jsonl or .csv; image and condition paths relative to `root`); returns the
    index."""
    out, captions, root = Path(out), Path(captions), Path(root)
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    conditions = [c for c in conditions if c]
    for col in conditions:
        if not col.replace("_", "").replace("-", "").isalnum():
            raise UsageError(f"--conditions: column name {col!r} must be letters, digits, _ or -")
        if col in (image_column, caption_column) or (canny and col == "canny"):
            raise UsageError(f"--conditions: column {col!r} clashes with another field")
    rows = read_rows(captions, [image_column, caption_column, *conditions], "--captions")
    check_out(out)
    resolved = []
    for n, row in enumerate(rows):
        paths = []
        for col in (image_column, *conditions):
            file = root / row[col]
            if not file.is_file():
                raise UsageError(f"{file}: listed in {captions} (row {n + 1}, column {col!r}) but missing")
            paths.append(file)
        resolved.append(paths)
    ext = shared_image_ext(paths[0] for paths in resolved)
    for paths in resolved:
        for p in paths[1:]:
            image_format(p)
    items = [(i, str(paths[0]), row[image_column], row[caption_column], ext,
              [(col, str(p), row[col]) for col, p in zip(conditions, paths[1:])], canny)
             for i, (row, paths) in enumerate(zip(rows, resolved))]
    metadata = {"kind": "captions", "source": str(captions), "image_ext": ext,
                "conditions": conditions + (["canny"] if canny else []),
                "canny": "cv2.Canny(gray, 100, 200) of the image" if canny else None}
    return write_shards(out, items, encode_caption, options, metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", type=Path, required=True,
                        help=".jsonl (one object per line) or .csv with a header")
    parser.add_argument("--root", type=Path, required=True, help="directory the image paths are relative to")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--conditions", default="", help="comma-separated columns naming condition-map files")
    parser.add_argument("--canny", action="store_true", help="add canny edges of the image (canny.png)")


KIND = ShardKind(
    name="captions", help="images + captions from a .jsonl or .csv file", add_arguments=add_arguments,
    from_args=lambda args, options: write_caption_shards(
        args.out, captions=args.captions, root=args.root, image_column=args.image_column,
        caption_column=args.caption_column, conditions=args.conditions.split(","), canny=args.canny,
        options=options))

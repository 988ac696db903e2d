"""Write a webdataset shard dataset: `python launch/make_shards.py KIND --out DIR [options]`.

Kinds:
  synthetic-shapes   coloured shapes on a background, label = colour-shape class, optional spurious background
  classification     an image folder (class per sub-folder) or a CoOp split JSON -> OUT/train, OUT/val, OUT/test
  synthetic-control  synthetic shapes plus condition maps (canny edges, segmentation mask, depth-like map)
  synthetic-motion   clips of a shape moving at a random speed: frames (.npy), per-frame boxes, motion intensity
  video              clips of F frames at a stride from videos listed in a .jsonl (PyAV), boxes, motion intensity
  captions           images + captions from a .jsonl or .csv file (+ condition-map columns, optional canny)
  retrieval          image-text retrieval: images + all their captions from a Karpathy split JSON (one split)
  vqa                VQAv2 questions + annotations: image, question, answer class, annotators' answer counts

Usage errors print one line naming the file or argument and exit with code 2; nothing is left half-written
(the output has no index.json and no shard). See datamodules/shards.py for the format.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import random
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datamodules.shards import INDEX_FILE, DatasetError, parse_size, write_parallel  # noqa: E402

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")
CLASS_NAMES = [f"{c} {s}" for c in COLORS for s in SHAPES]
# One background per class (used for the spurious correlation); none is close to a shape colour.
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128), "navy": (15, 20, 70),
               "brown": (110, 70, 40), "purple": (110, 40, 130), "teal": (20, 120, 120), "pink": (240, 170, 200),
               "olive": (110, 110, 30), "maroon": (90, 15, 25), "beige": (220, 205, 170), "cyan": (120, 230, 240)}
BACKGROUND_NAMES = list(BACKGROUNDS)
IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".bmp": "bmp", ".webp": "webp", ".gif": "gif",
              ".tif": "tiff", ".tiff": "tiff"}


class UsageError(Exception):
    """One line for the user; exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------------------------------- helpers
def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def check_out(out: Path, arg: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{arg} {out}: exists and is not a directory")
    if (out / INDEX_FILE).exists():
        raise UsageError(f"{arg} {out}: already holds a dataset ({INDEX_FILE}); use a new directory")
    if out.is_dir() and any(out.glob("*.tar")):
        raise UsageError(f"{arg} {out}: already holds shards; use a new directory")


# ----------------------------------------------------------------------------------------- synthetic shapes
def draw_shape(idx: int, size: int, seed: int, spurious: float | None) -> dict[str, Any]:
    """Sample `idx` of a synthetic-shapes dataset: everything derived from (seed, idx) only."""
    rng = np.random.default_rng([seed, idx])
    label = int(rng.integers(len(CLASS_NAMES)))
    color, shape = list(COLORS)[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    correlated = spurious is not None and bool(rng.random() < spurious)
    if correlated:
        background = BACKGROUND_NAMES[label]
    else:
        background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    r = float(rng.uniform(0.18, 0.32)) * size
    cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    mask = Image.new("L", (size, size), 0)
    for canvas, fill in ((ImageDraw.Draw(img), COLORS[color]), (ImageDraw.Draw(mask), label + 1)):
        if shape == "circle":
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            canvas.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return {"image": np.asarray(img), "mask": np.asarray(mask), "label": label, "color": color, "shape": shape,
            "background": background, "correlated": correlated, "center": [cx, cy], "radius": r}


def encode_shape(idx: int, size: int, seed: int, spurious: float | None) -> tuple[str, dict[str, bytes]]:
    s = draw_shape(idx, size, seed, spurious)
    meta = {"color": s["color"], "shape": s["shape"], "caption": f"a {s['color']} {s['shape']}",
            "background": s["background"], "label": s["label"]}
    return f"{idx:08d}", {"png": png_bytes(s["image"]), "cls": str(s["label"]).encode(), "json": json_bytes(meta)}


def encode_control(idx: int, size: int, seed: int, spurious: float | None) -> tuple[str, dict[str, bytes]]:
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
    meta = {"color": s["color"], "shape": s["shape"], "caption": f"a {s['color']} {s['shape']}",
            "background": s["background"], "label": s["label"]}
    return f"{idx:08d}", {"png": png_bytes(s["image"]), "cls": str(s["label"]).encode(), "json": json_bytes(meta),
                          "canny.png": png_bytes(canny), "seg.png": png_bytes(s["mask"]),
                          "depth.png": png_bytes(depth)}


def run_synthetic(args: argparse.Namespace, argv: Sequence[str], control: bool) -> None:
    if args.num <= 0:
        raise UsageError(f"--num: must be positive, got {args.num}")
    if args.size < 8:
        raise UsageError(f"--size: must be at least 8, got {args.size}")
    if args.spurious is not None and not 0.0 <= args.spurious <= 1.0:
        raise UsageError(f"--spurious: must be in [0, 1], got {args.spurious}")
    metadata = {"kind": args.kind, "class_names": CLASS_NAMES, "colors": list(COLORS), "shapes": list(SHAPES),
                "backgrounds": BACKGROUND_NAMES, "size": args.size,
                "spurious": None if args.spurious is None else {
                    "probability": args.spurious,
                    "class_background": {name: BACKGROUND_NAMES[i] for i, name in enumerate(CLASS_NAMES)},
                    "note": "with this probability a sample's background is its class's background, "
                            "otherwise uniform over all backgrounds"}}
    if control:
        metadata["conditions"] = {"canny.png": "cv2.Canny(gray, 100, 200), uint8 0/255",
                                  "seg.png": "uint8 mask: 0 background, label+1 on the shape",
                                  "depth.png": "uint8 depth-like map, larger = nearer"}
    fn = functools.partial(encode_control if control else encode_shape, size=args.size, seed=args.seed,
                           spurious=args.spurious)
    write_parallel(args.out, args.name, list(range(args.num)), fn, num_workers=args.num_workers,
                   shard_size=args.shard_size, max_samples=args.max_samples_per_shard, metadata=metadata,
                   command=list(argv), seed=args.seed)


# --------------------------------------------------------------------------------------------- synthetic motion
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
MOTION_LEVELS = 5


def mean_flow(frames: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude (pixels/frame) over consecutive frames of a [T, H, W, 3] uint8 clip."""
    import cv2

    cv2.setNumThreads(1)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.sqrt((flow ** 2).sum(-1)).mean()))
    return float(np.mean(mags)) if mags else 0.0


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_motion(idx: int, size: int, frames: int, seed: int) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng([seed, idx])
    label = int(rng.integers(len(CLASS_NAMES)))
    color, shape = list(COLORS)[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    speed = float(rng.uniform(0.0, size / (2.0 * max(frames - 1, 1))))  # the shape stays inside the frame
    r = size * 0.15
    dx, dy = DIRECTIONS[direction]
    travel = speed * (frames - 1)
    # start so that the whole path lies inside the image
    lo_x, hi_x = r + 1 + max(0.0, -dx * travel), size - r - 1 - max(0.0, dx * travel)
    lo_y, hi_y = r + 1 + max(0.0, -dy * travel), size - r - 1 - max(0.0, dy * travel)
    x0, y0 = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
    clip, boxes = [], []
    for t in range(frames):
        cx, cy = x0 + dx * speed * t, y0 + dy * speed * t
        img = Image.new("RGB", (size, size), BACKGROUNDS[background])
        canvas = ImageDraw.Draw(img)
        if shape == "circle":
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLORS[color])
        elif shape == "square":
            canvas.rectangle([cx - r, cy - r, cx + r, cy + r], fill=COLORS[color])
        else:
            canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
        clip.append(np.asarray(img))
        boxes.append([round(cx - r, 3), round(cy - r, 3), round(cx + r, 3), round(cy + r, 3)])
    video = np.stack(clip)
    still = speed * (frames - 1) < 1.0
    caption = f"a {color} {shape} {'staying still' if still else 'moving ' + direction}"
    meta = {"caption": caption, "label": label, "color": color, "shape": shape, "background": background,
            "direction": None if still else direction, "speed": round(speed, 6), "motion": round(mean_flow(video), 6),
            "boxes": boxes}
    return f"{idx:08d}", {"frames.npy": npy_bytes(video), "cls": str(label).encode(), "json": json_bytes(meta),
                          "txt": caption.encode()}


def motion_quantiles(motions: list[float]) -> list[float]:
    """The MOTION_LEVELS-1 cut points; a clip's intensity level is the number of cut points below its motion."""
    qs = np.quantile(np.asarray(motions, dtype=np.float64), np.arange(1, MOTION_LEVELS) / MOTION_LEVELS)
    return [round(float(q), 6) for q in qs]


def run_synthetic_motion(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.num <= 0:
        raise UsageError(f"--num: must be positive, got {args.num}")
    if args.size < 16:
        raise UsageError(f"--size: must be at least 16, got {args.size}")
    if args.frames < 2:
        raise UsageError(f"--frames: must be at least 2, got {args.frames}")
    check_out(args.out)
    motions: list[float] = []
    metadata = {"kind": "synthetic-motion", "class_names": CLASS_NAMES, "frames": args.frames, "size": args.size,
                "frames_format": "frames.npy: uint8 array [T, H, W, 3] (numpy .npy)",
                "boxes_format": "json boxes: per frame [x0, y0, x1, y1] in pixels",
                "motion": "mean Farneback optical-flow magnitude, pixels per frame (json motion)"}
    write_parallel(args.out, args.name, list(range(args.num)),
                   functools.partial(encode_motion, size=args.size, frames=args.frames, seed=args.seed),
                   num_workers=args.num_workers, shard_size=args.shard_size,
                   max_samples=args.max_samples_per_shard, metadata=metadata, command=list(argv), seed=args.seed,
                   on_written=lambda key, fields: motions.append(json.loads(fields["json"])["motion"]),
                   final_metadata=lambda: {"motion_quantiles": motion_quantiles(motions),
                                           "motion_levels": MOTION_LEVELS})


# ------------------------------------------------------------------------------------------------------ video
def decode_frames(path: str, wanted: set[int] | None = None) -> tuple[list[np.ndarray], int]:
    """RGB frames of a video (only the indices in `wanted`, if given) and the total frame count decoded."""
    import av

    frames, n = [], 0
    last = max(wanted) if wanted else None
    with av.open(path) as container:
        for frame in container.decode(video=0):
            if wanted is None or n in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            n += 1
            if last is not None and n > last:
                break
    return frames, n


def resize_crop(frame: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """Shorter side to `size` (cv2 INTER_AREA), then centre crop to size x size; returns (image, scale, ox, oy)."""
    import cv2

    h, w = frame.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    ox, oy = (nw - size) // 2, (nh - size) // 2
    return np.ascontiguousarray(resized[oy:oy + size, ox:ox + size]), scale, float(ox), float(oy)


def encode_video_clip(item: tuple[str, int, str, str, list[int], list | None, int]) -> tuple[str, dict[str, bytes]]:
    key, row, path, caption, indices, boxes, size = item
    import cv2

    cv2.setNumThreads(1)
    frames, _ = decode_frames(path, set(indices))
    clip, clip_boxes = [], []
    for t, frame in enumerate(frames):
        img, scale, ox, oy = resize_crop(frame, size)
        clip.append(img)
        if boxes is not None:
            x0, y0, x1, y1 = boxes[indices[t]]
            clip_boxes.append([round(min(max(x0 * scale - ox, 0.0), size), 3),
                               round(min(max(y0 * scale - oy, 0.0), size), 3),
                               round(min(max(x1 * scale - ox, 0.0), size), 3),
                               round(min(max(y1 * scale - oy, 0.0), size), 3)])
    video = np.stack(clip)
    meta = {"caption": caption, "row": row, "source": path, "frame_indices": indices,
            "motion": round(mean_flow(video), 6), "boxes": clip_boxes if boxes is not None else None}
    return key, {"frames.npy": npy_bytes(video), "json": json_bytes(meta), "txt": caption.encode()}


def run_video(args: argparse.Namespace, argv: Sequence[str]) -> None:
    for name, value, low in (("--frames", args.frames, 2), ("--stride", args.stride, 1), ("--size", args.size, 8)):
        if value < low:
            raise UsageError(f"{name}: must be at least {low}, got {value}")
    if args.max_clips_per_video is not None and args.max_clips_per_video <= 0:
        raise UsageError(f"--max-clips-per-video: must be positive, got {args.max_clips_per_video}")
    if not args.root.is_dir():
        raise UsageError(f"--root {args.root}: no such directory")
    rows = _read_caption_rows(args.videos, [args.video_column, args.caption_column])
    check_out(args.out)
    items = []
    span = (args.frames - 1) * args.stride + 1
    for n, row in enumerate(rows):
        where = f"{args.videos}:{n + 1}"
        file = args.root / row[args.video_column]
        if not file.is_file():
            raise UsageError(f"{file}: listed in {where} but missing")
        try:
            _, count = decode_frames(str(file))
        except Exception as e:  # noqa: BLE001 - PyAV raises many types
            raise UsageError(f"{file}: unreadable video ({type(e).__name__}: {e})".splitlines()[0]) from e
        if count == 0:
            raise UsageError(f"{file}: no video frames")
        boxes = row.get("boxes")
        if boxes is not None:
            if (not isinstance(boxes, list) or len(boxes) != count
                    or not all(isinstance(b, list) and len(b) == 4 for b in boxes)):
                raise UsageError(f"{where}: boxes must be one [x0, y0, x1, y1] per frame ({count} frames in {file})")
        starts = range(0, count - span + 1, span)
        if args.max_clips_per_video is not None:
            starts = starts[:args.max_clips_per_video]
        for c, start in enumerate(starts):
            indices = [start + k * args.stride for k in range(args.frames)]
            items.append((f"{n:06d}_{c:04d}", n, str(file), row[args.caption_column], indices, boxes, args.size))
    if not items:
        raise UsageError(f"--videos {args.videos}: no video is long enough for one clip of {span} frames")
    motions: list[float] = []
    metadata = {"kind": "video", "source": str(args.videos), "frames": args.frames, "stride": args.stride,
                "size": args.size, "clips_per_video": "non-overlapping windows of (frames-1)*stride+1 source frames",
                "frames_format": "frames.npy: uint8 array [T, H, W, 3] (numpy .npy), shorter side resized, centre crop",
                "boxes_format": "json boxes: per clip frame [x0, y0, x1, y1] in output pixels, or null",
                "motion": "mean Farneback optical-flow magnitude, pixels per frame (json motion)"}
    write_parallel(args.out, args.name, items, encode_video_clip, num_workers=args.num_workers,
                   shard_size=args.shard_size, max_samples=args.max_samples_per_shard, metadata=metadata,
                   command=list(argv), seed=args.seed,
                   on_written=lambda key, fields: motions.append(json.loads(fields["json"])["motion"]),
                   final_metadata=lambda: {"motion_quantiles": motion_quantiles(motions),
                                           "motion_levels": MOTION_LEVELS})


# ---------------------------------------------------------------------------------------------- classification
def _image_format(path: Path) -> str:
    """Check that PIL can decode the file; return its normalized extension. UsageError naming the file."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise UsageError(f"{path}: unreadable image ({type(e).__name__}: {e})".splitlines()[0]) from e
    return {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "GIF": "gif", "TIFF": "tiff"}.get(fmt or "",
                                                                                                           "png")


def _load_split_json(path: Path, root: Path) -> dict[str, list[tuple[Path, int, str]]]:
    if not path.is_file():
        raise UsageError(f"--split-json {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--split-json {path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not any(k in data for k in ("train", "val", "test")):
        raise UsageError(f"--split-json {path}: expected an object with keys train/val/test")
    unknown = sorted(set(data) - {"train", "val", "test"})
    if unknown:
        raise UsageError(f"--split-json {path}: unknown split(s) {unknown} (expected train, val, test)")
    name_of: dict[int, tuple[str, str]] = {}
    label_of: dict[str, tuple[int, str]] = {}
    splits: dict[str, list[tuple[Path, int, str]]] = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        entries = data[split]
        if not isinstance(entries, list):
            raise UsageError(f"--split-json {path}: {split}: expected a list of [path, label, classname]")
        rows = []
        for i, entry in enumerate(entries):
            where = f"--split-json {path}: {split}[{i}]"
            if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str)
                    or isinstance(entry[1], bool) or not isinstance(entry[1], int) or not isinstance(entry[2], str)):
                raise UsageError(f"{where}: expected [relative_path, int label, classname], got {entry!r}")
            rel, label, cname = entry
            if label < 0:
                raise UsageError(f"{where}: negative label {label}")
            if label in name_of and name_of[label][0] != cname:
                raise UsageError(f"{where}: label {label} is {cname!r} here but {name_of[label][0]!r} at "
                                 f"{name_of[label][1]}")
            if cname in label_of and label_of[cname][0] != label:
                raise UsageError(f"{where}: class {cname!r} has label {label} here but {label_of[cname][0]} at "
                                 f"{label_of[cname][1]}")
            name_of.setdefault(label, (cname, f"{split}[{i}]"))
            label_of.setdefault(cname, (label, f"{split}[{i}]"))
            file = root / rel
            if not file.is_file():
                raise UsageError(f"{file}: listed in {path} ({split}[{i}]) but missing")
            rows.append((file, label, cname))
        splits[split] = rows
    labels = sorted(name_of)
    if labels != list(range(len(labels))):
        raise UsageError(f"--split-json {path}: labels must be 0..{len(labels) - 1} without gaps, got {labels[:10]}...")
    return splits


def _load_image_folder(images: Path) -> dict[str, list[tuple[Path, int, str]]]:
    if not images.is_dir():
        raise UsageError(f"--images {images}: no such directory")
    classes = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"--images {images}: no class sub-folders")
    rows = []
    for label, cname in enumerate(classes):
        files = sorted(p for p in (images / cname).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UsageError(f"--images {images / cname}: class {cname!r} has no images")
        rows += [(f, label, cname) for f in files]
    return {"train": rows}


def _kshot(rows: list[tuple[Path, int, str]], shots: int, seed: int, source: str) -> list[tuple[Path, int, str]]:
    by_label: dict[int, list[tuple[Path, int, str]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    out = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: str(r[0]))
        if shots > len(group):
            raise UsageError(f"--shots {shots}: class {group[0][2]!r} (label {label}) has only {len(group)} "
                             f"training images in {source}")
        picked = random.Random(f"{seed}:{label}").sample(range(len(group)), shots)
        out += [group[i] for i in sorted(picked)]
    return out


def encode_file(item: tuple[int, str, int, str, str, str]) -> tuple[str, dict[str, bytes]]:
    idx, path, label, cname, rel, ext = item
    data = Path(path).read_bytes()
    if ext == "png" and not data.startswith(b"\x89PNG"):
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data = buf.getvalue()
    return f"{idx:08d}", {ext: data, "cls": str(label).encode(),
                          "json": json_bytes({"label": label, "classname": cname, "path": rel})}


def run_classification(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if (args.images is None) == (args.split_json is None):
        raise UsageError("classification: give exactly one of --images DIR or --split-json FILE")
    if args.shots is not None and args.shots <= 0:
        raise UsageError(f"--shots: must be positive, got {args.shots}")
    if args.split_json is not None:
        if args.root is None:
            raise UsageError("--root: required with --split-json (image paths are relative to it)")
        if not args.root.is_dir():
            raise UsageError(f"--root {args.root}: no such directory")
        splits = _load_split_json(args.split_json, args.root)
        source, root = str(args.split_json), args.root
    else:
        splits = _load_image_folder(args.images)
        source, root = str(args.images), args.images
    names = {label: cname for rows in splits.values() for _, label, cname in rows}
    if splits.get("train"):
        trained = {label for _, label, _ in splits["train"]}
        for split, rows in splits.items():
            unknown = sorted({(label, cname) for _, label, cname in rows if label not in trained})
            if unknown:
                label, cname = unknown[0]
                raise UsageError(f"{source}: {split} has class {cname!r} (label {label}) that the train split has no "
                                 f"image of ({len(unknown)} such class(es)); add its training images or drop it")
    labels = sorted(names)
    n_base = math.ceil(len(labels) / 2)
    keep = {"all": labels, "base": labels[:n_base], "new": labels[n_base:]}[args.subset]
    if not keep:
        raise UsageError(f"--subset {args.subset}: no classes in it ({len(labels)} classes in {source})")
    relabel = {old: new for new, old in enumerate(keep)}
    class_names = [names[label] for label in keep]
    selected: dict[str, list[tuple[Path, int, str]]] = {}
    for split, rows in splits.items():
        rows = [(f, relabel[label], cname) for f, label, cname in rows if label in relabel]
        if split == "train" and args.shots is not None:
            rows = _kshot(rows, args.shots, args.seed, source)
        selected[split] = rows
    for split in selected:
        check_out(args.out / split, f"--out {split}")
    # Every image is decoded once before anything is written, so a bad file stops the run with nothing written.
    formats = {row[0]: _image_format(row[0]) for rows in selected.values() for row in rows}
    ext = next(iter(set(formats.values()))) if len(set(formats.values())) == 1 else "png"
    written: list[Path] = []
    try:
        for split, rows in selected.items():
            if not rows:
                continue
            metadata = {"kind": "classification", "split": split, "class_names": class_names,
                        "subset": args.subset, "num_classes_total": len(labels),
                        "base_labels": labels[:n_base], "new_labels": labels[n_base:],
                        "original_labels": keep, "shots": args.shots if split == "train" else None,
                        "source": source, "splits": {s: len(r) for s, r in selected.items()}, "image_ext": ext}
            items = [(i, str(f), label, cname, str(f.relative_to(root)) if f.is_relative_to(root) else str(f), ext)
                     for i, (f, label, cname) in enumerate(rows)]
            written.append(args.out / split)
            write_parallel(args.out / split, args.name, items, encode_file, num_workers=args.num_workers,
                           shard_size=args.shard_size, max_samples=args.max_samples_per_shard, metadata=metadata,
                           command=list(argv), seed=args.seed)
    except BaseException:
        _remove_datasets(written)
        raise


def _remove_datasets(dirs: list[Path]) -> None:
    """Undo finished splits of a failed multi-split run: their index.json first, then their shards."""
    for d in dirs:
        index = d / INDEX_FILE
        if index.is_file():
            try:
                files = [s["file"] for s in json.loads(index.read_text())["shards"]]
            except Exception:  # noqa: BLE001
                files = []
            index.unlink()
            for f in files:
                (d / f).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- captions
def _read_caption_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise UsageError(f"--captions {path}: no such file")
    suffix = path.suffix.lower()
    rows: list[dict[str, str]] = []
    try:
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise UsageError(f"{path}:{n}: not valid JSON ({e})") from e
                    if not isinstance(row, dict):
                        raise UsageError(f"{path}:{n}: expected a JSON object per line")
                    for col in columns:
                        if col not in row:
                            raise UsageError(f"{path}:{n}: missing column {col!r}")
                        if not isinstance(row[col], str):
                            raise UsageError(f"{path}:{n}: column {col!r} must be a string, got {row[col]!r}")
                    rows.append(row)
        elif suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                for col in columns:
                    if col not in header:
                        raise UsageError(f"{path}: missing column {col!r} (columns: {', '.join(header)})")
                for n, row in enumerate(reader, 2):
                    if any(row.get(col) is None for col in columns):
                        raise UsageError(f"{path}:{n}: row has fewer fields than the header")
                    rows.append(row)
        else:
            raise UsageError(f"--captions {path}: expected a .jsonl or .csv file")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"--captions {path}: unreadable ({e})") from e
    if not rows:
        raise UsageError(f"--captions {path}: no rows")
    return rows


def encode_caption(item: tuple[int, str, str, str, str, list[tuple[str, str, str]], bool]
                   ) -> tuple[str, dict[str, bytes]]:
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
        fields[f"{column}.png"] = raw if raw.startswith(b"\x89PNG") else _to_png(raw)
        meta[column] = cond_rel
    fields["json"] = json_bytes(meta)
    fields["txt"] = caption.encode()
    return f"{idx:08d}", fields


def _to_png(raw: bytes) -> bytes:
    with Image.open(io.BytesIO(raw)) as im:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def run_captions(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if not args.root.is_dir():
        raise UsageError(f"--root {args.root}: no such directory")
    conditions = [c for c in (args.conditions.split(",") if args.conditions else []) if c]
    for col in conditions:
        if not col.replace("_", "").replace("-", "").isalnum():
            raise UsageError(f"--conditions: column name {col!r} must be letters, digits, _ or -")
        if col in (args.image_column, args.caption_column) or (args.canny and col == "canny"):
            raise UsageError(f"--conditions: column {col!r} clashes with another field")
    rows = _read_caption_rows(args.captions, [args.image_column, args.caption_column, *conditions])
    check_out(args.out)
    resolved = []
    for n, row in enumerate(rows):
        paths = []
        for col in (args.image_column, *conditions):
            file = args.root / row[col]
            if not file.is_file():
                raise UsageError(f"{file}: listed in {args.captions} (row {n + 1}, column {col!r}) but missing")
            paths.append(file)
        resolved.append(paths)
    formats = {paths[0]: _image_format(paths[0]) for paths in resolved}
    for paths in resolved:
        for p in paths[1:]:
            _image_format(p)
    ext = next(iter(set(formats.values()))) if len(set(formats.values())) == 1 else "png"
    items = [(i, str(paths[0]), row[args.image_column], row[args.caption_column], ext,
              [(col, str(p), row[col]) for col, p in zip(conditions, paths[1:])], args.canny)
             for i, (row, paths) in enumerate(zip(rows, resolved))]
    metadata = {"kind": "captions", "source": str(args.captions), "image_ext": ext,
                "conditions": conditions + (["canny"] if args.canny else []),
                "canny": "cv2.Canny(gray, 100, 200) of the image" if args.canny else None}
    write_parallel(args.out, args.name, items, encode_caption, num_workers=args.num_workers,
                   shard_size=args.shard_size, max_samples=args.max_samples_per_shard, metadata=metadata,
                   command=list(argv), seed=args.seed)


# --------------------------------------------------------------------------------------------------- retrieval
KARPATHY_SPLITS = ("train", "val", "test", "restval")


def _read_json(path: Path, arg: str) -> Any:
    if not path.is_file():
        raise UsageError(f"{arg} {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{arg} {path}: not valid JSON ({e})".splitlines()[0]) from e


def _seeded_subset(n: int, k: int, seed: int, salt: str) -> list[int]:
    """k of range(n), seeded, in increasing order; a larger k keeps every index a smaller k picked."""
    order = list(range(n))
    random.Random(f"{seed}:{salt}").shuffle(order)
    return sorted(order[:k])


def _image_bytes(path: str, ext: str) -> bytes:
    """The file's bytes, re-encoded as PNG when the dataset's extension is png and the file is not one."""
    data = Path(path).read_bytes()
    return _to_png(data) if ext == "png" and not data.startswith(b"\x89PNG") else data


def encode_retrieval(item: tuple[int, str, str, list[str], str]) -> tuple[str, dict[str, bytes]]:
    idx, path, rel, captions, ext = item
    return f"{idx:08d}", {ext: _image_bytes(path, ext), "cls": str(idx).encode(),
                          "json": json_bytes({"captions": captions, "filename": rel, "image_index": idx})}


def run_retrieval(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.fraction is not None and not 0.0 < args.fraction <= 1.0:
        raise UsageError(f"--fraction: must be in (0, 1], got {args.fraction}")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images: must be at least 1, got {args.max_images}")
    if args.restval_as_train and args.split != "train":
        raise UsageError(f"--restval-as-train: only with --split train (got --split {args.split})")
    if not args.root.is_dir():
        raise UsageError(f"--root {args.root}: no such directory")
    source = args.karpathy
    data = _read_json(source, "--karpathy")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UsageError(f"--karpathy {source}: expected an object with an \"images\" list (Karpathy split format)")
    dataset = data.get("dataset")
    wanted = {"train", "restval"} if args.restval_as_train else {args.split}
    chosen: list[tuple[int, dict[str, Any]]] = []
    for i, entry in enumerate(data["images"]):
        where = f"--karpathy {source}: images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise UsageError(f"{where}: expected an object with a \"filename\" string")
        if "filepath" in entry and not isinstance(entry["filepath"], str):
            raise UsageError(f"{where}: \"filepath\" must be a string, got {entry['filepath']!r}")
        if entry.get("split") not in KARPATHY_SPLITS:
            raise UsageError(f"{where}: unknown split {entry.get('split')!r} (expected one of "
                             f"{', '.join(KARPATHY_SPLITS)})")
        if entry["split"] in wanted:
            chosen.append((i, entry))
    if not chosen:
        raise UsageError(f"--karpathy {source}: no image in split {args.split}"
                         f"{' (or restval)' if args.restval_as_train else ''}")
    k = len(chosen)
    if args.fraction is not None:
        k = max(1, math.ceil(args.fraction * len(chosen)))
    elif args.max_images is not None:
        k = min(args.max_images, len(chosen))
    chosen = [chosen[j] for j in _seeded_subset(len(chosen), k, args.seed, "retrieval")]
    rows: list[tuple[Path, str, list[str]]] = []
    for i, entry in chosen:
        where = f"--karpathy {source}: images[{i}] ({entry['filename']})"
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise UsageError(f"{where}: no sentences; every image needs at least one caption")
        captions = []
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise UsageError(f"{where}: sentences[{j}] has no \"raw\" caption text")
            captions.append(raw.strip())
        rel = f"{entry['filepath']}/{entry['filename']}" if entry.get("filepath") else entry["filename"]
        file = args.root / rel
        if not file.is_file():
            raise UsageError(f"{file}: image {i} of {source} ({rel}) is missing")
        rows.append((file, rel, captions))
    check_out(args.out)
    # Every image is decoded once before anything is written, so a bad file stops the run with nothing written.
    formats = {file: _image_format(file) for file, _, _ in rows}
    ext = next(iter(set(formats.values()))) if len(set(formats.values())) == 1 else "png"
    all_captions = [captions for _, _, captions in rows]
    metadata = {"kind": "retrieval", "split": args.split, "dataset": dataset if isinstance(dataset, str) else None,
                "source": str(source), "captions": all_captions, "num_images": len(rows),
                "num_captions": sum(len(c) for c in all_captions), "fraction": args.fraction,
                "max_images": args.max_images, "restval_as_train": args.restval_as_train, "image_ext": ext}
    items = [(i, str(file), rel, captions, ext) for i, (file, rel, captions) in enumerate(rows)]
    write_parallel(args.out, args.name, items, encode_retrieval, num_workers=args.num_workers,
                   shard_size=args.shard_size, max_samples=args.max_samples_per_shard, metadata=metadata,
                   command=list(argv), seed=args.seed)


# --------------------------------------------------------------------------------------------------------- vqa
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
DEFAULT_VQA_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"
_IN_NUMBER = re.compile(r"(?<=\d)[.:/](?=\d)")  # 2.5, 10:30, 1/2 keep their punctuation
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000 -> 1000
_DROPPED = re.compile(r"['.`]")  # joined without a space: don't -> dont, u.s.a. -> usa
_PUNCT = re.compile(r"[!\"#$%&()*+,\-/:;<=>?@\[\\\]^_{|}~]")  # the rest of ASCII punctuation -> a space


def normalize_answer(text: str) -> str:
    """VQA-style answer normalisation: lowercase; punctuation removed ("." "'" dropped, the rest become spaces) except
    inside a number ("2.5", "10:30", "1/2" stay, "1,000" -> "1000"); number words zero..ten -> digits; articles
    a/an/the dropped; whitespace collapsed. "Two dogs!" -> "2 dogs", "the U.S.A." -> "usa", "T-shirt" -> "t shirt"."""
    text = _THOUSANDS.sub("", str(text).lower().strip())
    kept = _IN_NUMBER.findall(text)
    text = _IN_NUMBER.sub("\x00", text)  # protect number punctuation from the two passes below
    text = _PUNCT.sub(" ", _DROPPED.sub("", text))
    for mark in kept:
        text = text.replace("\x00", mark, 1)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def _vqa_questions(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    data = _read_json(path, "--questions")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise UsageError(f"--questions {path}: expected an object with a \"questions\" list (VQAv2 format)")
    subtype = data.get("data_subtype")
    if subtype is not None and not isinstance(subtype, str):
        raise UsageError(f"--questions {path}: \"data_subtype\" must be a string, got {subtype!r}")
    seen: dict[int, int] = {}
    for i, q in enumerate(data["questions"]):
        where = f"--questions {path}: questions[{i}]"
        if not isinstance(q, dict):
            raise UsageError(f"{where}: expected an object")
        for field, kind in (("question_id", int), ("image_id", int), ("question", str)):
            if not isinstance(q.get(field), kind) or isinstance(q.get(field), bool):
                raise UsageError(f"{where}: \"{field}\" must be {'an int' if kind is int else 'a string'}, "
                                 f"got {q.get(field)!r}")
        if q["question_id"] in seen:
            raise UsageError(f"{where}: question_id {q['question_id']} repeats questions[{seen[q['question_id']]}]")
        seen[q["question_id"]] = i
    return data["questions"], subtype


def _vqa_annotations(path: Path) -> dict[int, dict[str, Any]]:
    data = _read_json(path, "--annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise UsageError(f"--annotations {path}: expected an object with an \"annotations\" list (VQAv2 format)")
    by_question: dict[int, dict[str, Any]] = {}
    for i, a in enumerate(data["annotations"]):
        where = f"--annotations {path}: annotations[{i}]"
        if not isinstance(a, dict):
            raise UsageError(f"{where}: expected an object")
        for field, kind, what in (("question_id", int, "an int"), ("image_id", int, "an int"),
                                  ("multiple_choice_answer", str, "a string"), ("answers", list, "a list")):
            if not isinstance(a.get(field), kind) or isinstance(a.get(field), bool):
                raise UsageError(f"{where}: \"{field}\" must be {what}, got {a.get(field)!r}")
        if not all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in a["answers"]):
            raise UsageError(f"{where}: \"answers\" must be objects with an \"answer\" string")
        if a["question_id"] in by_question:
            raise UsageError(f"{where}: a second annotation for question_id {a['question_id']}")
        by_question[a["question_id"]] = a
    return by_question


def _vqa_vocabulary(args: argparse.Namespace, annotations: dict[int, dict[str, Any]]) -> list[str]:
    if args.top_answers is not None:
        counts: dict[str, int] = {}
        for a in annotations.values():
            answer = normalize_answer(a["multiple_choice_answer"])
            if answer:
                counts[answer] = counts.get(answer, 0) + 1
        if not counts:
            raise UsageError(f"--annotations {args.annotations}: no non-empty multiple_choice_answer")
        return [answer for answer, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:args.top_answers]]
    from datamodules.shards import read_index

    try:
        meta = read_index(args.answers_from)["metadata"]
    except DatasetError as e:
        raise UsageError(f"--answers-from {args.answers_from}: not a dataset ({e})".splitlines()[0]) from e
    if not isinstance(meta, dict) or meta.get("kind") != "vqa":
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise UsageError(f"--answers-from {args.answers_from}: a {kind!r} dataset, not vqa; give the training split "
                         f"written by `make_shards.py vqa --top-answers N`")
    answers = meta.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise UsageError(f"--answers-from {args.answers_from}: its index.json metadata has no \"answers\" list")
    return answers


def encode_vqa(item: tuple[int, str, str, dict[str, Any]]) -> tuple[str, dict[str, bytes]]:
    idx, path, ext, meta = item
    return f"{idx:08d}", {ext: _image_bytes(path, ext), "cls": str(meta["cls"]).encode(),
                          "json": json_bytes({k: v for k, v in meta.items() if k != "cls"})}


def run_vqa(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.max_questions is not None and args.max_questions < 1:
        raise UsageError(f"--max-questions: must be at least 1, got {args.max_questions}")
    if args.top_answers is not None and args.top_answers < 1:
        raise UsageError(f"--top-answers: must be at least 1, got {args.top_answers}")
    if not args.root.is_dir():
        raise UsageError(f"--root {args.root}: no such directory")
    questions, subtype = _vqa_questions(args.questions)
    annotations = _vqa_annotations(args.annotations)
    pattern = args.image_pattern
    if pattern is None:
        if subtype is None:
            raise UsageError(f"--questions {args.questions}: no \"data_subtype\" to name the images; give "
                             f"--image-pattern (e.g. 'images/{{image_id}}.jpg')")
        pattern = DEFAULT_VQA_PATTERN
    vocab = _vqa_vocabulary(args, annotations)
    index_of = {answer: i for i, answer in enumerate(vocab)}
    rows: list[tuple[dict[str, Any], dict[str, Any], int]] = []
    for i, q in enumerate(questions):
        a = annotations.get(q["question_id"])
        if a is None:
            raise UsageError(f"--annotations {args.annotations}: no annotation for question_id {q['question_id']} "
                             f"(questions[{i}] of {args.questions})")
        if a["image_id"] != q["image_id"]:
            raise UsageError(f"--annotations {args.annotations}: question_id {q['question_id']} has image_id "
                             f"{a['image_id']} there but {q['image_id']} in {args.questions}")
        cls = index_of.get(normalize_answer(a["multiple_choice_answer"]), -1)
        if args.top_answers is not None and cls < 0:
            continue  # training: a question the vocabulary cannot answer teaches nothing
        rows.append((q, a, cls))
    if args.max_questions is not None and args.max_questions < len(rows):
        rows = [rows[j] for j in _seeded_subset(len(rows), args.max_questions, args.seed, "vqa")]
    if not rows:
        raise UsageError(f"--questions {args.questions}: no question left (none has an answer among the "
                         f"{len(vocab)} vocabulary answers)")
    files: list[Path] = []
    for q, _, _ in rows:
        try:
            rel = pattern.format(data_subtype=subtype, image_id=q["image_id"])
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise UsageError(f"--image-pattern {pattern!r}: cannot format it ({type(e).__name__}: {e}); it may use "
                             f"{{data_subtype}} and {{image_id}}") from e
        file = args.root / rel
        if not file.is_file():
            raise UsageError(f"{file}: image {q['image_id']} of question_id {q['question_id']} is missing")
        files.append(file)
    check_out(args.out)
    # Every image is decoded once before anything is written, so a bad file stops the run with nothing written.
    formats = {file: _image_format(file) for file in dict.fromkeys(files)}
    ext = next(iter(set(formats.values()))) if len(set(formats.values())) == 1 else "png"
    items = []
    for i, ((q, a, cls), file) in enumerate(zip(rows, files)):
        counts: dict[str, int] = {}
        for answer in a["answers"]:
            j = index_of.get(normalize_answer(answer["answer"]))
            if j is not None:
                counts[str(j)] = counts.get(str(j), 0) + 1
        meta = {"question": q["question"], "question_id": q["question_id"], "image_id": q["image_id"],
                "answer_counts": counts, "num_annotators": len(a["answers"]),
                "answer": normalize_answer(a["multiple_choice_answer"]), "answer_type": a.get("answer_type"),
                "cls": cls}
        items.append((i, str(file), ext, meta))
    metadata = {"kind": "vqa", "split": subtype, "answers": vocab,
                "questions": [[q["question"], cls] for q, _, cls in rows], "num_questions": len(rows),
                "source": {"questions": str(args.questions), "annotations": str(args.annotations)},
                "image_ext": ext, "image_pattern": pattern, "top_answers": args.top_answers,
                "answers_from": None if args.answers_from is None else str(args.answers_from),
                "max_questions": args.max_questions,
                "answer_normalization": "launch/make_shards.py normalize_answer",
                "cls": "vocabulary index of the normalised multiple_choice_answer, -1 when not in the vocabulary"}
    write_parallel(args.out, args.name, items, encode_vqa, num_workers=args.num_workers,
                   shard_size=args.shard_size, max_samples=args.max_samples_per_shard, metadata=metadata,
                   command=list(argv), seed=args.seed)


# ------------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="make_shards.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True, help="output dataset directory")
        p.add_argument("--name", default="data", help="shard name prefix (default: data)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--shard-size", default="256MB", help="close a shard before it exceeds this (e.g. 64MB)")
        p.add_argument("--max-samples-per-shard", type=int, default=None)
        p.add_argument("--num-workers", type=int, default=1, help="encoding processes (output is identical)")

    for kind in ("synthetic-shapes", "synthetic-control"):
        p = sub.add_parser(kind, help=f"{kind} dataset")
        common(p)
        p.add_argument("--num", type=int, required=True, help="number of samples")
        p.add_argument("--size", type=int, default=64, help="image side in pixels")
        p.add_argument("--spurious", type=float, default=None,
                       help="probability that the background is the class's own background")
    p = sub.add_parser("synthetic-motion", help="clips of a moving shape with boxes and motion intensity")
    common(p)
    p.add_argument("--num", type=int, required=True, help="number of clips")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p = sub.add_parser("video", help="clips from videos listed in a .jsonl/.csv (video, caption[, boxes])")
    common(p)
    p.add_argument("--videos", type=Path, required=True,
                   help=".jsonl rows {video, caption[, boxes: one [x0,y0,x1,y1] per source frame]} or .csv")
    p.add_argument("--root", type=Path, required=True, help="directory the video paths are relative to")
    p.add_argument("--video-column", default="video")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--stride", type=int, default=1, help="source frames between clip frames")
    p.add_argument("--size", type=int, default=64, help="output frame side (shorter side resize + centre crop)")
    p.add_argument("--max-clips-per-video", type=int, default=None)
    p = sub.add_parser("classification", help="image folder or CoOp split JSON")
    common(p)
    p.add_argument("--images", type=Path, default=None, help="folder with one sub-folder per class (-> OUT/train)")
    p.add_argument("--split-json", type=Path, default=None, help="CoOp split JSON (-> OUT/train, OUT/val, OUT/test)")
    p.add_argument("--root", type=Path, default=None, help="directory the split JSON paths are relative to")
    p.add_argument("--shots", type=int, default=None, help="K images per class in train (seeded)")
    p.add_argument("--subset", choices=("all", "base", "new"), default="all")
    p = sub.add_parser("captions", help="images + captions from a .jsonl or .csv file")
    common(p)
    p.add_argument("--captions", type=Path, required=True, help=".jsonl (one object per line) or .csv with a header")
    p.add_argument("--root", type=Path, required=True, help="directory the image paths are relative to")
    p.add_argument("--image-column", default="image")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--conditions", default="", help="comma-separated columns naming condition-map files")
    p.add_argument("--canny", action="store_true", help="add canny edges of the image (canny.png)")
    p = sub.add_parser("retrieval", help="image-text retrieval from a Karpathy split JSON (dataset_coco.json)")
    common(p)
    p.add_argument("--karpathy", type=Path, required=True, help="Karpathy split JSON (dataset_flickr30k.json, ...)")
    p.add_argument("--root", type=Path, required=True, help="directory the image paths (filepath/filename) are in")
    p.add_argument("--split", choices=("train", "val", "test"), required=True)
    p.add_argument("--restval-as-train", action="store_true", help="with --split train: add the restval images")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fraction", type=float, default=None, help="keep this fraction of the images (seeded)")
    group.add_argument("--max-images", type=int, default=None, help="keep at most N images (seeded)")
    p = sub.add_parser("vqa", help="VQAv2 questions + annotations")
    common(p)
    p.add_argument("--questions", type=Path, required=True, help="VQAv2 questions JSON")
    p.add_argument("--annotations", type=Path, required=True, help="VQAv2 annotations JSON")
    p.add_argument("--root", type=Path, required=True, help="directory the image pattern is relative to")
    p.add_argument("--image-pattern", default=None,
                   help=f"image path from {{data_subtype}} and {{image_id}} (default: {DEFAULT_VQA_PATTERN})")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--top-answers", type=int, default=None,
                       help="vocabulary: the N most frequent normalised answers here (training split)")
    group.add_argument("--answers-from", type=Path, default=None,
                       help="vocabulary: the answers of this vqa dataset (val/test use the training vocabulary)")
    p.add_argument("--max-questions", type=int, default=None, help="keep at most N questions (seeded)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = ["launch/make_shards.py", *argv]
    try:
        args = build_parser().parse_args(argv)
        try:
            args.shard_size = parse_size(args.shard_size)
        except ValueError as e:
            raise UsageError(f"--shard-size: {e}") from e
        if args.max_samples_per_shard is not None and args.max_samples_per_shard <= 0:
            raise UsageError(f"--max-samples-per-shard: must be positive, got {args.max_samples_per_shard}")
        if args.num_workers <= 0:
            raise UsageError(f"--num-workers: must be positive, got {args.num_workers}")
        if args.kind == "classification":
            run_classification(args, command)
        elif args.kind == "captions":
            run_captions(args, command)
        elif args.kind == "retrieval":
            run_retrieval(args, command)
        elif args.kind == "vqa":
            run_vqa(args, command)
        elif args.kind == "video":
            run_video(args, command)
        elif args.kind == "synthetic-motion":
            run_synthetic_motion(args, command)
        else:
            check_out(args.out)
            run_synthetic(args, command, control=args.kind == "synthetic-control")
    except (UsageError, DatasetError) as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

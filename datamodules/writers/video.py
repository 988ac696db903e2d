"""The video kind: clips of F frames at a stride from the videos listed in a .jsonl/.csv (decoded with PyAV through
datamodules/video.py), shorter side resized and centre-cropped, with the listed per-frame boxes carried into the
clip's pixels and each clip's mean optical flow (the dataset's motion quantiles go into the index)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import UsageError
from datamodules.video import VideoDecodeError, decode_frames, mean_flow, resize_crop
from datamodules.writers.common import (DEFAULT_OPTIONS, MOTION_NOTE, Encoded, ShardKind, ShardOptions, check_out,
                                        json_bytes, npy_bytes, read_rows, write_shards)


def _clip_box(box: list[float], scale: float, ox: float, oy: float, size: int) -> list[float]:
    """A source-pixel box in output pixels, clamped to the crop."""
    x0, y0, x1, y1 = box
    return [round(min(max(x0 * scale - ox, 0.0), size), 3), round(min(max(y0 * scale - oy, 0.0), size), 3),
            round(min(max(x1 * scale - ox, 0.0), size), 3), round(min(max(y1 * scale - oy, 0.0), size), 3)]


def encode_video_clip(item: tuple[str, int, str, str, list[int], list | None, int]) -> Encoded:
    key, row, path, caption, indices, boxes, size = item
    frames, _ = decode_frames(path, indices)
    clip, clip_boxes = [], []
    for t, frame in enumerate(frames):
        img, scale, ox, oy = resize_crop(frame, size)
        clip.append(img)
        if boxes is not None:
            clip_boxes.append(_clip_box(boxes[indices[t]], scale, ox, oy, size))
    video = np.stack(clip)
    meta = {"caption": caption, "row": row, "source": path, "frame_indices": indices,
            "motion": round(mean_flow(video), 6), "boxes": clip_boxes if boxes is not None else None}
    return key, {"frames.npy": npy_bytes(video), "json": json_bytes(meta), "txt": caption.encode()}


def _decoded_frame_count(file: Path) -> int:
    """Every frame decoded once: the exact count, and a video that fails half-way stops the run here."""
    try:
        _, count = decode_frames(file, indices=())
    except VideoDecodeError as e:
        cause = e.__cause__ or e  # PyAV's own error says what is wrong with the file
        raise UsageError(f"{file}: unreadable video ({type(cause).__name__}: {cause})".splitlines()[0]) from e
    return count


def write_video_shards(out: Path, *, videos: Path, root: Path, video_column: str = "video",
                       caption_column: str = "caption", frames: int = 8, stride: int = 1, size: int = 64,
                       max_clips_per_video: int | None = None, options: ShardOptions = DEFAULT_OPTIONS
                       ) -> dict[str, Any]:
    """Non-overlapping clips of `frames` frames `stride` source frames apart, `size` x `size` pixels, from every
    video listed in `videos` (.jsonl rows {video, caption[, boxes: one [x0, y0, x1, y1] per source frame]} or .csv;
    paths relative to `root`). Returns the index (motion quantiles in its metadata)."""
    out, videos, root = Path(out), Path(videos), Path(root)
    for name, value, low in (("--frames", frames, 2), ("--stride", stride, 1), ("--size", size, 8)):
        if value < low:
            raise UsageError(f"{name}: must be at least {low}, got {value}")
    if max_clips_per_video is not None and max_clips_per_video <= 0:
        raise UsageError(f"--max-clips-per-video: must be positive, got {max_clips_per_video}")
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    rows = read_rows(videos, [video_column, caption_column], "--videos")
    check_out(out)
    items = []
    span = (frames - 1) * stride + 1
    for n, row in enumerate(rows):
        where = f"{videos}:{n + 1}"
        file = root / row[video_column]
        if not file.is_file():
            raise UsageError(f"{file}: listed in {where} but missing")
        count = _decoded_frame_count(file)
        if count == 0:
            raise UsageError(f"{file}: no video frames")
        boxes = row.get("boxes")
        if boxes is not None:
            if (not isinstance(boxes, list) or len(boxes) != count
                    or not all(isinstance(b, list) and len(b) == 4 for b in boxes)):
                raise UsageError(f"{where}: boxes must be one [x0, y0, x1, y1] per frame ({count} frames in {file})")
        starts = range(0, count - span + 1, span)
        if max_clips_per_video is not None:
            starts = starts[:max_clips_per_video]
        for c, start in enumerate(starts):
            indices = [start + k * stride for k in range(frames)]
            items.append((f"{n:06d}_{c:04d}", n, str(file), row[caption_column], indices, boxes, size))
    if not items:
        raise UsageError(f"--videos {videos}: no video is long enough for one clip of {span} frames")
    metadata = {"kind": "video", "source": str(videos), "frames": frames, "stride": stride,
                "size": size, "clips_per_video": "non-overlapping windows of (frames-1)*stride+1 source frames",
                "frames_format": "frames.npy: uint8 array [T, H, W, 3] (numpy .npy), shorter side resized, centre crop",
                "boxes_format": "json boxes: per clip frame [x0, y0, x1, y1] in output pixels, or null",
                "motion": MOTION_NOTE}
    return write_shards(out, items, encode_video_clip, options, metadata, motion_quantiles_of_json=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, required=True,
                        help=".jsonl rows {video, caption[, boxes: one [x0,y0,x1,y1] per source frame]} or .csv")
    parser.add_argument("--root", type=Path, required=True, help="directory the video paths are relative to")
    parser.add_argument("--video-column", default="video")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--stride", type=int, default=1, help="source frames between clip frames")
    parser.add_argument("--size", type=int, default=64, help="output frame side (shorter side resize + centre crop)")
    parser.add_argument("--max-clips-per-video", type=int, default=None)


KIND = ShardKind(
    name="video", help="clips from videos listed in a .jsonl/.csv (video, caption[, boxes])",
    add_arguments=add_arguments,
    from_args=lambda args, options: write_video_shards(
        args.out, videos=args.videos, root=args.root, video_column=args.video_column,
        caption_column=args.caption_column, frames=args.frames, stride=args.stride, size=args.size,
        max_clips_per_video=args.max_clips_per_video, options=options))

"""Video: the one PyAV decoder and mp4 writer, frame resizing, optical flow and motion-intensity levels.

- Decoding (`open_video`, `video_frames`, `rgb`, `decode_frames`, `frame_count`, `frame_rate`): the video shard
  kind, video fields of shards (datamodules/shard_dataset.py) and benchmark frame sampling
  (datamodules/benchmarks/frames.py) all decode here. A source is a path or the bytes of a container; a missing
  path is FileNotFoundError, anything PyAV cannot open or decode is VideoDecodeError (its cause is PyAV's error).
- Writing clips (each file written atomically, datamodules/files.py): `write_video`, MPEG-4 (part 2, in every FFmpeg
  build) .mp4 from uint8 frames; `write_gif`, a looping GIF (PIL); `frame_strip`, the frames side by side as one
  image with an optional target box outlined on each, and `write_png` to save it.
- `resize_crop`: shorter side to a size, centre crop to a square.
- Motion intensity (DESIGN, "Mojito"): `mean_flow` is a clip's mean Farneback optical-flow magnitude; a dataset's
  `motion_quantiles` (stored in its index) cut it into MOTION_LEVELS levels 1..MOTION_LEVELS (`motion_level`).
"""

from __future__ import annotations

import bisect
import io
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import numpy as np

from datamodules.files import AtomicFile, atomic_write_bytes

MOTION_LEVELS = 5
STRIP_GAP = 2  # white pixels between the frames of a strip
BOX_COLOUR = (255, 0, 255)  # magenta: in no synthetic palette, so a drawn box is never mistaken for a shape

VideoSource = str | os.PathLike | bytes | bytearray | memoryview
_IN_MEMORY = (bytes, bytearray, memoryview)


class VideoDecodeError(Exception):
    """The file exists but PyAV cannot decode a video frame from it."""


def _describe(source: VideoSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, _IN_MEMORY) else str(source)


@contextmanager
def open_video(source: VideoSource) -> Iterator[Any]:
    """The opened PyAV container of `source`, which has a video stream; closed on leaving the block."""
    import av

    in_memory = isinstance(source, _IN_MEMORY)
    if not in_memory and not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such video file")
    try:
        container = av.open(io.BytesIO(source) if in_memory else str(source))
    except (av.FFmpegError, UnicodeDecodeError) as e:  # not a media file at all
        raise VideoDecodeError(f"{_describe(source)}: cannot open as a video ({e})") from e
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{_describe(source)}: has no video stream")
        yield container


def video_frames(container: Any) -> Iterator[Any]:
    """The decoded PyAV frames of the container's first video stream; decoder errors become VideoDecodeError."""
    import av

    try:
        yield from container.decode(video=0)
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{container.name}: decoding failed ({e})") from e


def rgb(frame: Any) -> np.ndarray:
    """A decoded frame as uint8 [H, W, 3]."""
    return frame.to_ndarray(format="rgb24")


def frame_count(container: Any) -> int:
    """Frames of the first video stream: from the header, else by counting its packets (nothing is decoded)."""
    import av

    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    try:
        count = sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{container.name}: demuxing failed ({e})") from e
    container.seek(0)
    return count


def frame_rate(container: Any, default: float = 25.0) -> float:
    """Frames per second of the first video stream as the container states it (`default` when it does not)."""
    stream = container.streams.video[0]
    return float(stream.average_rate or stream.guessed_rate or default)


def decode_frames(source: VideoSource, indices: Collection[int] | None = None) -> tuple[list[np.ndarray], int]:
    """RGB frames of `source` and how many frames were decoded.

    With `indices`, only the frames at those indices, in increasing order, each once; decoding stops after the
    largest, so the count says whether the video is that long. Without, every frame. `indices=()` decodes every
    frame and converts none: the exact frame count, which a header may overstate.
    """
    wanted = None if indices is None else set(indices)
    last = max(wanted) if wanted else None
    frames, decoded = [], 0
    with open_video(source) as container:
        for frame in video_frames(container):
            if wanted is None or decoded in wanted:
                frames.append(rgb(frame))
            decoded += 1
            if last is not None and decoded > last:
                break
    return frames, decoded


def even_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] with an odd H or W padded to even by repeating the last row / column: yuv420p stores
    colour per 2x2 block, and players refuse odd sizes even where FFmpeg writes them."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _check_clip(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not frames.shape[0]:
        raise ValueError(f"{what}: frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> Path:
    """MPEG-4 (yuv420p, near-lossless quantiser) .mp4 of uint8 [T, H, W, 3] frames at `fps`, written atomically; an
    odd H or W is padded to even (even_frames), so the file's frames may be one row / column larger."""
    import av

    frames = even_frames(_check_clip(frames, "write_video"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as out, av.open(out.file, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.qmin, stream.codec_context.qmax = 1, 2  # colours survive on tiny frames
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """A GIF (PIL, looping forever) of uint8 [T, H, W, 3] frames at `fps` (GIF stores delays in 10 ms units). PIL
    stores identical consecutive frames once, with their delays summed: the GIF plays as long as the clip, but a
    clip that stands still for a while has fewer GIF frames (the mp4 keeps every frame)."""
    from PIL import Image

    frames = _check_clip(frames, "gif")
    if fps <= 0:
        raise ValueError(f"gif: fps must be > 0, got {fps}")
    images = [Image.fromarray(np.ascontiguousarray(frame), "RGB") for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """The looping GIF of uint8 [T, H, W, 3] frames at `fps` (gif_bytes), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, gif_bytes(frames, fps))


def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """The pixel rectangle (left, top, right, bottom; inclusive) a normalised box (x0, y0, x1, y1) covers: the
    pixels whose area it overlaps, at least one, inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    left = min(max(math.floor(x0 * width), 0), width - 1)
    top = min(max(math.floor(y0 * height), 0), height - 1)
    right = min(max(math.ceil(x1 * width) - 1, left), width - 1)
    bottom = min(max(math.ceil(y1 * height) - 1, top), height - 1)
    return left, top, right, bottom


def frame_strip(frames: np.ndarray, boxes: Sequence[Sequence[float]] | None = None, gap: int = STRIP_GAP,
                colour: tuple[int, int, int] = BOX_COLOUR) -> np.ndarray:
    """uint8 [H, T * W + (T - 1) * gap, 3]: the frames of a uint8 [T, H, W, 3] clip left to right, white gaps
    between; with `boxes` (T normalised x0, y0, x1, y1, e.g. a tensor [T, 4]) each frame gets its box's one-pixel
    outline (box_pixels) in `colour`."""
    from PIL import Image, ImageDraw

    frames = _check_clip(frames, "frame_strip")
    count, height, width = frames.shape[:3]
    if boxes is not None and len(boxes) != count:
        raise ValueError(f"frame_strip: {len(boxes)} boxes for {count} frames; give one box per frame")
    strip = Image.new("RGB", (count * width + (count - 1) * gap, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for t, frame in enumerate(frames):
        left = t * (width + gap)
        strip.paste(Image.fromarray(np.ascontiguousarray(frame), "RGB"), (left, 0))
        if boxes is not None:
            x0, y0, x1, y1 = box_pixels(boxes[t], height, width)
            draw.rectangle((left + x0, y0, left + x1, y1), outline=tuple(colour), width=1)
    return np.asarray(strip)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """A uint8 [H, W, 3] image (frame_strip's) as a PNG, written atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buffer, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buffer.getvalue())


def _cv2() -> Any:
    import cv2

    cv2.setNumThreads(1)  # shard writers run one encoding process per core already
    return cv2


def resize_crop(frame: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """Shorter side to `size` (cv2 INTER_AREA), then centre crop to size x size; returns (image, scale, ox, oy):
    a source pixel (x, y) lands at (x * scale - ox, y * scale - oy)."""
    cv2 = _cv2()
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    ox, oy = (nw - size) // 2, (nh - size) // 2
    return np.ascontiguousarray(resized[oy:oy + size, ox:ox + size]), scale, float(ox), float(oy)


def mean_flow(frames: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude (pixels/frame) over consecutive frames of a [T, H, W, 3] uint8 clip."""
    cv2 = _cv2()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.sqrt((flow ** 2).sum(-1)).mean()))
    return float(np.mean(mags)) if mags else 0.0


def motion_quantiles(motions: Sequence[float]) -> list[float]:
    """The MOTION_LEVELS-1 cut points of a dataset's clip motions (quantiles 1/L, ..., (L-1)/L), rounded to 6
    decimals as the index stores them."""
    if len(motions) == 0:
        raise ValueError("motion_quantiles: no motion values")
    qs = np.quantile(np.asarray(motions, dtype=np.float64), np.arange(1, MOTION_LEVELS) / MOTION_LEVELS)
    return [round(float(q), 6) for q in qs]


def motion_level(motion: float, quantiles: Sequence[float]) -> int:
    """A clip's intensity level, 1..MOTION_LEVELS: one more than the number of cut points strictly below its motion
    (a motion equal to a cut point stays in the lower level)."""
    if len(quantiles) != MOTION_LEVELS - 1 or any(a > b for a, b in zip(quantiles, quantiles[1:])):
        raise ValueError(f"motion quantiles must be {MOTION_LEVELS - 1} non-decreasing cut points, got {quantiles!r}")
    if math.isnan(motion):
        raise ValueError("motion is NaN")
    return 1 + bisect.bisect_left(quantiles, motion)

"""Frame sampling from benchmark videos (decoded by datamodules/video.py), with an on-disk cache of the sampled frames.

Two samplings: `num_frames=N` takes N frames at indices round(linspace(0, T-1, N)) of a T-frame video (first
and last included; N > T repeats frames), `fps=F` takes the frame nearest to each time 0, 1/F, 2/F, ... up to
the last frame (optionally thinned uniformly to `max_frames`). Frames are RGB uint8 [T, H, W, 3].
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.files import AtomicFile
from datamodules.video import VideoDecodeError, frame_count, frame_rate, open_video, rgb, video_frames
from datamodules.video import decode_frames as decode_video_frames

CACHE_VERSION = 1  # bump when the sampling rule changes: old cache entries then miss


@dataclass(frozen=True)
class Sampling:
    num_frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError("give exactly one of num_frames and fps")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")


def uniform_indices(total: int, num_frames: int) -> list[int]:
    """Indices of `num_frames` frames spread evenly over a `total`-frame video, first and last included."""
    if total < 1:
        return []
    return [int(i) for i in np.linspace(0, total - 1, num_frames).round().astype(int)]


def _decode_at(path: Path, total: int, num_frames: int) -> tuple[list[np.ndarray], int]:
    """Frames at the uniform indices for a `total`-frame video, and how many frames were decoded."""
    wanted = uniform_indices(total, num_frames)
    frames, decoded = decode_video_frames(path, wanted)
    if decoded <= max(wanted):  # the header over-counted: caller retries with the true count
        return [], decoded
    picks = dict(zip(sorted(set(wanted)), frames))
    return [picks[i] for i in wanted], decoded


def _decode_uniform(path: Path, num_frames: int) -> list[np.ndarray]:
    with open_video(path) as container:
        total = frame_count(container)
    frames, decoded = _decode_at(path, total, num_frames) if total else ([], 0)
    if not frames and decoded:  # header count was wrong; the decode told us the real one
        frames, _ = _decode_at(path, decoded, num_frames)
    return frames


def _decode_fps(path: Path, fps: float) -> list[np.ndarray]:
    """Nearest frame to each time k/fps, online: a frame is converted to RGB only when picked."""
    picks: list[np.ndarray] = []
    with open_video(path) as container:
        rate = frame_rate(container)
        start = prev = prev_time = None
        k = 0
        for index, frame in enumerate(video_frames(container)):
            t = float(frame.time) if frame.time is not None else index / rate
            start = t if start is None else start
            t -= start
            while k / fps <= t + 1e-9:
                target = k / fps
                use_prev = prev is not None and target - prev_time < t - target
                picks.append(rgb(prev if use_prev else frame))
                k += 1
            prev, prev_time = frame, t
    return picks


def decode_frames(path: str | os.PathLike, sampling: Sampling) -> np.ndarray:
    """Decode the sampled frames of `path` (no cache). Raises FileNotFoundError or VideoDecodeError."""
    path = Path(path)
    if sampling.num_frames is not None:
        frames = _decode_uniform(path, sampling.num_frames)
    else:
        frames = _decode_fps(path, sampling.fps)
        if sampling.max_frames is not None and len(frames) > sampling.max_frames:
            frames = [frames[i] for i in uniform_indices(len(frames), sampling.max_frames)]
    if not frames:
        raise VideoDecodeError(f"{path}: no frame could be decoded")
    return np.stack(frames).astype(np.uint8, copy=False)


def cache_path(cache_dir: str | os.PathLike, path: str | os.PathLike, sampling: Sampling) -> Path:
    """Cache file for (file identity, sampling): the key changes when the video is replaced or touched."""
    path = Path(path).resolve()
    st = path.stat()
    key = json.dumps({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "num_frames": sampling.num_frames, "fps": sampling.fps, "max_frames": sampling.max_frames,
                      "version": CACHE_VERSION}, sort_keys=True)
    return Path(cache_dir) / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"


def sample_frames(path: str | os.PathLike, num_frames: int | None = None, *, fps: float | None = None,
                  max_frames: int | None = None, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Sampled RGB frames [T, H, W, 3] uint8 of a video; with `cache_dir`, decoded once and then read from disk.

    Raises FileNotFoundError for a missing file and VideoDecodeError for one PyAV cannot decode.
    """
    sampling = Sampling(num_frames=num_frames, fps=fps, max_frames=max_frames)
    if cache_dir is None:
        return decode_frames(path, sampling)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    cached = cache_path(cache_dir, path, sampling)
    if cached.is_file():
        try:
            return np.load(cached, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            pass  # a damaged entry: decode again and replace it
    frames = decode_frames(path, sampling)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(cached, "wb") as f:  # readers (other workers too) see no entry or a complete one
        np.save(f.file, frames, allow_pickle=False)
    return frames


def probe_video(path: str | os.PathLike) -> None:
    """Raise FileNotFoundError / VideoDecodeError unless the first video frame of `path` decodes."""
    with open_video(path) as container:
        for frame in video_frames(container):
            rgb(frame)
            return
    raise VideoDecodeError(f"{path}: no frame could be decoded")

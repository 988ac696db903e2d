"""Video-caption shards as Mojito trains on them (make_shards.py synthetic-motion and video kinds).

A sample carries `frames.npy` (uint8 [T, H, W, 3]), `json` with its caption, its mean optical flow `motion` and
optionally per-frame `boxes` (pixels); the index metadata carries the dataset's `motion_quantiles`. A batch gives
`video` [B, F, 3, R, R] in [-1, 1] (each frame's shorter side resized to `resolution`, centre-cropped), `caption`,
`level` [B] (the clip's intensity level 1..5 from the train split's quantiles; 0 when its json has no motion), `motion`
[B] and, for evaluation and logging, `boxes` [B, F, 4] normalised to the crop (x0, y0, x1, y1) with `has_boxes` [B].

`frames` takes the first `frames` frames at `frame_stride` (None: all of a clip's frames; a batch's clips must then
have one length). The levels of every split come from the training data's quantiles (the model learns those), or
from a split's own index when there is no training split (validation alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.errors import raise_param_problems
from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.shards import DatasetError
from datamodules.transforms import center_crop, resize_shorter
from datamodules.video import MOTION_LEVELS, motion_level
from lightning_modules.mojito.intensity import NONE

FRAMES_KEY = "frames.npy"


def _normalised_boxes(boxes: Any, frames: list[int], height: int, width: int, resolution: int) -> torch.Tensor | None:
    """The json's pixel boxes of the kept frames, through the resize and centre crop, as fractions of the crop."""
    if not isinstance(boxes, list) or not boxes or max(frames) >= len(boxes):
        return None
    scale = resolution / min(height, width)
    left = (round(width * scale) - resolution) // 2
    top = (round(height * scale) - resolution) // 2
    kept = torch.tensor([boxes[t] for t in frames], dtype=torch.float32) * scale
    kept -= torch.tensor([left, top, left, top], dtype=torch.float32)
    return (kept / resolution).clamp(0, 1)


def video_pixels(clip: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> [T, 3, R, R] in [-1, 1], R = `resolution`: each frame's shorter side resized to R,
    then the centre R x R crop (what the model trains on)."""
    video = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)
    return center_crop(resize_shorter(video, resolution), resolution).float() / 127.5 - 1.0


class VideoClipSample(DecodeSample):
    def __init__(self, resolution: int, frames: int | None, frame_stride: int, quantiles: list[float]):
        super().__init__(required=[FRAMES_KEY, "json"])
        self.resolution, self.frames, self.frame_stride, self.quantiles = resolution, frames, frame_stride, quantiles

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        clip = np.asarray(sample[FRAMES_KEY])
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
            raise KeyError(f"{FRAMES_KEY} must be uint8 [T, H, W, 3], got {clip.dtype} {list(clip.shape)}")
        count = clip.shape[0] if self.frames is None else self.frames
        kept = list(range(0, count * self.frame_stride, self.frame_stride))
        if kept[-1] >= clip.shape[0]:
            raise KeyError(f"the clip has {clip.shape[0]} frames; frames={self.frames} at stride {self.frame_stride} "
                           f"needs {kept[-1] + 1}")
        height, width = clip.shape[1:3]
        video = video_pixels(clip[kept], self.resolution)
        meta = sample["json"] if isinstance(sample["json"], dict) else {}
        caption = meta.get("caption", sample.get("txt"))
        if not isinstance(caption, str):
            raise KeyError("no caption (json.caption or txt)")
        motion = meta.get("motion")
        level = motion_level(float(motion), self.quantiles) if isinstance(motion, (int, float)) else NONE
        boxes = _normalised_boxes(meta.get("boxes"), kept, height, width, self.resolution)
        return {"__key__": sample["__key__"], "video": video, "caption": caption,
                "level": level, "motion": float(motion) if isinstance(motion, (int, float)) else float("nan"),
                "boxes": boxes if boxes is not None else torch.zeros(len(kept), 4),
                "has_boxes": boxes is not None}


class VideoCaptionData(ShardDataModule):
    """Video-caption shards with motion for Mojito."""

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | dict[str, str] | None = None,
                 resolution: int = 256, frames: int | None = 16, frame_stride: int = 1, batch_size: int = 1,
                 num_workers: int = 2, seed: int = 0, shuffle_buffer: int = 1000, max_bad_fraction: float = 0.01,
                 verify: str = "sha256"):
        super().__init__(train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, verify=verify)
        problems = []
        if resolution < 8:
            problems.append(("resolution", f"must be >= 8, got {resolution}"))
        if frames is not None and frames < 2:
            problems.append(("frames", f"must be >= 2 (motion needs two frames) or null for all, got {frames}"))
        if frame_stride < 1:
            problems.append(("frame_stride", f"must be >= 1, got {frame_stride}"))
        raise_param_problems(problems)
        self.save_hyperparameters()  # the resolution and frames a checkpoint was trained at
        self.resolution, self.frames, self.frame_stride = resolution, frames, frame_stride

    def motion_quantiles(self, split: str) -> list[float]:
        """The cut points the levels come from: the training split's, else `split`'s own."""
        source = "train" if "train" in self.sources else split
        quantiles = self.metadata(source).get("motion_quantiles")
        if not isinstance(quantiles, list) or len(quantiles) != MOTION_LEVELS - 1:
            raise DatasetError(f"{self.sources[source].description}: its index.json has no motion_quantiles; write "
                               f"the shards with make_shards.py video or synthetic-motion (they compute them)")
        return [float(q) for q in quantiles]

    def make_sample(self, split: str) -> VideoClipSample:
        return VideoClipSample(self.resolution, self.frames, self.frame_stride, self.motion_quantiles(split))

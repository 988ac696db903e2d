"""Videos of what a model makes, at every k-th validation: `<run dir>/videos/step_<global_step>/<row>.mp4` and
`<row>.gif`, and each row as a TensorBoard video (an animated GIF image summary) when a TensorBoardLogger is among
the trainer's loggers.

The callback knows no method: it keeps the first `max_videos` samples of the first validation batch (rank 0's) and
asks the LightningModule for rows of videos of them (callbacks/validation_samples.py, shared with the image logger),
`pl_module.video_rows(batch, generator)` -> {row name: videos [N, F, 3, H, W] in [0, 1]} (a text-to-video model: its
samples at each intensity level, with and without direction control, the training clips). A row's N videos play side
by side in one clip (the image grid's gaps between them). The generator is seeded with `seed` each time, so two
validations' videos differ only by the model's weights.

TensorBoard's own `add_video` needs moviepy to encode its GIF; here the GIF comes from datamodules/video.py and goes
into the same summary `add_video` writes (an image summary whose encoded image is the GIF), which TensorBoard's
image dashboard plays.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.image_logger import image_grid
from callbacks.validation_samples import ValidationSampleLogger
from datamodules.errors import count_problems, raise_param_problems
from datamodules.video import gif_bytes, write_gif, write_video

TENSORBOARD_TAG = "validation/videos"  # a row's tag: validation/videos/<row>


def video_grid(videos: torch.Tensor) -> np.ndarray:
    """uint8 [F, H', W', 3]: the N videos of [N, F, 3, H, W] (in [0, 1]) side by side, frame by frame, with the image
    grid's gaps (callbacks/image_logger.py image_grid)."""
    frames = [image_grid({"videos": videos[:, t]}) for t in range(videos.shape[1])]
    return (torch.stack(frames).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_video_rows(rows: dict[str, torch.Tensor]) -> None:
    """ValueError listing every row that is not videos [N, F, 3, H, W] with N, F >= 1."""
    if not rows:
        raise ValueError("video_rows returned no rows")
    problems = []
    for name, videos in rows.items():
        if not isinstance(videos, torch.Tensor) or videos.dim() != 5 or videos.shape[2] != 3 or not videos.numel():
            shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
            problems.append(f"row {name!r}: expected videos [N, F, 3, H, W] with N, F >= 1, got {shape}")
    stems: dict[str, str] = {}
    for name in rows:
        if file_stem(name) in stems:
            problems.append(f"rows {stems[file_stem(name)]!r} and {name!r} would share the file name "
                            f"{file_stem(name)!r}; name them apart")
        stems.setdefault(file_stem(name), name)
    if problems:
        raise ValueError("video_rows: " + "; ".join(problems))


def file_stem(row: str) -> str:
    """A row name as a file name: characters other than letters, digits, '-', '_' and '.' become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", row).strip(".") or "row"


def tensorboard_video(tag: str, clip: np.ndarray, fps: float):
    """The Summary that SummaryWriter.add_video writes, for a uint8 [F, H, W, 3] clip: an image whose encoded bytes
    are the clip's GIF."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=clip.shape[1], width=clip.shape[2], colorspace=3,
                          encoded_image_string=gif_bytes(clip, fps))
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class VideoLogger(ValidationSampleLogger):
    """every_n_val: videos at every k-th validation (never in the sanity check). max_videos: samples of the first
    validation batch. directory: where the step folders go (default `<default_root_dir>/videos`). seed: the
    generator's seed at every validation. fps: frames per second of the files. upscale: each pixel becomes an
    upscale x upscale block in the files and TensorBoard (nearest neighbour), so that tiny clips can be seen."""

    rows_method = "video_rows"
    rows_returns = "{row name: videos [N, F, 3, H, W] in [0, 1]}"
    default_subdir = "videos"

    def __init__(self, every_n_val: int = 1, max_videos: int = 4, directory: str | None = None, seed: int = 0,
                 fps: int = 8, upscale: int = 1):
        counts = {"every_n_val": every_n_val, "max_videos": max_videos, "fps": fps, "upscale": upscale}
        raise_param_problems(count_problems(counts, counts))
        super().__init__(every_n_val, max_videos, directory, seed)
        self.fps, self.upscale = fps, upscale

    def write_rows(self, trainer: L.Trainer, rows: dict[str, torch.Tensor]) -> Path:
        """Write every row's mp4 and gif into this step's folder (and TensorBoard); returns the folder."""
        check_video_rows(rows)
        folder = self.output_dir(trainer) / f"step_{trainer.global_step}"
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        for name, videos in rows.items():
            clip = video_grid(videos.detach().float().cpu())
            if self.upscale > 1:
                clip = clip.repeat(self.upscale, axis=1).repeat(self.upscale, axis=2)
            write_video(folder / f"{file_stem(name)}.mp4", clip, self.fps)
            write_gif(folder / f"{file_stem(name)}.gif", clip, self.fps)
            for writer in writers:  # SummaryWriter.add_video's own path to its file writer
                writer._get_file_writer().add_summary(tensorboard_video(f"{TENSORBOARD_TAG}/{name}", clip, self.fps),
                                                      trainer.global_step)
        return folder

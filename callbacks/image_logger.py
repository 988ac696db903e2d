"""Image grids of what a model makes, at every k-th validation: `<run dir>/images/step_<global_step>.png`, and the same
grid in TensorBoard when a TensorBoardLogger is among the trainer's loggers.

The callback knows no method: it keeps the first `max_images` samples of the first validation batch (rank 0's) and
asks the LightningModule for rows of images of them (callbacks/validation_samples.py, shared with the video logger),
`pl_module.image_rows(batch, generator)` -> {row name: images [N, 3, H, W] in [0, 1]} (a text-to-image model: its
conditions, its samples, the targets). Rows are stacked in the order given, one image per column, with a gap between
images; the row names are written into the PNG as its "rows" text field (comma-separated) rather than drawn. The
generator is seeded with `seed` each time, so two grids differ only by the model's weights.

Only rank 0 draws and writes; the others do nothing (no collective is called, so the ranks need not agree on
anything but the validation count, which each keeps the same way).
"""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from callbacks.validation_samples import ValidationSampleLogger
from datamodules.errors import count_problems, raise_param_problems
from datamodules.files import atomic_write_bytes

GAP = 2  # pixels between images and around the grid
GAP_VALUE = 1.0  # white
TENSORBOARD_TAG = "validation/images"


def image_grid(rows: dict[str, torch.Tensor], gap: int = GAP) -> torch.Tensor:
    """[3, H', W'] in [0, 1]: one row per entry of `rows` (images [N, 3, H, W] in [0, 1], all of one H x W), in
    order, images left to right; a row with fewer images than the longest leaves its end blank."""
    if not rows:
        raise ValueError("image_rows returned no rows")
    problems = []
    sizes = set()
    for name, images in rows.items():
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.shape[0]:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            problems.append(f"row {name!r}: expected images [N, 3, H, W] with N >= 1, got {shape}")
            continue
        sizes.add(tuple(images.shape[-2:]))
    if len(sizes) > 1:
        problems.append(f"rows have different image sizes: {sorted(sizes)}")
    if problems:
        raise ValueError("image_rows: " + "; ".join(problems))
    (height, width), = sizes
    columns = max(images.shape[0] for images in rows.values())
    grid = torch.full((3, gap + len(rows) * (height + gap), gap + columns * (width + gap)), GAP_VALUE)
    for r, images in enumerate(rows.values()):
        top = gap + r * (height + gap)
        for c, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
            left = gap + c * (width + gap)
            grid[:, top:top + height, left:left + width] = image
    return grid


def png_bytes(grid: torch.Tensor, row_names: list[str]) -> bytes:
    """The grid as an 8-bit RGB PNG with the row names in its "rows" text field."""
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    info = PngInfo()
    info.add_text("rows", ",".join(row_names))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class ImageLogger(ValidationSampleLogger):
    """every_n_val: a grid at every k-th validation (never in the sanity check). max_images: samples (columns) of the
    first validation batch. directory: where the PNGs go (default `<default_root_dir>/images`). seed: the generator's
    seed at every grid."""

    rows_method = "image_rows"
    rows_returns = "{row name: images [N, 3, H, W] in [0, 1]}"
    default_subdir = "images"

    def __init__(self, every_n_val: int = 1, max_images: int = 4, directory: str | None = None, seed: int = 0):
        counts = {"every_n_val": every_n_val, "max_images": max_images}
        raise_param_problems(count_problems(counts, counts))
        super().__init__(every_n_val, max_images, directory, seed)

    def write_rows(self, trainer: L.Trainer, rows: dict[str, torch.Tensor]) -> Path:
        """Draw the rows as one grid and write it; returns the PNG's path."""
        grid = image_grid(rows)
        path = self.output_dir(trainer) / f"step_{trainer.global_step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png_bytes(grid, list(rows)))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(TENSORBOARD_TAG, grid, global_step=trainer.global_step)
        return path

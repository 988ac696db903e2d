"""Mojito's Motion Intensity Modulator: a motion level enters the UNet through its time embedding.

A clip's level (1..MOTION_LEVELS, from its mean optical flow and the dataset's quantiles: datamodules/video.py) or
NONE (0: unknown, dropped for guidance) is embedded and given to the UNet as `timestep_cond`, which diffusers'
TimestepEmbedding adds, through its `cond_proj`, to the sinusoidal timestep features before its first layer (the same
place SVD's motion_bucket_id enters). NONE's embedding is fixed at zero (padding_idx) and `cond_proj` starts at zero,
so a NONE clip, and every clip before training, sees exactly the base UNet.

At sampling, intensity guidance has its own scale:
eps = eps(empty) + s_text * (eps(text, NONE) - eps(empty)) + s_int * (eps(text, level) - eps(text, NONE)).
"""

from __future__ import annotations

import torch
from torch import nn

from datamodules.video import MOTION_LEVELS

NONE = 0  # the level of a clip without intensity (dropout, unknown motion)


class IntensityEmbedding(nn.Module):
    """Levels [B] (NONE or 1..MOTION_LEVELS) -> timestep_cond [B, dim]; NONE's row is zero and never trained."""

    def __init__(self, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(MOTION_LEVELS + 1, dim, padding_idx=NONE)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        if levels.dtype not in (torch.int64, torch.int32) or levels.ndim != 1:
            raise ValueError(f"levels must be an integer tensor [B], got {levels.dtype} {tuple(levels.shape)}")
        if levels.numel() and (int(levels.min()) < NONE or int(levels.max()) > MOTION_LEVELS):
            raise ValueError(f"levels must be in {NONE}..{MOTION_LEVELS} ({NONE} = none), got {levels.tolist()}")
        return self.embedding(levels)


def add_time_condition(unet: nn.Module, dim: int) -> nn.Linear:
    """Give the UNet's time embedding a zero-initialised `cond_proj` from `dim` (recorded in its config as
    `time_cond_proj_dim`, so a saved UNet rebuilds with it); a UNet that has one of that size keeps it (a trained
    Mojito UNet), one of another size is an error."""
    embedding = unet.time_embedding
    existing = getattr(embedding, "cond_proj", None)
    if existing is not None:
        if existing.in_features != dim:
            raise ValueError(f"intensity_dim: the UNet's time embedding already takes a {existing.in_features}-wide "
                             f"timestep_cond; set intensity_dim: {existing.in_features}")
        return existing
    projection = nn.Linear(dim, embedding.linear_1.in_features, bias=False)
    nn.init.zeros_(projection.weight)
    embedding.cond_proj = projection.to(embedding.linear_1.weight.device, embedding.linear_1.weight.dtype)
    unet.register_to_config(time_cond_proj_dim=dim)
    return embedding.cond_proj


def intensity_guided(empty: torch.Tensor, text: torch.Tensor, text_level: torch.Tensor, text_scale: float,
                     intensity_scale: float) -> torch.Tensor:
    """Classifier-free guidance over the prompt and, with its own scale, over the intensity level."""
    return empty + text_scale * (text - empty) + intensity_scale * (text_level - text)


def level_problem(level: object) -> str | None:
    """Why `level` is not a requested intensity (an integer 1..MOTION_LEVELS), or None."""
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MOTION_LEVELS:
        return f"an intensity level is an integer 1..{MOTION_LEVELS}, got {level!r}"
    return None

"""The stock baseline: one diffusers `ControlNetModel` (a trainable copy of encoder + mid, its own condition
embedding, zero-convs), trained in full on ONE condition type, behind the interface every control variant shares:
`forward(sample, timestep, encoder_hidden_states, conditions, present, strengths) -> (down residuals, mid residual)`.
Several inputs of its type are combined by element-wise max (the union of edges or regions), as a single ControlNet can
only take one map."""

from __future__ import annotations

import math

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from datamodules.errors import raise_param_problems
from lightning_modules.flexecontrol.conditions import Maps, Present, check_condition_inputs

# diffusers' condition embedding: 16 channels, then one stride-2 conv per further width
EMBEDDING_WIDTHS = (16, 32, 96, 256)


def embedding_widths(condition_scale: int) -> tuple[int, ...]:
    """The condition embedding's widths for an image `condition_scale` times the latents' size (8 for SD: the stock
    (16, 32, 96, 256); 1 in pixel space: no downsampling)."""
    steps = round(math.log2(condition_scale)) if condition_scale >= 1 else -1
    if steps < 0 or 2 ** steps != condition_scale or steps >= len(EMBEDDING_WIDTHS):
        raise ValueError(f"condition_scale must be 1, 2, 4 or 8, got {condition_scale}")
    return EMBEDDING_WIDTHS[:steps + 1]


class ControlNetBaseline(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, condition_type: str, channels: int, condition_scale: int):
        super().__init__()
        raise_param_problems([("condition_channels", f"must be 1 or 3, got {channels}")] if channels not in (1, 3)
                             else [])
        self.condition_type, self.channels, self.condition_scale = condition_type, channels, condition_scale
        self.controlnet = ControlNetModel.from_unet(
            unet, conditioning_channels=channels,
            conditioning_embedding_out_channels=embedding_widths(condition_scale))

    def combined_map(self, conditions: Maps, present: Present, like: torch.Tensor, size: tuple[int, int],
                     strengths: dict[str, float] | None = None) -> torch.Tensor:
        """[B, C, H, W]: the max over the present inputs of the one type (zeros when a sample has none)."""
        check_condition_inputs(conditions, present, strengths, {self.condition_type: self.channels},
                               batch=like.shape[0], size=size, owner="ControlNet")
        if self.condition_type not in conditions:
            return like.new_zeros(like.shape[0], self.channels, *size)
        maps, mask = conditions[self.condition_type], present[self.condition_type]
        masked = maps * mask[:, :, None, None, None].to(maps.dtype)
        return masked.amax(dim=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                conditions: Maps, present: Present, strengths: dict[str, float] | None = None):
        image_size = (sample.shape[-2] * self.condition_scale, sample.shape[-1] * self.condition_scale)
        cond = self.combined_map(conditions, present, sample, image_size, strengths).to(sample.dtype)
        scale = float((strengths or {}).get(self.condition_type, 1.0))
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond=cond,
                                    conditioning_scale=scale, return_dict=False)
        return list(down), mid

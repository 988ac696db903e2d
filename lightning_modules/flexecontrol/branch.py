"""FlexEControl's control branch (arXiv 2405.04834; DESIGN.md, "FlexEControl"): a frozen copy of the UNet's encoder
and middle block (diffusers' ControlNetModel.from_unet) whose Linear and Conv2d weights get the shared-Kronecker
updates of kronecker.py, zero-convolutions into the UNet's skip and middle residuals (trained in full), and one light
condition encoder per condition type (space-to-depth, then convs at the branch input's size).

Every present input map goes through its type's encoder; the encoders' outputs, each times its type's strength, are
summed per sample into one feature map that the branch adds to its conv_in output (the ControlNet's own conditioning
embedding is an nn.Identity). A sample can carry any set of conditions, several inputs of one type, or none (then it
gets the branch on its noisy sample alone, as a ControlNet with a zero condition).

The branch is a diffusers ModelMixin/ConfigMixin: save_pretrained / from_pretrained work without Lightning code,
unmerged (H, u, v and the frozen copy) or merged (merged_copy(): plain weights W + dW, no updates).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import zero_module
from torch import nn

from datamodules.errors import raise_param_problems
from lightning_modules.flexecontrol.conditions import check_condition_inputs
from lightning_modules.flexecontrol.kronecker import (FACTOR_SUFFIXES, SharedKroneckerFactors, add_kronecker_updates,
                                                      alpha_problems, kronecker_layer_names, load_plain_state_dict,
                                                      merge_kronecker_updates, positive_int_problems)

ZERO_CONVOLUTIONS = ("controlnet_down_blocks", "controlnet_mid_block")
# what trains in the method; "other": anything else someone unfroze (none by default)
TRAINABLE_GROUPS = ("kronecker_shared", "kronecker_layers", "condition_encoders", "zero_convolutions", "other")


def default_encoder_widths(condition_scale: int) -> list[int]:
    """Channels of a condition encoder's 3x3 convs: 8 * scale and 16 * scale (64, 128 for an SD VAE's scale 8; 128
    is the width of the ControlNet paper's encoder's last stage)."""
    return [8 * condition_scale, 16 * condition_scale]


class ConditionEncoder(nn.Module):
    """One condition type's encoder: maps [N, C, H, W] (H x W = the branch input's size x `scale`) to features
    [N, embedding_channels, H / scale, W / scale].

    Space-to-depth first (pixel_unshuffle: each scale x scale patch becomes C * scale^2 channels), so that every conv
    runs at the branch input's size rather than the map's (for SD's 512-px maps on the 64 x 64 latent grid: the
    activations kept for backward are scale^2 times fewer pixels); then 3x3 convs of `widths` channels with SiLU, and
    a zero-initialised 3x3 conv_out, so that a new encoder adds nothing to the branch at the start.
    """

    def __init__(self, channels: int, embedding_channels: int, widths: list[int], scale: int):
        super().__init__()
        self.scale = scale
        self.conv_in = nn.Conv2d(channels * scale ** 2, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(width_in, width_out, kernel_size=3, padding=1)
                                    for width_in, width_out in zip(widths, widths[1:]))
        self.conv_out = zero_module(nn.Conv2d(widths[-1], embedding_channels, kernel_size=3, padding=1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        features = F.silu(self.conv_in(F.pixel_unshuffle(maps, self.scale)))
        for block in self.blocks:
            features = F.silu(block(features))
        return self.conv_out(features)


def is_zero_convolution(name: str) -> bool:
    return name.split(".")[0] in ZERO_CONVOLUTIONS


def branch_config_problems(controlnet_config, condition_channels, condition_scale, kronecker_n, kronecker_rank,
                           kronecker_alpha, encoder_widths, merged) -> list[tuple[str, str]]:
    problems = []
    if not isinstance(controlnet_config, Mapping) or not controlnet_config.get("block_out_channels"):
        problems.append(("controlnet_config", "must be a ControlNetModel config (a mapping with block_out_channels)"))
    elif controlnet_config.get("controlnet_conditioning_channel_order", "rgb") != "rgb":
        # "bgr" would flip the channels of the fused condition features, which are no image
        problems.append(("controlnet_config.controlnet_conditioning_channel_order", "must be 'rgb'"))
    if not isinstance(condition_channels, Mapping) or not condition_channels:
        problems.append(("condition_channels", "must map at least one condition type to its map's channel count"))
    else:
        reserved = nn.ModuleDict()
        for name, channels in condition_channels.items():
            if not isinstance(name, str) or not name or "." in name or hasattr(reserved, name):
                problems.append(("condition_channels", (f"{name!r} cannot name a condition type (a non-empty name"
                                                        " without '.', not an nn.ModuleDict attribute)")))
            if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
                problems.append((f"condition_channels.{name}", f"must be an integer >= 1, got {channels!r}"))
    scale_ok = (not isinstance(condition_scale, bool) and isinstance(condition_scale, int) and condition_scale >= 1
                and condition_scale & (condition_scale - 1) == 0)
    if not scale_ok:
        problems.append(("condition_scale", ("must be a power of two >= 1 (image size / branch input size: 8 with"
                                             f" an SD VAE, 1 in pixel space), got {condition_scale!r}")))
    problems += positive_int_problems(kronecker_n=kronecker_n, kronecker_rank=kronecker_rank)
    problems += [("kronecker_alpha", message) for _, message in alpha_problems(kronecker_alpha)]
    if encoder_widths is not None and (
            not isinstance(encoder_widths, (list, tuple)) or not encoder_widths
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in encoder_widths)):
        problems.append(("encoder_widths", f"must be a non-empty list of integers >= 1, got {encoder_widths!r}"))
    if not isinstance(merged, bool):
        problems.append(("merged", f"must be true or false, got {merged!r}"))
    return problems


class FlexEControlBranch(ModelMixin, ConfigMixin):
    """The control branch: `forward(...)` returns the residuals the UNet takes as `down_block_additional_residuals`
    and `mid_block_additional_residual`.

    Config: `controlnet_config` (the ControlNetModel config of the UNet's copy), `condition_channels` (type name ->
    channels of its map), `condition_scale` (condition map size / branch input size), `kronecker_n`,
    `kronecker_rank`, `kronecker_alpha`, `encoder_widths` (channels of each condition encoder's 3x3 convs; None: the
    default_encoder_widths), `merged` (True: plain weights W + dW, no Kronecker updates).

    Trainable: H (`kronecker_factors`), every adapted layer's u, v, the condition encoders and the zero-convolutions;
    the copy's weights are frozen. Build it from a UNet with `from_unet`; `__init__` is the config path
    (from_pretrained / from_config), whose weights come from the checkpoint.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, controlnet_config: dict[str, Any], condition_channels: dict[str, int], condition_scale: int = 1,
                 kronecker_n: int = 4, kronecker_rank: int = 4, kronecker_alpha: float = 1.0,
                 encoder_widths: list[int] | None = None, merged: bool = False):
        super().__init__()
        raise_param_problems(branch_config_problems(controlnet_config, condition_channels, condition_scale,
                                                    kronecker_n, kronecker_rank, kronecker_alpha, encoder_widths,
                                                    merged))
        self.controlnet = ControlNetModel.from_config(dict(controlnet_config))
        # The fused output of the per-type encoders is the conditioning: it is added to conv_in's output as is.
        self.controlnet.controlnet_cond_embedding = nn.Identity()
        self.controlnet.requires_grad_(False)
        self.embedding_channels = self.controlnet.config.block_out_channels[0]
        widths = list(encoder_widths) if encoder_widths is not None else default_encoder_widths(condition_scale)
        self.condition_encoders = nn.ModuleDict({
            name: ConditionEncoder(channels, self.embedding_channels, widths, condition_scale)
            for name, channels in condition_channels.items()})
        self.kronecker_factors = None
        if not merged:
            self.kronecker_factors = SharedKroneckerFactors(kronecker_n)
            add_kronecker_updates(self.controlnet, self.kronecker_factors, rank=kronecker_rank, alpha=kronecker_alpha,
                                  include=lambda name, layer: not is_zero_convolution(name))
        for name in ZERO_CONVOLUTIONS:
            getattr(self.controlnet, name).requires_grad_(True)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, condition_channels: Mapping[str, int], *, condition_scale: int,
                  n: int = 4, rank: int = 4, alpha: float = 1.0,
                  encoder_widths: list[int] | None = None) -> FlexEControlBranch:
        """A branch whose copy holds the UNet's encoder and middle-block weights (ControlNetModel.from_unet), frozen,
        with Kronecker updates (v = 0: it starts as the copy) on every Linear/Conv2d but the zero-convolutions."""
        problems = []
        if not isinstance(unet, UNet2DConditionModel):
            problems.append(("unet", f"must be a diffusers UNet2DConditionModel, got {type(unet).__name__}"))
        if not isinstance(condition_channels, Mapping):
            problems.append(("condition_channels", "must map condition type names to channel counts"))
        raise_param_problems(problems)
        source = ControlNetModel.from_unet(unet)
        controlnet_config = {key: value for key, value in source.config.items() if not key.startswith("_")}
        widths = encoder_widths
        if widths is None and not branch_config_problems(source.config, condition_channels, condition_scale, n, rank,
                                                         alpha, None, False):
            # stored resolved, so that a saved config does not depend on this default staying as it is
            widths = default_encoder_widths(condition_scale)
        branch = cls(controlnet_config=controlnet_config, condition_channels=dict(condition_channels),
                     condition_scale=condition_scale, kronecker_n=n, kronecker_rank=rank, kronecker_alpha=alpha,
                     encoder_widths=widths, merged=False)
        copied = {key: value for key, value in source.state_dict().items()
                  if not key.startswith("controlnet_cond_embedding.")}
        load_plain_state_dict(branch.controlnet, copied)
        return branch

    @property
    def condition_types(self) -> list[str]:
        return list(self.condition_encoders)

    def adapted_layer_names(self) -> list[str]:
        """The copy's layers that carry a Kronecker update (names inside `controlnet`)."""
        return kronecker_layer_names(self.controlnet)

    def encode_conditions(self, conditions: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
                          strengths: Mapping[str, float] | None, sample: torch.Tensor) -> torch.Tensor:
        """The fused condition features [B, block_out_channels[0], h, w] for a noisy `sample` [B, C, h, w]:
        per sample, the sum over its present inputs of strength * encoder(map); zero where nothing is present."""
        batch, height, width = sample.shape[0], sample.shape[-2], sample.shape[-1]
        scale = self.config.condition_scale
        check_condition_inputs(conditions, present, strengths, self.config.condition_channels, batch=batch,
                               size=(height * scale, width * scale), owner="branch")
        fused = sample.new_zeros(batch, self.embedding_channels, height, width)
        for name, maps in conditions.items():
            rows, inputs = present[name].nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            encoder = self.condition_encoders[name]
            features = encoder(maps[rows, inputs].to(encoder.conv_in.weight.dtype))
            strength = 1.0 if strengths is None else float(strengths.get(name, 1.0))
            fused = fused.index_add(0, rows, features.to(fused.dtype), alpha=strength)
        return fused

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                conditions: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
                strengths: Mapping[str, float] | None = None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(down residuals, mid residual) for the UNet. conditions[c]: [B, K, C_c, H, W] maps of type c (K inputs
        per sample, H x W = sample size x condition_scale); present[c]: bool [B, K], which inputs a sample has;
        strengths[c]: a factor on type c's features (default 1). Types absent from `conditions` are absent."""
        fused = self.encode_conditions(conditions, present, strengths, sample)
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond=fused, return_dict=False)
        return tuple(down), mid

    def merged_copy(self) -> FlexEControlBranch:
        """A copy with the Kronecker updates merged into plain weights (W + dW) and config merged=True: what
        save_pretrained exports for use without the updates; the same outputs as this branch."""
        merged = copy.deepcopy(self)
        if not merged.config.merged:
            merge_kronecker_updates(merged.controlnet)
            merged.kronecker_factors = None
            merged.register_to_config(merged=True)
        return merged

    def trainable_parameter_group(self, name: str) -> str:
        """Which of TRAINABLE_GROUPS a parameter name (as in named_parameters()) belongs to."""
        if name.startswith("kronecker_factors."):
            return "kronecker_shared"
        if name.startswith("condition_encoders."):
            return "condition_encoders"
        if name.startswith("controlnet."):
            inner = name[len("controlnet."):]
            if is_zero_convolution(inner):
                return "zero_convolutions"
            if name.endswith(FACTOR_SUFFIXES):
                return "kronecker_layers"
        return "other"

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, parameter in self.named_parameters() if parameter.requires_grad]

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameter count per group (TRAINABLE_GROUPS), each parameter counted once."""
        counts = dict.fromkeys(TRAINABLE_GROUPS, 0)
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                counts[self.trainable_parameter_group(name)] += parameter.numel()
        return counts

    def num_trainable_parameters(self) -> int:
        return sum(self.trainable_parameter_counts().values())

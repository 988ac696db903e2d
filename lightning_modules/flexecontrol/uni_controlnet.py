"""Uni-ControlNet's local adapter (Zhao et al., NeurIPS 2023, arXiv 2305.16322) on diffusers' UNet: FlexEControl's
baseline (DESIGN.md, "FlexEControl").

The adapter, as the paper and its released code (`models/local_adapter.py`) define it:

- a trainable copy of the UNet's encoder and middle block, initialised from the UNet's weights, with zero-initialised
  1x1 convolutions from each of its outputs into the frozen UNet's skip and middle residuals (diffusers'
  `ControlNetModel`, whose forward and zero-convs are used unchanged; its input condition embedding is removed:
  Uni-ControlNet adds nothing to the copy's input);
- all condition types' maps stacked in channels, in a fixed type order, zeros where a type is absent;
- a multi-scale condition feature extractor: a conv stack from the image-size maps down to features at each of the
  UNet's resolution levels, each level's features through a zero-initialised 3x3 convolution;
- feature denormalisation (FDN, SPADE-like) replacing both GroupNorms of the first ResBlock of each resolution level:
  `GroupNorm(x, affine=False) * (1 + gamma(f)) + beta(f)`, gamma and beta 3x3 convolutions of the level's features f.
  The UNet's affine weights of those norms are not carried into the copy (the released code drops them too).

At SD-1.5 shapes with 7 condition types of 3 channels (21 input channels, image 512) the official adapter has about
412M parameters; this one has 411,903,552, as many as the official layers (its feature extractor and FDN convs
counted by hand from its code, the copy and zero-convs being those of the SD-1.5 UNet's encoder and middle block).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import zero_module
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from datamodules.errors import raise_param_problems
from lightning_modules.flexecontrol.conditions import check_condition_inputs

# The official injection widths at SD-1.x's block widths; other UNets get them scaled by their own widths per level.
SD_BLOCK_OUT_CHANNELS = (320, 640, 1280, 1280)
SD_INJECT_CHANNELS = (192, 256, 384, 512)
# The feature extractor's stem widths, fixed in the official code (32, then doubled at each halving before level 0).
STEM_CHANNELS = 32
# The UNet's parts the copy is initialised from, by state-dict name as in the official weight preparation.
COPIED_FROM_UNET = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block")


def scaled_inject_channels(block_out_channels: Sequence[int]) -> list[int]:
    """The official injection widths (192, 256, 384, 512 at SD's 320, 640, 1280, 1280), level i scaled by the
    UNet's width at level i over SD's (nearest integer, at least 1)."""
    if len(block_out_channels) > len(SD_INJECT_CHANNELS):
        raise ValueError(f"the official injection widths cover {len(SD_INJECT_CHANNELS)} resolution levels, the UNet "
                         f"has {len(block_out_channels)}: give inject_channels")
    return [max(1, round(inject * width / sd_width))
            for inject, width, sd_width in zip(SD_INJECT_CHANNELS, block_out_channels, SD_BLOCK_OUT_CHANNELS)]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


class FeatureDenormalization(nn.Module):
    """FDN: `GroupNorm(x, affine=False) * (1 + conv_gamma(f)) + conv_beta(f)`, f the condition features of x's
    resolution level (resized to x's size, nearest, if they differ).

    It stands in for a ResnetBlock2D's `norm1` / `norm2`, which diffusers calls with x alone, so f is set on
    `features` by UniControlNetAdapter.forward for the time of one forward pass (and its backward pass under
    gradient checkpointing). A copy or pickle of the module is without them.
    """

    def __init__(self, channels: int, feature_channels: int, num_groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=False)
        self.conv_gamma = conv3x3(feature_channels, channels)
        self.conv_beta = conv3x3(feature_channels, channels)
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features
        if features is None:
            raise RuntimeError("FeatureDenormalization has no condition features: run the copy through "
                               "UniControlNetAdapter.forward, which sets them")
        if features.shape[-2:] != x.shape[-2:]:
            features = F.interpolate(features, size=x.shape[-2:], mode="nearest")
        return self.norm(x) * (1 + self.conv_gamma(features)) + self.conv_beta(features)

    def __getstate__(self) -> dict:
        # The features belong to one forward pass, and deepcopy refuses a graph's non-leaf tensor (an EMA copy
        # taken between a checkpointed forward and its backward would fail).
        return {**super().__getstate__(), "features": None}


class ConditionFeatureExtractor(nn.Module):
    """The stacked condition maps (image size) to features at each of the UNet's resolution levels.

    With `halvings` = log2(image size / latent size): a stem (3x3 conv to 32 channels, then halvings - 1 stages of a
    stride-2 conv doubling the width and a 3x3 conv), then one stride-2 conv per level (stride 1 at level 0 when the
    maps are at latent size) to that level's injection width, each level's output through a zero-initialised 3x3
    conv. At halvings = 3 this is the official layout: 32, 64, 64, 128, 128, then the four levels. SiLU after every
    conv but the zero-convs.
    """

    def __init__(self, in_channels: int, level_channels: Sequence[int], halvings: int):
        super().__init__()
        stem: list[nn.Module] = [conv3x3(in_channels, STEM_CHANNELS), nn.SiLU()]
        width = STEM_CHANNELS
        for _ in range(halvings - 1):
            stem += [conv3x3(width, 2 * width, stride=2), nn.SiLU(), conv3x3(2 * width, 2 * width), nn.SiLU()]
            width *= 2
        self.stem = nn.Sequential(*stem)
        strides = [2 if halvings > 0 else 1] + [2] * (len(level_channels) - 1)
        widths = [width, *level_channels]
        self.levels = nn.ModuleList(nn.Sequential(conv3x3(widths[i], widths[i + 1], stride), nn.SiLU())
                                    for i, stride in enumerate(strides))
        self.zero_convs = nn.ModuleList(zero_module(conv3x3(channels, channels)) for channels in level_channels)

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        features = self.stem(maps)
        per_level = []
        for level, zero_conv in zip(self.levels, self.zero_convs):
            features = level(features)
            per_level.append(zero_conv(features))
        return per_level


class NoInputCondition(nn.Module):
    """Stands in for ControlNetModel's condition embedding, whose output is added to the copy's input: Uni-ControlNet
    adds nothing there (its conditions enter through FDN), so this gives a zero that broadcasts."""

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return condition.new_zeros(())


def stack_conditions(conditions: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
                     condition_channels: Mapping[str, int], *, batch_size: int, image_size: tuple[int, int],
                     strengths: Mapping[str, float] | None = None, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """All types' maps in one tensor [B, sum of channels, H, W], one channel slot per type in `condition_channels`'
    order. `conditions[t]` is [B, K, C, H, W] (K inputs of type t), `present[t]` [B, K] bool: the present inputs of a
    type are merged into its slot by element-wise max, zeros where none is present or the type is not given; a
    strength multiplies its type's slot.

    Why max: a slot holds one map, and the maps Uni-ControlNet takes (edges, sketches, segmentation regions, pose
    skeletons) mark where something is; the max of several such maps is their union (every edge or region of each
    input kept, in the map's own range), where a sum would leave the range where they overlap and a mean would dim
    every input by 1/K. Raises ValueError (one line, every problem: conditions.check_condition_inputs) on unknown
    types, shapes, channels or sizes.
    """
    check_condition_inputs(conditions, present, strengths, condition_channels, batch=batch_size, size=image_size,
                           owner="adapter")
    height, width = image_size
    slots = []
    for name, channels in condition_channels.items():
        maps = conditions.get(name)
        if maps is None or maps.shape[1] == 0:
            slots.append(torch.zeros(batch_size, channels, height, width, dtype=dtype, device=device))
            continue
        maps = maps.to(dtype=dtype, device=device)
        mask = present[name].to(device=maps.device)[:, :, None, None, None]
        # -inf, not 0, for absent inputs: maps may be signed, and an absent input must not take part in the max.
        merged = maps.masked_fill(~mask, float("-inf")).amax(dim=1)
        merged = torch.where(mask.any(dim=1), merged, torch.zeros((), dtype=dtype, device=maps.device))
        if strengths and name in strengths:
            merged = merged * strengths[name]
        slots.append(merged)
    return torch.cat(slots, dim=1)


class UniControlNetAdapter(ModelMixin, ConfigMixin):
    """Uni-ControlNet's local adapter (module docstring). Build it with `from_unet`; `forward` gives the residuals
    the frozen UNet takes as `down_block_additional_residuals` / `mid_block_additional_residual`.

    `encoder_config`: the ControlNetModel config of the copy (what `ControlNetModel.from_unet` derives from the
    UNet); `condition_channels`: condition type -> its map channels, in stacking order; `condition_scale`: image size
    over latent size (8 with an SD VAE, 1 in pixel space), a power of 2; `inject_channels`: the condition feature
    width at each resolution level.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, encoder_config: dict, condition_channels: dict[str, int], condition_scale: int,
                 inject_channels: list[int]):
        super().__init__()
        self.encoder = ControlNetModel.from_config(encoder_config)
        raise_param_problems(
            config_problems(condition_channels, condition_scale)
            + [("inject_channels", message)
               for message in inject_channel_problems(inject_channels, len(self.encoder.down_blocks))])
        self.encoder.controlnet_cond_embedding = NoInputCondition()
        self.feature_extractor = ConditionFeatureExtractor(sum(condition_channels.values()), inject_channels,
                                                           int(math.log2(condition_scale)))
        for block, feature_channels in zip(self.encoder.down_blocks, inject_channels):
            first: ResnetBlock2D = block.resnets[0]
            for norm_name in ("norm1", "norm2"):
                norm: nn.GroupNorm = getattr(first, norm_name)
                setattr(first, norm_name, FeatureDenormalization(norm.num_channels, feature_channels,
                                                                 norm.num_groups, norm.eps))

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, condition_channels: dict[str, int], *, condition_scale: int,
                  inject_channels: Sequence[int] | None = None) -> UniControlNetAdapter:
        """The adapter for `unet`, its copy initialised from the UNet's encoder and middle block (the UNet is not
        changed). `inject_channels` defaults to the official widths scaled to the UNet (scaled_inject_channels)."""
        problems = config_problems(condition_channels, condition_scale)
        if not isinstance(unet, UNet2DConditionModel):
            problems.append(("unet", f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}"))
            raise_param_problems(problems)
        extra = [key for key in ("class_embed_type", "num_class_embeds", "addition_embed_type")
                 if unet.config.get(key) is not None]
        if extra:
            problems.append(("unet", (f"has {', '.join(extra)}: the adapter is built for SD-1.x UNets, which have "
                                      "no class or added embeddings")))
        levels = len(unet.config.block_out_channels)
        if inject_channels is None:
            try:
                inject_channels = scaled_inject_channels(unet.config.block_out_channels)
            except ValueError as error:
                problems.append(("inject_channels", str(error)))
        else:
            problems += [("inject_channels", message) for message in inject_channel_problems(inject_channels, levels)]
        raise_param_problems(problems)
        # Only the config diffusers derives from the UNet is wanted here: built on the meta device, it costs nothing.
        with torch.device("meta"):
            encoder_config = ControlNetModel.from_unet(unet, load_weights_from_unet=False).config
        adapter = cls(encoder_config={k: v for k, v in encoder_config.items() if not k.startswith("_")},
                      condition_channels=dict(condition_channels), condition_scale=condition_scale,
                      inject_channels=[int(c) for c in inject_channels])
        adapter.to(unet.device)
        if adapter.dtype != unet.dtype:
            adapter.to(dtype=unet.dtype)
        own = adapter.encoder.state_dict()
        copied = {k: v for k, v in unet.state_dict().items() if k.split(".")[0] in COPIED_FROM_UNET and k in own}
        adapter.encoder.load_state_dict(copied, strict=False)
        return adapter

    @property
    def condition_types(self) -> list[str]:
        """The condition types in stacking order."""
        return list(self.config.condition_channels)

    def denormalizations(self) -> list[tuple[FeatureDenormalization, FeatureDenormalization]]:
        """Per resolution level, the FDNs (norm1, norm2) of its first ResBlock."""
        return [(block.resnets[0].norm1, block.resnets[0].norm2) for block in self.encoder.down_blocks]

    def stack_conditions(self, sample: torch.Tensor, conditions: Mapping[str, torch.Tensor],
                         present: Mapping[str, torch.Tensor],
                         strengths: Mapping[str, float] | None = None) -> torch.Tensor:
        """The adapter's input for `sample` (module function stack_conditions at the sample's batch, image size,
        dtype and device)."""
        scale = self.config.condition_scale
        return stack_conditions(conditions, present, self.config.condition_channels, batch_size=sample.shape[0],
                                image_size=(sample.shape[-2] * scale, sample.shape[-1] * scale),
                                strengths=strengths, dtype=sample.dtype, device=sample.device)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                conditions: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
                strengths: Mapping[str, float] | None = None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(down residuals, mid residual) for the UNet: the down residuals in the UNet's skip order (conv_in's
        output, then each down block's), each through its zero-conv. `conditions[t]`: [B, K, C, H, W] at image size
        (sample size times condition_scale), `present[t]`: [B, K] bool, `strengths[t]`: multiplies type t's slot
        (stack_conditions)."""
        stacked = self.stack_conditions(sample, conditions, present, strengths)
        for features, pair in zip(self.feature_extractor(stacked), self.denormalizations()):
            for denormalization in pair:
                denormalization.features = features
        try:
            down, mid = self.encoder(sample, timestep, encoder_hidden_states, controlnet_cond=stacked,
                                     return_dict=False)
        finally:
            # Gradient checkpointing runs the blocks again in the backward pass, with these same features; otherwise
            # the autograd graph holds what it needs, and kept features would only hold memory and go stale.
            if not (torch.is_grad_enabled() and self.is_gradient_checkpointing):
                for pair in self.denormalizations():
                    for denormalization in pair:
                        denormalization.features = None
        return tuple(down), mid

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters by part: copy (encoder + mid, FDNs excluded), denormalization (the FDN convs),
        feature_extractor (with its zero-convs), zero_convs (into the UNet's residuals), and total."""
        def count(parameters) -> int:
            return sum(p.numel() for p in parameters if p.requires_grad)

        denormalization = count(p for pair in self.denormalizations() for fdn in pair for p in fdn.parameters())
        zero_convs = count(self.encoder.controlnet_down_blocks.parameters()) + count(
            self.encoder.controlnet_mid_block.parameters())
        encoder = count(self.encoder.parameters())
        feature_extractor = count(self.feature_extractor.parameters())
        return {"copy": encoder - denormalization - zero_convs, "denormalization": denormalization,
                "feature_extractor": feature_extractor, "zero_convs": zero_convs,
                "total": encoder + feature_extractor}


def config_problems(condition_channels: object, condition_scale: object) -> list[tuple[str, str]]:
    """What is wrong with the condition types and the condition scale, as (parameter, message)."""
    problems = []
    if not isinstance(condition_channels, Mapping) or not condition_channels:
        problems.append(("condition_channels", ("expected a non-empty mapping of condition type -> channels, "
                                                f"got {condition_channels!r}")))
    else:
        for name, channels in condition_channels.items():
            if not isinstance(name, str) or not name:
                problems.append(("condition_channels", f"condition type {name!r} must be a non-empty string"))
            if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
                problems.append((f"condition_channels.{name}", f"must be a positive int, got {channels!r}"))
    if (not isinstance(condition_scale, int) or isinstance(condition_scale, bool) or condition_scale < 1
            or condition_scale & (condition_scale - 1)):
        problems.append(("condition_scale", ("must be a power of 2 (image size / latent size: 8 with an SD VAE, 1 "
                                             f"in pixel space), got {condition_scale!r}")))
    return problems


def inject_channel_problems(inject_channels: object, levels: int) -> list[str]:
    """What is wrong with per-level injection widths for a UNet of `levels` resolution levels."""
    if (not isinstance(inject_channels, Sequence) or len(inject_channels) != levels
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in inject_channels)):
        return [f"expected {levels} positive ints (one per resolution level of the UNet), got {inject_channels!r}"]
    return []

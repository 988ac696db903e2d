"""Mojito's video backbone: a diffusers video UNet, and the parts of it a run trains.

The UNet is either an SD-1.x `UNet2DConditionModel` turned into a `UNetMotionModel` with a `MotionAdapter`
(AnimateDiff's layout, the default: `motion_adapter` is a hub id, a local directory or {config: {...}}), or a
`UNetMotionModel` / `UNet3DConditionModel` as the base names it. Either way its input is latents [B, C, F, H, W].

`video_unet_forward` hides the one difference between the two classes a caller sees: UNetMotionModel wants the text
states repeated per frame ([B * F, L, D], as diffusers' AnimateDiff pipeline passes them), UNet3DConditionModel repeats
them itself.

Trainable sets (`trainable` in the module's config), by parameter name:
- `intensity`: the intensity embedding and the time embedding's `cond_proj` (intensity.py);
- `motion_modules`: the temporal layers (UNetMotionModel's `motion_modules`; UNet3DConditionModel's `temp_convs`,
  `temp_attentions` and `transformer_in`);
- `lora`: peft LoRA adapters (`lora_A` / `lora_B`) added to the named attention projections;
- `unet`: every UNet weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel
from torch import nn

from datamodules.errors import did_you_mean
from datamodules.param_types import model_source_problem

TRAINABLE_SETS = ("intensity", "motion_modules", "lora", "unet")
VIDEO_UNETS = (UNetMotionModel, UNet3DConditionModel)
TEMPORAL_NAMES = {UNetMotionModel: ("motion_modules",),
                  UNet3DConditionModel: ("temp_convs", "temp_attentions", "transformer_in")}
# SD-1.x attention projections: what LoRA adapts by default (the spatial and the motion modules' attention alike)
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def motion_adapter_problem(source: Any) -> str | None:
    """Why `source` cannot be a MotionAdapter (hub id, local directory or {config: {...}}), or None."""
    if isinstance(source, str):
        return model_source_problem(source)
    if isinstance(source, Mapping):
        if set(source) != {"config"} or not isinstance(source["config"], Mapping):
            return "a config-built adapter is {config: {...MotionAdapter arguments...}}"
        import inspect

        allowed = set(inspect.signature(MotionAdapter.__init__).parameters) - {"self"}
        unknown = [k for k in source["config"] if k not in allowed]
        if unknown:
            return "; ".join(f"unknown MotionAdapter argument {k}{did_you_mean(str(k), allowed)}" for k in unknown)
        return None
    return f"expected a hub id, a local directory or {{config: {{...}}}}, got {type(source).__name__}"


def load_motion_adapter(source: str | Mapping[str, Any], dtype: torch.dtype) -> MotionAdapter:
    if isinstance(source, Mapping):
        return MotionAdapter(**dict(source["config"])).to(dtype)
    return MotionAdapter.from_pretrained(source, dtype=dtype)


def video_unet(unet: nn.Module, motion_adapter: str | Mapping[str, Any] | None) -> nn.Module:
    """The video UNet of a base: a 2-D UNet with the motion adapter (AnimateDiff), or the base's video UNet as is."""
    if isinstance(unet, VIDEO_UNETS):
        if motion_adapter is not None:
            raise ValueError(f"motion_adapter: the base's UNet is already a {type(unet).__name__}; set "
                             f"motion_adapter: null, or give the base an SD-1.x UNet2DConditionModel")
        return unet
    if not isinstance(unet, UNet2DConditionModel):
        raise ValueError(f"the base's UNet is a {type(unet).__name__}; Mojito takes a UNet2DConditionModel (with a "
                         f"motion_adapter), a UNetMotionModel or a UNet3DConditionModel")
    if motion_adapter is None:
        raise ValueError("motion_adapter: a 2-D base UNet needs a MotionAdapter (e.g. "
                         "guoyww/animatediff-motion-adapter-v1-5-2, or {config: {...}}) to become a video UNet")
    adapter = load_motion_adapter(motion_adapter, unet.dtype)
    return UNetMotionModel.from_unet2d(unet, adapter).to(unet.dtype)


def video_unet_forward(unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                       timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's prediction for latents [B, C, F, H, W] under text states [B, L, D] (one per sample)."""
    frames = latents.shape[2]
    if isinstance(unet, UNetMotionModel):
        context = context.repeat_interleave(frames, dim=0)
    return unet(latents, timesteps, context, timestep_cond=timestep_cond).sample


def temporal_parameter_names(unet: nn.Module) -> list[str]:
    """The names of the UNet's temporal (motion) layers' parameters."""
    kinds = next((names for cls, names in TEMPORAL_NAMES.items() if isinstance(unet, cls)), None)
    if kinds is None:
        raise ValueError(f"{type(unet).__name__} has no known motion modules")
    return [name for name, _ in unet.named_parameters() if any(part in name.split(".") for part in kinds)]


def add_lora(unet: nn.Module, rank: int, alpha: float, target_modules: Sequence[str]) -> None:
    """peft LoRA adapters (B zero-initialised, so the UNet is unchanged until trained) on the attention projections
    whose module names end with one of `target_modules` (peft's suffix matching)."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                                init_lora_weights=True))


def lora_parameter_names(unet: nn.Module) -> list[str]:
    return [name for name, _ in unet.named_parameters() if "lora_A" in name or "lora_B" in name]


def trainable_set_problems(trainable: Any, lora: Mapping[str, Any] | None,
                           intensity_dim: int | None) -> list[tuple[str, str]]:
    """What is wrong with the choice of what trains, before anything loads."""
    if isinstance(trainable, str) or not isinstance(trainable, Sequence) or not trainable:
        return [("trainable", f"a non-empty list of {', '.join(TRAINABLE_SETS)}, got {trainable!r}")]
    problems = [("trainable", f"unknown set '{name}'{did_you_mean(str(name), TRAINABLE_SETS)}; one of "
                              f"{', '.join(TRAINABLE_SETS)}") for name in trainable if name not in TRAINABLE_SETS]
    if "intensity" in trainable and intensity_dim is None:
        problems.append(("trainable", "'intensity' trains the intensity modulator, which intensity_dim: null turns "
                                      "off; set intensity_dim (e.g. 256)"))
    if "lora" in trainable and not lora:
        problems.append(("lora", "trainable names 'lora': give lora: {rank: ..., alpha: ..., target_modules: [...]}"))
    if lora and "lora" not in trainable:
        problems.append(("lora", "given, but trainable does not name 'lora': add it, or drop lora"))
    return problems

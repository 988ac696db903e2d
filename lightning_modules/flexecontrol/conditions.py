"""Condition inputs of a batch, as every control variant takes them: per condition type, `maps` [B, K, C, H, W] (K input
slots of that type, zeros where empty) and `present` [B, K] (which slots hold an input). Samples of one batch may carry
different condition sets and several inputs of one type; a type with no input anywhere is simply absent.

`check_condition_inputs` is what every variant refuses alike (unknown types, shapes, channels, sizes, masks). Also
here: condition dropout for classifier-free guidance over conditions (DESIGN.md "FlexEControl"), the union
region of the present maps (weights of the masked diffusion loss), and the same-type augmentation that splits one map
into region-disjoint maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import raise_param_problems

Maps = dict[str, torch.Tensor]      # type -> [B, K, C, H, W]
Present = dict[str, torch.Tensor]   # type -> bool [B, K]


def check_condition_inputs(conditions: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
                           strengths: Mapping[str, float] | None, condition_channels: Mapping[str, int], *,
                           batch: int, size: tuple[int, int], owner: str) -> None:
    """One ValueError line naming every problem of condition inputs for a control model (`owner`, e.g. "branch")
    built for `condition_channels`, given a sample batch of `batch` and maps of `size` (H, W): types it does not
    have, masks missing or extra, maps that are not [batch, K, C, H, W] of their type's channels and this size,
    masks that are not bool [batch, K]. Types absent from `conditions` are absent: not a problem."""
    if not isinstance(conditions, Mapping) or not isinstance(present, Mapping):
        raise TypeError("conditions and present must be dicts keyed by condition type")
    problems = []
    known = ", ".join(condition_channels)
    for argument, given in (("conditions", conditions), ("present", present), ("strengths", strengths or {})):
        problems += [f"{argument}: unknown condition type {name!r} (this {owner} has {known})"
                     for name in given if name not in condition_channels]
    problems += [f"present[{name!r}]: missing (every type in conditions needs its present mask)"
                 for name in conditions if name not in present]
    problems += [f"present[{name!r}]: given without conditions[{name!r}]" for name in present if name not in conditions]
    height, width = size
    for name, maps in conditions.items():
        if name not in condition_channels:
            continue
        if not isinstance(maps, torch.Tensor) or maps.dim() != 5:
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            problems.append(f"conditions[{name!r}]: expected a tensor [B, K, C, H, W], got {shape}")
            continue
        if maps.shape[0] != batch:
            problems.append(f"conditions[{name!r}]: expected batch {batch} (the sample's), got {maps.shape[0]}")
        if maps.shape[2] != condition_channels[name]:
            problems.append(f"conditions[{name!r}]: expected {condition_channels[name]} channel(s), got "
                            f"{maps.shape[2]}")
        if tuple(maps.shape[-2:]) != (height, width):
            problems.append(f"conditions[{name!r}]: expected maps of size {height}x{width} (the sample's size times "
                            f"the condition scale), got {maps.shape[-2]}x{maps.shape[-1]}")
        mask = present.get(name)
        if mask is None:
            continue
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            problems.append(f"present[{name!r}]: expected a bool tensor, got {got}")
        elif tuple(mask.shape) != tuple(maps.shape[:2]):
            problems.append(f"present[{name!r}]: expected shape {tuple(maps.shape[:2])} (batch, inputs of "
                            f"conditions[{name!r}]), got {tuple(mask.shape)}")
    if problems:
        raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ConditionDropout:
    """Per sample: keep every input with p `keep_all`, drop every input with p `drop_all`, otherwise drop each input
    on its own with p `each` (the paper's 0.1 / 0.1 / 0.5): the model learns each condition alone, any subset, and
    none (the unconditional branch classifier-free guidance needs)."""

    keep_all: float = 0.1
    drop_all: float = 0.1
    each: float = 0.5

    def __post_init__(self):
        problems = [(name, f"must be in [0, 1], got {value}") for name, value in
                    (("keep_all", self.keep_all), ("drop_all", self.drop_all), ("each", self.each))
                    if not 0 <= value <= 1]
        if self.keep_all + self.drop_all > 1:
            problems.append(("drop_all", f"keep_all + drop_all must be <= 1, got {self.keep_all + self.drop_all}"))
        raise_param_problems(problems)

    def __call__(self, present: Present, generator: torch.Generator) -> Present:
        if not present:
            return {}
        batch = next(iter(present.values())).shape[0]
        mode = torch.rand(batch, generator=generator)
        keep_all = mode < self.keep_all
        drop_all = (mode >= self.keep_all) & (mode < self.keep_all + self.drop_all)
        kept = {}
        for name in sorted(present):  # a fixed order, so the draws do not depend on dict order
            mask = present[name].bool()
            each = torch.rand(mask.shape, generator=generator) >= self.each
            keep = torch.where(keep_all[:, None], torch.ones_like(each), each) & ~drop_all[:, None]
            kept[name] = mask & keep.to(mask.device)
        return kept


def union_region(maps: Maps, present: Present, size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, h, w] in {0, 1}: where any present input of any type is non-zero, at `size` (the latents' size; a
    pixel counts when any image pixel under it does)."""
    if not maps:
        raise ValueError("no condition maps to take a region from")
    region = None
    for name, stack in maps.items():
        on = (stack.abs().amax(dim=2) > 0) & present[name].bool()[:, :, None, None]  # [B, K, H, W]
        on = on.any(dim=1, keepdim=True).float()
        region = on if region is None else torch.maximum(region, on)
    return (F.adaptive_max_pool2d(region, size) > 0).float()


def split_into_regions(mask: np.ndarray, image: np.ndarray, max_parts: int) -> list[np.ndarray]:
    """`image` (H, W[, C]) cut into region-disjoint maps, one per connected region of `mask` (H, W; non-zero = on):
    the same-type augmentation, which shows the model several inputs of one type that together make the whole map.
    Regions beyond `max_parts` (smallest first) are merged into the last part, so nothing of the map is lost."""
    import cv2

    if max_parts < 1:
        raise ValueError(f"max_parts must be >= 1, got {max_parts}")
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    regions = [labels == k for k in range(1, count)]
    if len(regions) <= 1:
        return [image]
    regions.sort(key=lambda r: -int(r.sum()))
    if len(regions) > max_parts:
        regions = regions[:max_parts - 1] + [np.logical_or.reduce(regions[max_parts - 1:])]
    parts = []
    for region in regions:
        keep = region if image.ndim == 2 else region[..., None]
        parts.append(np.where(keep, image, 0).astype(image.dtype))
    return parts

"""Condition inputs of a batch, as every control variant takes them: per condition type, `maps` [B, K, C, H, W] (K input
slots of that type, zeros where empty) and `present` [B, K] (which slots hold an input). Samples of one batch may carry
different condition sets and several inputs of one type; a type with no input anywhere is simply absent.

Also here: condition dropout for classifier-free guidance over conditions (DESIGN.md "FlexEControl"), the union
region of the present maps (weights of the masked diffusion loss), and the same-type augmentation that splits one map
into region-disjoint maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import raise_param_problems

Maps = dict[str, torch.Tensor]      # type -> [B, K, C, H, W]
Present = dict[str, torch.Tensor]   # type -> bool [B, K]


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

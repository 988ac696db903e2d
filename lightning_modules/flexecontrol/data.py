"""Control shards as FlexEControl trains on them (make_shards.py synthetic-control, control-images, multigen).

A sample carries its image (`png` or `jpg`), `json` with its caption, and condition maps named `<type>.png` (one input
of the type) or `<type>.<k>.png` (several inputs of one type). A batch gives, per configured condition type,
`cond.<type>` [B, K, C, H, W] in [0, 1] with K = `max_inputs_per_type` slots and `present.<type>` [B, K]; the image as
`pixel_values` in [-1, 1]; the caption as `caption`. Image and maps are resized and centre-cropped alike (maps with
nearest neighbours, so an edge or label map stays one).

With `split_types`, a training sample's single map of such a type is cut into its region-disjoint parts (connected
components) with probability `split_probability`, given as several inputs of its type (same-type augmentation).
With `token_regions` ({json field: condition type}), the word a sample's json field names (e.g. the shape "circle" of
a synthetic sample) gets as its region where that type's maps are on: `region_words` ("|"-joined), `region_masks`
[R, H, W] and `region_valid` [R], which the cross-attention supervision reads. A sample's own json `token_regions`
({word: type}) takes precedence.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import torch

from datamodules.errors import raise_param_problems
from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.transforms import center_crop, resize_shorter, sample_generator
from lightning_modules.diffusion.text_to_image import IMAGE_KEYS, image_and_caption
from lightning_modules.flexecontrol.conditions import split_into_regions

MAP_KEY = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)(?:\.(?P<k>\d+))?\.png$")


def condition_keys(sample: Mapping[str, Any]) -> dict[str, list[str]]:
    """The condition-map fields of a sample by type, inputs in the order of their number (`canny.png` first)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for key in sample:
        match = MAP_KEY.match(key)
        if match and key not in IMAGE_KEYS:
            found.setdefault(match["type"], []).append((int(match["k"] or 0), key))
    return {name: [key for _, key in sorted(keys)] for name, keys in found.items()}


class ControlSample(DecodeSample):
    def __init__(self, condition_channels: dict[str, int], resolution: int, max_inputs_per_type: int,
                 split_types: list[str], split_probability: float, token_regions: dict[str, str],
                 max_regions: int, train: bool, seed: int):
        super().__init__(required=["json"])
        self.condition_channels, self.resolution = dict(condition_channels), resolution
        self.max_inputs, self.split_types, self.split_probability = max_inputs_per_type, split_types, split_probability
        self.token_regions, self.max_regions, self.train, self.seed = token_regions, max_regions, train, seed

    def _fit(self, image: torch.Tensor, mode: str) -> torch.Tensor:
        return center_crop(resize_shorter(image, self.resolution, mode), self.resolution)

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        pixels, caption = image_and_caption(sample, self.resolution)
        meta = sample["json"] if isinstance(sample["json"], dict) else {}
        generator = sample_generator(self.seed, epoch, sample["__key__"])
        out: dict[str, Any] = {"__key__": sample["__key__"], "pixel_values": pixels, "caption": caption}
        keys = condition_keys(sample)  # types the model was not built for are not read: a model may use a subset
        region_maps: dict[str, torch.Tensor] = {}
        for name, channels in self.condition_channels.items():
            inputs = [self._fit(sample[key], "nearest")[:channels] for key in keys.get(name, [])]
            if (self.train and name in self.split_types and len(inputs) == 1
                    and float(torch.rand(1, generator=generator)) < self.split_probability):
                single = inputs[0].permute(1, 2, 0).numpy()
                parts = split_into_regions(single.max(axis=2), single, self.max_inputs)
                inputs = [torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1) for p in parts]
            if len(inputs) > self.max_inputs:
                raise KeyError(f"{len(inputs)} {name} maps exceed data.params.max_inputs_per_type="
                               f"{self.max_inputs}")
            stack = torch.zeros(self.max_inputs, channels, self.resolution, self.resolution)
            present = torch.zeros(self.max_inputs, dtype=torch.bool)
            for k, m in enumerate(inputs):
                stack[k], present[k] = m.float() / 255.0, True
            out[f"cond.{name}"], out[f"present.{name}"] = stack, present
            region_maps[name] = (stack.amax(dim=(0, 1)) > 0)
        out.update(self._regions(meta, region_maps))
        return out

    def _regions(self, meta: dict[str, Any], region_maps: dict[str, torch.Tensor]) -> dict[str, Any]:
        pairs: list[tuple[str, str]] = []
        own = meta.get("token_regions")
        if isinstance(own, dict):
            pairs = [(str(word), str(name)) for word, name in own.items()]
        else:
            pairs = [(str(meta[field]), name) for field, name in self.token_regions.items() if field in meta]
        pairs = [(word, name) for word, name in pairs if name in region_maps][:self.max_regions]
        masks = torch.zeros(self.max_regions, self.resolution, self.resolution)
        valid = torch.zeros(self.max_regions, dtype=torch.bool)
        for r, (_, name) in enumerate(pairs):
            masks[r] = region_maps[name].float()
            valid[r] = bool(region_maps[name].any())
        return {"region_words": "|".join(word for word, _ in pairs), "region_masks": masks, "region_valid": valid}


class ControlData(ShardDataModule):
    """Control shards for FlexEControl and its baselines; `condition_channels` must match the model's."""

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | dict[str, str] | None = None,
                 condition_channels: dict[str, int] | None = None, resolution: int = 512, max_inputs_per_type: int = 3,
                 split_types: list[str] | None = None, split_probability: float = 0.5,
                 token_regions: dict[str, str] | None = None, max_regions: int = 4, batch_size: int = 4,
                 num_workers: int = 2, seed: int = 0, shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01,
                 verify: str = "sha256"):
        super().__init__(train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, verify=verify)
        channels = dict(condition_channels or {"canny": 1, "depth": 1, "seg": 1})
        split_types, token_regions = list(split_types or []), dict(token_regions or {})
        problems = [(f"condition_channels.{name}", f"must be 1 or 3, got {c}") for name, c in channels.items()
                    if c not in (1, 3)]
        problems += [(f"condition_channels.{name}", "a type name is lowercase letters, digits and _")
                     for name in channels if not re.fullmatch(r"[a-z][a-z0-9_]*", name)]
        if not channels:
            problems.append(("condition_channels", "name at least one condition type"))
        if resolution < 8:
            problems.append(("resolution", f"must be >= 8, got {resolution}"))
        if max_inputs_per_type < 1:
            problems.append(("max_inputs_per_type", f"must be >= 1, got {max_inputs_per_type}"))
        problems += [("split_types", f"'{name}' is not one of condition_channels ({', '.join(channels)})")
                     for name in split_types if name not in channels]
        problems += [(f"token_regions.{field}", f"'{name}' is not one of condition_channels ({', '.join(channels)})")
                     for field, name in token_regions.items() if name not in channels]
        if not 0 <= split_probability <= 1:
            problems.append(("split_probability", f"must be in [0, 1], got {split_probability}"))
        if max_regions < 1:
            problems.append(("max_regions", f"must be >= 1, got {max_regions}"))
        raise_param_problems(problems)
        self.save_hyperparameters()  # in every checkpoint: an export records the resolution the model was trained at
        self.condition_channels, self.resolution, self.max_inputs_per_type = channels, resolution, max_inputs_per_type
        self.split_types, self.split_probability = split_types, split_probability
        self.token_regions, self.max_regions = token_regions, max_regions

    def make_sample(self, split: str) -> ControlSample:
        return ControlSample(self.condition_channels, self.resolution, self.max_inputs_per_type, self.split_types,
                             self.split_probability, self.token_regions, self.max_regions, train=split == "train",
                             seed=self.seed)

"""Classification shards (launch/make_shards.py classification or synthetic-shapes) as CLIP inputs.

`train` is the few-shot training set (e.g. the base classes); `val` names one or more evaluation sets, each with its
own classes ({base: DIR, new: DIR} for base-to-new). Class names come from each dataset's index metadata.
Images are resized and centre-cropped to the CLIP input size and normalised with CLIP's statistics; with `augment`,
a random resized crop and a horizontal flip, seeded per sample and epoch so that a resumed run sees the same pixels.
"""

from __future__ import annotations

from typing import Any

import torch

from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.shards import DatasetError
from datamodules.transforms import (
    center_crop, normalize, random_horizontal_flip, random_resized_crop, resize_shorter, sample_generator)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tiff", "gif")


class ClipClassificationSample(DecodeSample):
    def __init__(self, image_size: int, augment: bool, seed: int, label_key: str = "cls"):
        super().__init__(required=[label_key])
        self.image_size, self.augment, self.seed, self.label_key = image_size, augment, seed, label_key

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise KeyError(f"no image field (one of {', '.join(IMAGE_EXTENSIONS)})")
        image: torch.Tensor = sample[ext]
        if self.augment:
            generator = sample_generator(self.seed, epoch, sample["__key__"])
            image = random_horizontal_flip(random_resized_crop(image, self.image_size, generator), generator)
        else:
            image = center_crop(resize_shorter(image, self.image_size), self.image_size)
        return {"__key__": sample["__key__"], "pixel_values": normalize(image), "cls": sample[self.label_key]}


class ClipClassificationData(ShardDataModule):
    def __init__(self, train: str | list[str] | None = None,
                 val: str | list[str] | dict[str, str | list[str]] | None = None, image_size: int = 224,
                 augment: bool = False, batch_size: int = 32, num_workers: int = 2, seed: int = 0,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, verify: str = "sha256"):
        super().__init__(train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, verify=verify)
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.image_size, self.augment = image_size, augment

    def make_sample(self, split: str) -> ClipClassificationSample:
        return ClipClassificationSample(self.image_size, self.augment and split == "train", self.seed)

    def class_names(self, split: str) -> list[str]:
        names = self.metadata(split).get("class_names")
        if not names:
            raise DatasetError(f"{self.sources[split].description}: its index has no metadata.class_names; write it "
                               f"with launch/make_shards.py classification (or synthetic-shapes)")
        return list(names)

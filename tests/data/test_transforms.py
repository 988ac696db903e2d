"""Torch image transforms and their per-sample seeding (datamodules/transforms.py)."""

from __future__ import annotations

import pytest
import torch

from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.transforms import (center_crop, normalize, random_horizontal_flip, random_resized_crop, resize,
                                    resize_shorter, sample_generator)
from tests.data.test_shard_loading import keys_of, shapes


def test_resize_keeps_dtype_and_constant_images():
    image = torch.full((3, 10, 20), 77, dtype=torch.uint8)
    out = resize(image, (5, 8))
    assert out.shape == (3, 5, 8) and out.dtype == torch.uint8 and (out == 77).all()
    assert resize_shorter(image, 4).shape == (3, 4, 8)
    clip = torch.zeros(6, 3, 10, 20, dtype=torch.uint8)
    assert resize(clip, (5, 5)).shape == (6, 3, 5, 5)


def test_center_crop_takes_the_middle_and_refuses_too_large():
    image = torch.arange(36, dtype=torch.uint8).view(1, 6, 6)
    assert center_crop(image, 2).flatten().tolist() == [14, 15, 20, 21]
    with pytest.raises(ValueError, match="larger than the image"):
        center_crop(image, 7)


def test_random_transforms_follow_the_generator():
    image = torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = random_resized_crop(image, 16, sample_generator(0, 1, "k"))
    assert a.shape == (3, 16, 16)
    assert torch.equal(a, random_resized_crop(image, 16, sample_generator(0, 1, "k")))
    assert not torch.equal(a, random_resized_crop(image, 16, sample_generator(0, 2, "k")))
    flips = {bool(torch.equal(random_horizontal_flip(image, sample_generator(0, e, "k")), image.flip(-1)))
             for e in range(20)}
    assert flips == {True, False}


def test_normalize():
    out = normalize(torch.full((3, 2, 2), 255, dtype=torch.uint8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out[:, 0, 0].tolist() == [2.0, 1.0, 0.5]


class Augment(DecodeSample):
    def transform(self, sample, epoch):
        generator = sample_generator(0, epoch, sample["__key__"])
        sample["png"] = random_horizontal_flip(random_resized_crop(sample["png"], 6, generator), generator)
        return sample


class AugmentedShards(ShardDataModule):
    def make_sample(self, split):
        return Augment(required=["png", "cls"])


def test_augmentation_is_the_same_after_a_resume_whatever_the_worker(tmp_path):
    out = shapes(tmp_path, num=48, per_shard=12)
    dm = AugmentedShards(train=str(out), batch_size=4, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(1)
    full = [batch["png"] for batch in loader]
    loader.load_state_dict({"epoch": 1, "consumed_batches": 5, "health": loader.health.state_dict()})
    resumed = [batch["png"] for batch in loader]  # batch 5 now comes from worker 0 instead of worker 1
    assert len(resumed) == len(full) - 5 and all(torch.equal(a, b) for a, b in zip(resumed, full[5:]))
    assert full[0].shape == (4, 3, 6, 6)
    loader.set_epoch(2)
    assert not all(torch.equal(a, b) for a, b in zip([batch["png"] for batch in loader], full))
    assert keys_of(loader, epoch=1) != keys_of(loader, epoch=2)

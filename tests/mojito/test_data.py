"""Video-caption batches: pixels, intensity levels from the index quantiles, boxes through the crop."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from datamodules.errors import ParamError
from datamodules.shards import DatasetError
from datamodules.video import motion_level
from lightning_modules.mojito.data import VideoCaptionData, VideoClipSample, _normalised_boxes


def first_batch(data: VideoCaptionData, split: str = "train") -> dict:
    data.setup("fit")
    loader = data.train_dataloader() if split == "train" else data.val_dataloader()
    return next(iter(loader))


def test_a_batch_carries_video_captions_and_levels_from_the_train_quantiles(tiny_video):
    data = VideoCaptionData(train=str(tiny_video["train"]), val=str(tiny_video["val"]), resolution=16, frames=4,
                            batch_size=4, num_workers=0, verify="size")
    batch = first_batch(data)
    assert batch["video"].shape == (4, 4, 3, 16, 16)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    quantiles = json.loads((tiny_video["train"] / "index.json").read_text())["metadata"]["motion_quantiles"]
    expected = [motion_level(m, quantiles) for m in batch["motion"].tolist()]
    assert batch["level"].tolist() == expected and set(expected) <= set(range(1, 6))
    assert batch["has_boxes"].all() and ((batch["boxes"] >= 0) & (batch["boxes"] <= 1)).all()
    # validation levels come from the training quantiles too
    val = first_batch(data, "val")
    assert val["level"].tolist() == [motion_level(m, quantiles) for m in val["motion"].tolist()]


def test_a_level_on_a_cut_point_stays_in_the_lower_level():
    sample = VideoClipSample(resolution=8, frames=2, frame_stride=1, quantiles=[1.0, 2.0, 3.0, 4.0])
    clip = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    levels = [sample.transform({"__key__": "k", "frames.npy": clip, "json": {"caption": "x", "motion": m}}, 0)["level"]
              for m in (0.0, 1.0, 1.5, 4.0, 9.0)]
    assert levels == [1, 1, 2, 4, 5]
    none = sample.transform({"__key__": "k", "frames.npy": clip, "json": {"caption": "x"}}, 0)
    assert none["level"] == 0 and not none["has_boxes"]


def test_boxes_follow_the_resize_and_centre_crop():
    # a 40 x 20 frame: the shorter side 20 -> 10 (scale 0.5), width 20 cropped to 10 from x = 5
    boxes = _normalised_boxes([[10, 0, 20, 20], [0, 0, 4, 4]], [0, 1], height=20, width=40, resolution=10)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.2]]))


def test_frames_at_a_stride_and_a_clip_too_short():
    clip = np.arange(6, dtype=np.uint8)[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)
    sample = VideoClipSample(resolution=8, frames=3, frame_stride=2, quantiles=[1.0, 2.0, 3.0, 4.0])
    out = sample.transform({"__key__": "k", "frames.npy": clip, "json": {"caption": "x", "motion": 1.0}}, 0)
    assert ((out["video"][:, 0, 0, 0] + 1) * 127.5).round().tolist() == [0, 2, 4]
    too_long = VideoClipSample(resolution=8, frames=4, frame_stride=2, quantiles=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(KeyError, match="the clip has 6 frames; frames=4 at stride 2 needs 7"):
        too_long.transform({"__key__": "k", "frames.npy": clip, "json": {"caption": "x"}}, 0)


def test_shards_without_motion_quantiles_are_refused_with_the_fix(tiny_video, tmp_path):
    copy = tmp_path / "train"
    shutil.copytree(tiny_video["train"], copy)
    index = json.loads((copy / "index.json").read_text())
    del index["metadata"]["motion_quantiles"]
    (copy / "index.json").write_text(json.dumps(index))
    data = VideoCaptionData(train=str(copy), resolution=16, frames=4, batch_size=4, num_workers=0, verify="size")
    with pytest.raises(DatasetError, match="no motion_quantiles; write the shards with make_shards.py video"):
        first_batch(data)


def test_bad_parameters_are_reported_at_once(tiny_video):
    with pytest.raises(ParamError) as error:
        VideoCaptionData(train=str(tiny_video["train"]), resolution=4, frames=1, frame_stride=0)
    assert [name for name, _ in error.value.problems] == ["resolution", "frames", "frame_stride"]

"""Text-to-image pretraining of a tiny base and its cache (lightning_modules/diffusion/text_to_image.py, cache.py)."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.writers.common import ShardOptions
from datamodules.writers.synthetic_shapes import write_synthetic_shapes_shards
from lightning_modules.diffusion import load_diffusion_parts
from lightning_modules.diffusion import cache
from lightning_modules.diffusion.text_to_image import ImageCaptionData, TextToImage
from lightning_modules.diffusion.tiny import write_tiny_text_to_image

SHORT = {"image_size": 16, "num_train": 16, "max_steps": 2, "batch_size": 4}


def test_image_caption_batches(tmp_path):
    write_synthetic_shapes_shards(tmp_path / "shapes", num=8, size=20, options=ShardOptions(seed=0))
    data = ImageCaptionData(train=str(tmp_path / "shapes"), resolution=16, batch_size=4, verify="size")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert -1 <= float(batch["pixel_values"].min()) < float(batch["pixel_values"].max()) <= 1
    assert all(c.startswith("a ") for c in batch["caption"])


def test_text_to_image_trains_only_the_unet(tmp_path):
    base = write_tiny_text_to_image(tmp_path / "base", image_size=16)
    model = TextToImage(base={"pretrained": str(base), "vae": None}, lr=1e-2)
    text_before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    optimizer = model.configure_optimizers()
    batch = {"pixel_values": torch.rand(2, 3, 16, 16) * 2 - 1, "caption": ["a red circle", "a blue star"]}
    model.loss(batch, torch.Generator().manual_seed(0), train=True).backward()
    optimizer.step()
    assert all(torch.equal(v, text_before[k]) for k, v in model.text_encoder.state_dict().items())
    assert any(not torch.equal(v, unet_before[k]) for k, v in model.unet.state_dict().items())
    with pytest.raises(ValueError, match="lr"):
        TextToImage(base={"pretrained": str(base), "vae": None}, lr=0)


def test_the_tiny_base_is_trained_once_and_loads_with_from_pretrained(tmp_path):
    entry = cache.ensure_tiny_text_to_image(tmp_path, **SHORT)
    assert entry == cache.tiny_text_to_image_path(tmp_path, **SHORT)
    report = json.loads((entry / cache.REPORT).read_text())
    assert report["steps"] == 2 and report["settings"]["image_size"] == 16
    parts = load_diffusion_parts(str(entry), vae=None)
    assert parts.unet.config.sample_size == 16 and parts.vae is None
    stamp = (entry / cache.REPORT).stat().st_mtime_ns
    assert cache.ensure_tiny_text_to_image(tmp_path, **SHORT) == entry  # cached: not trained again
    assert (entry / cache.REPORT).stat().st_mtime_ns == stamp
    other = cache.tiny_text_to_image_path(tmp_path, **{**SHORT, "max_steps": 3})
    assert other != entry and not other.exists()
    with pytest.raises(TypeError, match="unknown setting"):
        cache.ensure_tiny_text_to_image(tmp_path, steps=3)

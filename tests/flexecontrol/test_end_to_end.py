"""FlexEControl end to end at the smallest size that shows control: a tiny base pretrained briefly on synthetic
shapes, the control trained on their canny and segmentation maps, then sampled with and without control."""

from __future__ import annotations

import torch

from datamodules.writers.common import ShardOptions
from lightning_modules.diffusion.cache import ensure_tiny_text_to_image
from lightning_modules.flexecontrol.data import ControlData
from lightning_modules.flexecontrol.evaluation import evaluate_controllability
from lightning_modules.flexecontrol.module import FlexEControlModule
from lightning_modules.flexecontrol.shards import write_synthetic_control_shards

TYPES = {"canny": 1, "seg": 1}


def test_after_training_the_conditions_control_the_images(tmp_path):
    base = ensure_tiny_text_to_image(tmp_path / "cache", image_size=16, num_train=256, max_steps=100, batch_size=16)
    write_synthetic_control_shards(tmp_path / "train", num=256, size=16, options=ShardOptions(seed=0))
    write_synthetic_control_shards(tmp_path / "val", num=16, size=16, options=ShardOptions(seed=9))
    data = ControlData(train=str(tmp_path / "train"), val=str(tmp_path / "val"), condition_channels=TYPES,
                       resolution=16, batch_size=16, num_workers=0, verify="size")
    data.setup("fit")
    torch.manual_seed(0)
    module = FlexEControlModule(base={"pretrained": str(base), "vae": None}, condition_channels=TYPES, lr=3e-3,
                                weight_decay=0.0)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=3e-3)
    held_out = next(iter(data.val_dataloader()))
    fixed_loss = module.losses(held_out, torch.Generator().manual_seed(7), train=False)["loss"].item()
    step = 0
    while step < 120:
        for batch in data.train_dataloader():
            optimizer.zero_grad()
            module.losses(batch, torch.Generator().manual_seed(step), train=True)["loss"].backward()
            optimizer.step()
            step += 1
            if step == 120:
                break
    module.eval()
    assert module.losses(held_out, torch.Generator().manual_seed(7), train=False)["loss"].item() < fixed_loss
    # with its conditions the model draws their edges and regions more faithfully than the base alone
    got = evaluate_controllability(module, held_out, steps=10, guidance=1.0, seed=0, seg_model="border_colour",
                                   canny_tolerance=1)
    assert got["canny_f1"] > got["canny_f1_no_control"] + 0.02, got
    assert got["edge_ssim"] > 2 * got["edge_ssim_no_control"], got
    assert got["seg_miou"] > got["seg_miou_no_control"] + 0.03, got

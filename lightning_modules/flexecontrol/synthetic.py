"""Synthetic inputs of FlexEControl's tiny runs: synthetic-control shards (shapes with canny, segmentation and depth
maps, make_shards.py synthetic-control) and a random tiny pixel-space text-to-image model saved in diffusers' layout
(lightning_modules/diffusion/tiny.py), so the tiny config loads its base through the real from_pretrained code.

`tiny_inputs` writes what configs/flexecontrol/tiny.yaml needs: the method contract test
(tests/test_method_contract.py) fits FlexEControl with it.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.writers.common import ShardOptions
from lightning_modules.diffusion.tiny import write_tiny_text_to_image
from lightning_modules.flexecontrol.shards import write_synthetic_control_shards


def tiny_inputs(root: Path, *, size: int = 16) -> list[str]:
    """Writes under `root` and returns the overrides pointing configs/flexecontrol/tiny.yaml at it."""
    root = Path(root)
    write_tiny_text_to_image(root / "base", image_size=size, seed=0)
    for split, num, seed in (("train", 32, 0), ("val", 8, 1)):
        write_synthetic_control_shards(root / "data" / split, num=num, size=size,
                                       options=ShardOptions(seed=seed, max_samples_per_shard=16))
    return [f"model.params.base.pretrained={root / 'base'}", f"data.params.train={root / 'data' / 'train'}",
            f"data.params.val={root / 'data' / 'val'}"]

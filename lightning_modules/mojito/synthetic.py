"""Synthetic inputs of Mojito's tiny runs: synthetic-motion shards (a shape moving at a random speed, with boxes and
motion, make_shards.py synthetic-motion) and a random tiny pixel-space text-to-video model (a UNetMotionModel) saved in
diffusers' layout (lightning_modules/diffusion/tiny.py), so the tiny config loads its base through the real
from_pretrained code.

`tiny_inputs` writes what configs/mojito/tiny.yaml needs: the method contract test (tests/test_method_contract.py)
fits Mojito with it.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.writers.common import ShardOptions
from lightning_modules.diffusion.tiny import write_tiny_text_to_video
from lightning_modules.mojito.shards import write_synthetic_motion_shards


def tiny_inputs(root: Path, *, size: int = 16, frames: int = 4) -> list[str]:
    """Writes under `root` and returns the overrides pointing configs/mojito/tiny.yaml at it."""
    root = Path(root)
    write_tiny_text_to_video(root / "base", image_size=size, max_frames=frames, seed=0)
    for split, num, seed in (("train", 16, 0), ("val", 4, 1)):
        write_synthetic_motion_shards(root / "data" / split, num=num, size=size, frames=frames,
                                      options=ShardOptions(seed=seed, max_samples_per_shard=8))
    return [f"model.params.base.pretrained={root / 'base'}", f"data.params.train={root / 'data' / 'train'}",
            f"data.params.val={root / 'data' / 'val'}"]

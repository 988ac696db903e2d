"""A trained Mojito module for inference, rebuilt from its Lightning checkpoint
(lightning_modules/checkpoint_loading.py: the hyper-parameters name the base and the motion adapter; the checkpoint
holds only the learned weights, loaded strictly). launch/sample.py finds this module through the checkpoint's
`model_target`; what it makes is videos."""

from __future__ import annotations

import os
from typing import Any

import torch

from lightning_modules import checkpoint_loading as loading
from lightning_modules.checkpoint_loading import BaseOverride, module_target
from lightning_modules.mojito.module import MojitoModule

MODULE_TARGET = module_target(MojitoModule)
OUTPUT = "videos"  # what launch/sample.py writes for this method: mp4, gif and a strip of frames per sample


def read_checkpoint(checkpoint_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return loading.read_checkpoint(checkpoint_path, MojitoModule, map_location)


def load_for_inference(checkpoint_path: str | os.PathLike, base: BaseOverride = None,
                       map_location: str | torch.device = "cpu") -> MojitoModule:
    """The MojitoModule of a checkpoint in eval mode on `map_location`, with its learned weights; `base` where the
    base lies on this machine (a directory replaces only `pretrained`). ValueError (one line) for a file that is not
    such a checkpoint."""
    return loading.load_for_inference(MojitoModule, checkpoint_path, base, map_location)

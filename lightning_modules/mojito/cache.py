"""`ensure_tiny_text_to_video`: a tiny pixel-space text-to-video model pretrained by the project on synthetic-motion
clips, trained once and cached: the base the Mojito demo trains its intensity modulator on and steers (as the
FlexEControl demo's base is lightning_modules/diffusion/cache.py's).

The first call writes synthetic-motion shards ("a red circle moving left", a shape moving at a random speed), trains
the whole UNet of a random tiny UNetMotionModel pipeline (lightning_modules/diffusion/tiny.py; the random text encoder
stays frozen) with MojitoModule (`trainable: [unet]`, no intensity input), and saves the pipeline in diffusers' layout.
The entry's name carries a hash of every setting; it appears complete or not at all (datamodules.files
.build_directory_once through lightning_modules/diffusion/cache.py's ensure_pretrained), with `pretraining.json`
(settings, time, loss) written last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.writers.common import ShardOptions
from lightning_modules.diffusion.cache import ensure_pretrained, entry_path
from lightning_modules.diffusion.components import DiffusionParts, save_diffusion_parts
from lightning_modules.diffusion.tiny import write_tiny_text_to_video
from lightning_modules.mojito.data import VideoCaptionData
from lightning_modules.mojito.module import MojitoModule
from lightning_modules.mojito.shards import write_synthetic_motion_shards

CACHE_FORMAT = 1  # bump when what an entry holds, or how it is trained, changes
PREFIX = "tiny-t2v-"
# half the default tiny widths: a step of 8 clips x 8 frames costs ~0.4 s on one core
DEMO_VIDEO_UNET = {"block_out_channels": [16, 32], "num_attention_heads": 2}
# what an entry is trained with unless a call says otherwise; every one is part of the cache key
DEFAULTS = {"image_size": 16, "frames": 8, "num_train": 1000, "max_steps": 600, "batch_size": 8, "lr": 2e-3,
            "seed": 0}


def settings_of(**settings: Any) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, **settings, "unet": DEMO_VIDEO_UNET}


def tiny_text_to_video_path(cache_dir: str | Path, **settings: Any) -> Path:
    """Where `ensure_tiny_text_to_video` with these settings keeps its model."""
    return entry_path(cache_dir, PREFIX, settings_of(**{**DEFAULTS, **settings}))


def pretrain(entry: Path, work: Path, settings: dict[str, Any], threads: int | None) -> dict[str, Any]:
    size, frames, seed = settings["image_size"], settings["frames"], settings["seed"]
    random_base = write_tiny_text_to_video(work / "random", image_size=size, max_frames=frames, seed=seed,
                                           unet=settings["unet"])
    train = work / "data"
    write_synthetic_motion_shards(train, num=settings["num_train"], size=size, frames=frames,
                                  options=ShardOptions(seed=seed))
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MojitoModule(base={"pretrained": str(random_base), "vae": None, "unet_class": "UNetMotionModel"},
                                 trainable=["unet"], intensity_dim=None, lr=settings["lr"], weight_decay=0.0,
                                 warmup_steps=50, prompt_dropout=0.1, gradient_checkpointing=False, seed=seed)
            data = VideoCaptionData(train=str(train), resolution=size, frames=frames,
                                    batch_size=settings["batch_size"], num_workers=0, seed=seed, verify="size")
            trainer = L.Trainer(max_steps=settings["max_steps"], accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False)
            trainer.fit(model, datamodule=data)
    finally:
        torch.set_num_threads(previous)
    save_diffusion_parts(DiffusionParts(unet=model.unet, vae=None, text_encoder=model.text_encoder,
                                        tokenizer=model.tokenizer, scheduler=model.noise_scheduler), entry)
    return {"train_seconds": round(time.perf_counter() - started, 1), "steps": trainer.global_step,
            "final_train_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


def ensure_tiny_text_to_video(cache_dir: str | Path, *, threads: int | None = 1, **settings: Any) -> Path:
    """The directory of the tiny text-to-video pipeline (pixel space: load with `vae: null`, `unet_class:
    UNetMotionModel`), trained on the first call and cached under `cache_dir`. `settings`: DEFAULTS to change (each is
    part of the cache key). `threads`: torch's intra-op threads while training (not part of the key)."""
    return ensure_pretrained(cache_dir, prefix=PREFIX, what="a tiny text-to-video model on synthetic motion",
                             defaults=DEFAULTS, settings_of=settings_of, pretrain=pretrain, threads=threads,
                             settings=settings)

"""`ensure_tiny_text_to_image`: a tiny pixel-space text-to-image model pretrained by the project on synthetic shapes,
trained once and cached, the base the demos control (as the CPL demo's CLIP is lightning_modules/clip_pretrain's).

The first call writes synthetic-shapes shards ("a red circle" on a plain background), trains the UNet of a random tiny
pipeline (tiny.py, DEMO_UNET; the random text encoder stays frozen: random word embeddings already tell the captions
apart) with text_to_image.TextToImage, and saves the pipeline in diffusers' layout (load_diffusion_parts loads it).
The entry's name carries a hash of every setting; it appears complete or not at all (datamodules.files
.build_directory_once), with `pretraining.json` (settings, time, losses) written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch

from datamodules.files import build_directory_once
from datamodules.writers.common import ShardOptions
from datamodules.writers.synthetic_shapes import write_synthetic_shapes_shards
from lightning_modules.diffusion.components import save_diffusion_parts
from lightning_modules.diffusion.text_to_image import ImageCaptionData, TextToImage
from lightning_modules.diffusion.tiny import DEMO_UNET, write_tiny_text_to_image

log = logging.getLogger("worldbridge.diffusion")
CACHE_FORMAT = 1  # bump when what an entry holds, or how it is trained, changes
REPORT = "pretraining.json"
PREFIX = "tiny-t2i-"
# what an entry is trained with unless a call says otherwise; every one is part of the cache key
DEFAULTS = {"image_size": 32, "num_train": 2000, "max_steps": 600, "batch_size": 32, "lr": 2e-3, "seed": 0}


def settings_of(*, image_size: int, num_train: int, max_steps: int, batch_size: int, lr: float,
                seed: int) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "image_size": image_size, "num_train": num_train, "max_steps": max_steps,
            "batch_size": batch_size, "lr": lr, "seed": seed,
            "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_UNET.items()}}


def entry_path(cache_dir: str | Path, prefix: str, full: dict[str, Any]) -> Path:
    """Where a cache entry of these (complete) settings lives: `prefix` and a hash of every setting."""
    return Path(cache_dir) / (prefix + hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16])


def ensure_pretrained(cache_dir: str | Path, *, prefix: str, what: str, defaults: dict[str, Any],
                      settings_of: Callable[..., dict[str, Any]],
                      pretrain: Callable[[Path, Path, dict[str, Any], int | None], dict[str, Any]],
                      threads: int | None, settings: dict[str, Any]) -> Path:
    """The entry of a model pretrained once by `pretrain(entry, work, full settings, threads)` (its report), built
    with `defaults` updated by `settings` (each part of the key; unknown ones are a TypeError) and `REPORT` written
    last: the one cache mechanism of the demos' tiny bases (this module's and lightning_modules/mojito/cache.py's)."""
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    full = settings_of(**{**defaults, **settings})
    final = entry_path(cache_dir, prefix, full)

    def build(entry: Path, work: Path) -> None:
        log.info("pretraining %s (%d steps) into %s", what, full["max_steps"], final)
        report = {"settings": full, **pretrain(entry, work, full, threads)}
        (entry / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    return build_directory_once(final, build, REPORT)


def tiny_text_to_image_path(cache_dir: str | Path, **settings: Any) -> Path:
    """Where `ensure_tiny_text_to_image` with these settings keeps its model."""
    return entry_path(cache_dir, PREFIX, settings_of(**{**DEFAULTS, **settings}))


def pretrain(entry: Path, work: Path, settings: dict[str, Any], threads: int | None) -> dict[str, Any]:
    random_base = write_tiny_text_to_image(work / "random", image_size=settings["image_size"], seed=settings["seed"],
                                           unet=DEMO_UNET)
    train = work / "data"
    write_synthetic_shapes_shards(train, num=settings["num_train"], size=settings["image_size"],
                                  options=ShardOptions(seed=settings["seed"]))
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings["seed"])
            model = TextToImage(base={"pretrained": str(random_base), "vae": None}, lr=settings["lr"],
                                warmup_steps=50, seed=settings["seed"])
            data = ImageCaptionData(train=str(train), resolution=settings["image_size"],
                                    batch_size=settings["batch_size"], num_workers=0, seed=settings["seed"],
                                    verify="size")
            trainer = L.Trainer(max_steps=settings["max_steps"], accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False)
            trainer.fit(model, datamodule=data)
    finally:
        torch.set_num_threads(previous)
    save_diffusion_parts(model.parts(), entry)
    return {"train_seconds": round(time.perf_counter() - started, 1), "steps": trainer.global_step,
            "final_train_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


def ensure_tiny_text_to_image(cache_dir: str | Path, *, threads: int | None = 1, **settings: Any) -> Path:
    """The directory of the tiny text-to-image pipeline (pixel space: load with `vae: null`), trained on the first
    call and cached under `cache_dir`. `settings`: DEFAULTS to change (each is part of the cache key). `threads`:
    torch's intra-op threads while training (not part of the key; one is fastest for this small model on a busy
    2-core machine, as for the tiny CLIP)."""
    return ensure_pretrained(cache_dir, prefix=PREFIX, what="a tiny text-to-image model on synthetic shapes",
                             defaults=DEFAULTS, settings_of=settings_of, pretrain=pretrain, threads=threads,
                             settings=settings)

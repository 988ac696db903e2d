"""Plain text-to-image training of a UNet on image-caption shards: how the project pretrains the small base models its
demos control (cache.py), on data no hub has to provide.

`TextToImage` trains the UNet of a diffusers pipeline (load_diffusion_parts) with the diffusion objective; the text
encoder (and the VAE, if any) stay frozen. `ImageCaptionData` reads shards whose samples carry an image (`png`/`jpg`)
and a caption (`json` {"caption": ...} or `txt`): pixels in [-1, 1], resized and centre-cropped to `resolution`.
"""

from __future__ import annotations

from typing import Annotated, Any

import lightning as L
import torch

from datamodules.errors import raise_param_problems
from datamodules.param_types import KwargsOf
from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.transforms import center_crop, resize_shorter, sample_generator
from lightning_modules.diffusion.components import DiffusionParts, freeze, load_diffusion_parts
from lightning_modules.diffusion.latents import encode_images, encode_prompts
from lightning_modules.diffusion.objective import (adamw_with_warmup, diffusion_loss, drop_prompts, dropout_mask, noisy_latents,
                                                   sample_timesteps, training_target)

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def image_and_caption(sample: dict[str, Any], resolution: int) -> tuple[torch.Tensor, str]:
    """A decoded sample's image as pixels in [-1, 1] (resized, centre-cropped to `resolution`) and its caption
    (json.caption, else txt); a KeyError names what is missing (the sample is counted bad)."""
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None:
        raise KeyError(f"no image field (one of {', '.join(IMAGE_KEYS)})")
    meta = sample.get("json")
    caption = meta.get("caption") if isinstance(meta, dict) else sample.get("txt")
    if not isinstance(caption, str):
        raise KeyError("no caption (json.caption or txt)")
    image = center_crop(resize_shorter(sample[image_key], resolution), resolution)
    return image.float() / 127.5 - 1.0, caption


class ImageCaptionSample(DecodeSample):
    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        pixels, caption = image_and_caption(sample, self.resolution)
        return {"__key__": sample["__key__"], "pixel_values": pixels, "caption": caption}


class ImageCaptionData(ShardDataModule):
    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None,
                 resolution: int = 32, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, verify: str = "sha256"):
        super().__init__(train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, verify=verify)
        raise_param_problems([("resolution", f"must be >= 8, got {resolution}")] if resolution < 8 else [])
        self.resolution = resolution

    def make_sample(self, split: str) -> ImageCaptionSample:
        return ImageCaptionSample(self.resolution)


class TextToImage(L.LightningModule):
    """The UNet of `base` trained to denoise images given their captions (prompt dropout for classifier-free
    guidance); everything else frozen."""

    def __init__(self, base: Annotated[dict[str, Any], KwargsOf(load_diffusion_parts)], lr: float = 1e-3,
                 weight_decay: float = 0.0, prompt_dropout: float = 0.1, warmup_steps: int = 0, seed: int = 0):
        super().__init__()
        problems = [("lr", f"must be > 0, got {lr}")] if lr <= 0 else []
        if not 0 <= prompt_dropout <= 1:
            problems.append(("prompt_dropout", f"must be in [0, 1], got {prompt_dropout}"))
        raise_param_problems(problems)
        self.save_hyperparameters()
        parts = load_diffusion_parts(**base)
        self.unet, self.text_encoder, self.vae = parts.unet, freeze(parts.text_encoder), parts.vae
        if self.vae is not None:
            freeze(self.vae)
        self.tokenizer, self.noise_scheduler = parts.tokenizer, parts.scheduler

    def parts(self) -> DiffusionParts:
        return DiffusionParts(unet=self.unet, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                              scheduler=self.noise_scheduler)

    def loss(self, batch: dict[str, Any], generator: torch.Generator, train: bool) -> torch.Tensor:
        latents = encode_images(self.vae, batch["pixel_values"].to(self.device), generator=generator,
                                dtype=self.unet.dtype)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = sample_timesteps(self.noise_scheduler, latents.shape[0], generator=generator).to(self.device)
        captions = list(batch["caption"])
        if train:
            captions = drop_prompts(captions, dropout_mask(len(captions), self.hparams.prompt_dropout, generator))
        context = encode_prompts(self.text_encoder, self.tokenizer, captions).to(self.device)
        prediction = self.unet(noisy_latents(self.noise_scheduler, latents, noise, timesteps), timesteps,
                               context).sample
        return diffusion_loss(prediction.float(),
                              training_target(self.noise_scheduler, latents, noise, timesteps).float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, sample_generator(self.hparams.seed, self.global_step, f"train/{self.global_rank}"),
                         train=True)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self.loss(batch, sample_generator(self.hparams.seed, batch_idx, "val"), train=False)
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["caption"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.unet.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

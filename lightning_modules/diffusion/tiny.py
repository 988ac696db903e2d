"""Tiny random SD-1.x-style pipeline directories, text-to-image and text-to-video: what tests and tiny configs load
instead of a real Stable Diffusion (or AnimateDiff), through the same `from_pretrained` code
(components.load_diffusion_parts)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextConfig, CLIPTextModel

from lightning_modules.clip_pretrain.random_clip import WORDS
from lightning_modules.clip_pretrain.tokenizer import build_tokenizer
from lightning_modules.diffusion.components import DiffusionParts, save_diffusion_parts

TEXT_WIDTH = 32  # the text encoder's hidden size = the UNet's cross_attention_dim
LATENT_CHANNELS = 4
# what captions of moving things say (synthetic-motion: "a red circle moving left", "... staying still")
VIDEO_WORDS = (*WORDS, *"moving staying still left right up down ball rolling grass".split())


# Three levels, attention only at the innermost (and the middle block): attention over every pixel of a 32-pixel
# image costs most of a step on a CPU (measured 3x), and a small image needs no global attention at its outer level.
DEMO_UNET = {"block_out_channels": (32, 64, 64), "down_block_types": ("DownBlock2D", "DownBlock2D",
                                                                      "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")}


def tiny_unet(sample_size: int, channels: int, **overrides) -> UNet2DConditionModel:
    """Two resolution levels, cross-attention at the outer one and in the middle block, ~0.8M parameters;
    `overrides`: other UNet2DConditionModel arguments (DEMO_UNET)."""
    settings = {"block_out_channels": (32, 64), "layers_per_block": 1,
                "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": TEXT_WIDTH,
                "attention_head_dim": 8, "norm_num_groups": 8, **overrides}
    return UNet2DConditionModel(sample_size=sample_size, in_channels=channels, out_channels=channels, **settings)


def tiny_vae(image_size: int, channels: int) -> AutoencoderKL:
    """Two levels (latents at half the image size), LATENT_CHANNELS latent channels."""
    return AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=LATENT_CHANNELS, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        norm_num_groups=8, sample_size=image_size)


def tiny_text_encoder(tokenizer) -> CLIPTextModel:
    """A two-layer CLIP text encoder of width TEXT_WIDTH over the tokenizer's vocabulary (random weights)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def write_tiny_text_to_image(directory: str | Path, *, image_size: int = 32, channels: int = 3, vae: bool = False,
                             seed: int = 0, unet: dict | None = None) -> Path:
    """Write a random tiny pipeline (unet/, text_encoder/, tokenizer/, scheduler/, with `vae` also vae/) to
    `directory` and return it. The same seed gives the same weights; the global random state is left as it was.
    `unet`: UNet2DConditionModel arguments over tiny_unet's (e.g. DEMO_UNET)."""
    if image_size < 4 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 (two halvings), got {image_size}")
    tokenizer = build_tokenizer(WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_text_encoder(tokenizer)
        autoencoder = tiny_vae(image_size, channels) if vae else None
        unet_model = (tiny_unet(image_size // 2, LATENT_CHANNELS, **(unet or {})) if vae
                      else tiny_unet(image_size, channels, **(unet or {})))
    if vae:  # SD-1.x's noise schedule
        scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  clip_sample=False, steps_offset=1)
    else:  # DDPM's pixel-space schedule, samples clipped to the image range
        scheduler = DDPMScheduler()
    parts = DiffusionParts(unet=unet_model, vae=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=scheduler)
    return save_diffusion_parts(parts, directory)


def tiny_motion_unet(sample_size: int, channels: int, max_frames: int = 16, **overrides) -> UNetMotionModel:
    """tiny_unet's two levels as an AnimateDiff-style UNetMotionModel (a motion module after every spatial block);
    `overrides`: other UNetMotionModel arguments."""
    settings = {"block_out_channels": (32, 64), "layers_per_block": 1,
                "down_block_types": ("CrossAttnDownBlockMotion", "DownBlockMotion"),
                "up_block_types": ("UpBlockMotion", "CrossAttnUpBlockMotion"), "cross_attention_dim": TEXT_WIDTH,
                "num_attention_heads": 4, "motion_num_attention_heads": 2, "norm_num_groups": 8,
                "motion_max_seq_length": max_frames, **overrides}
    return UNetMotionModel(sample_size=sample_size, in_channels=channels, out_channels=channels, **settings)


def write_tiny_text_to_video(directory: str | Path, *, image_size: int = 16, channels: int = 3, max_frames: int = 16,
                             seed: int = 0, unet: dict | None = None, words: tuple[str, ...] = VIDEO_WORDS) -> Path:
    """Write a random tiny pixel-space text-to-video pipeline (unet/ a UNetMotionModel, text_encoder/, tokenizer/,
    scheduler/) to `directory` and return it; load it with `load_diffusion_parts(directory, vae=None,
    unet_class="UNetMotionModel")`. `words`: the word-level tokenizer's vocabulary. Seeds and the random state as
    write_tiny_text_to_image."""
    if image_size < 4 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 (two halvings), got {image_size}")
    tokenizer = build_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_text_encoder(tokenizer)
        unet_model = tiny_motion_unet(image_size, channels, max_frames, **(unet or {}))
    parts = DiffusionParts(unet=unet_model, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=DDPMScheduler())
    return save_diffusion_parts(parts, directory)

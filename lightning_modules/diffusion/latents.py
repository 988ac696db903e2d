"""Between what a user has (images in [-1, 1], prompts) and what the UNet takes (latents, text embeddings).

The VAE and the text encoder are frozen: images and prompts are encoded without gradients, in the training dtype.
With no VAE (pixel-space diffusion) images are their own latents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _scaling(vae: nn.Module) -> tuple[float, float]:
    """The VAE's (scaling_factor, shift_factor): latents = (z - shift) * scale; SD-1.x has no shift."""
    shift = getattr(vae.config, "shift_factor", None)
    return float(vae.config.scaling_factor), float(shift) if shift is not None else 0.0


def encode_images(vae: nn.Module | None, pixels: torch.Tensor, generator: torch.Generator | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Latents of images `pixels` [B, C, H, W] in [-1, 1]: a sample of the VAE's posterior, scaled, without
    gradients, in `dtype` (default: the pixels' dtype). Pixel space (`vae` None): the pixels themselves."""
    dtype = dtype or pixels.dtype
    if vae is None:
        return pixels.to(dtype)
    scale, shift = _scaling(vae)
    with torch.no_grad():
        posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
        return ((posterior.sample(generator=generator) - shift) * scale).to(dtype)


def decode_latents(vae: nn.Module | None, latents: torch.Tensor) -> torch.Tensor:
    """Images in (about) [-1, 1] from latents: the inverse of `encode_images`. Gradients as the caller has them
    (a loss on decoded images may need them)."""
    if vae is None:
        return latents
    scale, shift = _scaling(vae)
    return vae.decode((latents / scale + shift).to(vae.dtype)).sample


def _per_frame_chunks(videos: torch.Tensor, chunk: int, convert) -> torch.Tensor:
    """`convert` applied to a video batch's frames, `chunk` frames at a time: [B, F, ...] -> [B, F, ...']."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 frames, got {chunk}")
    frames = videos.flatten(0, 1)
    out = torch.cat([convert(part) for part in frames.split(chunk)])
    return out.unflatten(0, videos.shape[:2])


def encode_videos(vae: nn.Module | None, videos: torch.Tensor, generator: torch.Generator | None = None,
                  dtype: torch.dtype | None = None, chunk: int = 16) -> torch.Tensor:
    """Latents [B, C, F, h, w] (diffusers' video UNet layout) of videos [B, F, 3, H, W] in [-1, 1]: each frame through
    `encode_images`, `chunk` frames per VAE call so that a long clip's encoder activations fit in memory."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be [B, F, C, H, W], got {tuple(videos.shape)}")
    latents = _per_frame_chunks(videos, chunk, lambda part: encode_images(vae, part, generator, dtype))
    return latents.transpose(1, 2)


def decode_videos(vae: nn.Module | None, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Videos [B, F, 3, H, W] in (about) [-1, 1] from latents [B, C, F, h, w]: the inverse of `encode_videos`."""
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B, C, F, h, w], got {tuple(latents.shape)}")
    return _per_frame_chunks(latents.transpose(1, 2), chunk, lambda part: decode_latents(vae, part))


def latent_scale_factor(vae: nn.Module | None) -> int:
    """Image pixels per latent pixel along a side: 8 for SD's VAE (each block after the first halves), 1 without."""
    if vae is None:
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


def prompt_length(text_encoder: nn.Module, tokenizer) -> int:
    """Tokens per prompt: the tokenizer's length, at most the text encoder's positions."""
    return min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))


def tokenize_prompts(text_encoder: nn.Module, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids [B, L] of `prompts`, padded to the full prompt length and truncated to it."""
    return tokenizer(list(prompts), padding="max_length", max_length=prompt_length(text_encoder, tokenizer),
                     truncation=True, return_tensors="pt").input_ids


def encode_prompts(text_encoder: nn.Module, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """The text encoder's last hidden states [B, L, D] for `prompts` (the UNet's cross-attention context), without
    gradients, on the text encoder's device and in its dtype."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    ids = tokenize_prompts(text_encoder, tokenizer, prompts).to(text_encoder.device)
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state

"""latents.py: images to latents and back (a tiny VAE, and pixel space), prompts to text embeddings."""

from types import SimpleNamespace

import pytest
import torch

from lightning_modules.diffusion import (
    decode_latents,
    encode_images,
    encode_prompts,
    freeze,
    latent_scale_factor,
    load_diffusion_parts,
)
from lightning_modules.diffusion.latents import tokenize_prompts


@pytest.fixture(scope="module")
def parts(latent_pipeline):
    loaded = load_diffusion_parts(str(latent_pipeline))
    freeze(loaded.vae)
    freeze(loaded.text_encoder)
    return loaded


def test_latents_are_scaled_posterior_samples_without_gradients_in_the_asked_dtype(parts):
    pixels = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    latents = encode_images(parts.vae, pixels, generator=torch.Generator().manual_seed(3), dtype=torch.bfloat16)
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.bfloat16
    assert not latents.requires_grad and latents.grad_fn is None
    with torch.no_grad():
        posterior = parts.vae.encode(pixels).latent_dist
        by_hand = posterior.sample(generator=torch.Generator().manual_seed(3)) * parts.vae.config.scaling_factor
    assert torch.equal(latents, by_hand.to(torch.bfloat16))
    again = encode_images(parts.vae, pixels, generator=torch.Generator().manual_seed(3))
    assert again.dtype == torch.float32 and torch.allclose(again, by_hand)


def test_decoding_undoes_the_scaling(parts):
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        by_hand = parts.vae.decode(latents / parts.vae.config.scaling_factor).sample
        decoded = decode_latents(parts.vae, latents)
    assert decoded.shape == (1, 3, 32, 32) and torch.allclose(decoded, by_hand)


def test_pixel_space_latents_are_the_pixels():
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    latents = encode_images(None, pixels, dtype=torch.float16)
    assert latents.dtype == torch.float16 and torch.equal(latents, pixels.half())
    assert torch.equal(decode_latents(None, pixels), pixels)
    assert latent_scale_factor(None) == 1


def test_latent_scale_factor(parts):
    assert latent_scale_factor(parts.vae) == 2  # two levels
    sd_vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(128, 256, 512, 512)))
    assert latent_scale_factor(sd_vae) == 8


def test_prompts_are_padded_and_truncated_to_the_prompt_length(parts):
    long_prompt = " ".join(["red circle"] * 40)
    context = encode_prompts(parts.text_encoder, parts.tokenizer, ["a red circle", "", long_prompt])
    length = parts.tokenizer.model_max_length
    assert context.shape == (3, length, parts.text_encoder.config.hidden_size)
    assert not context.requires_grad
    ids = tokenize_prompts(parts.text_encoder, parts.tokenizer, ["a red circle", long_prompt])
    assert ids.shape == (2, length) and ids[0, -1] == parts.tokenizer.pad_token_id
    alone = encode_prompts(parts.text_encoder, parts.tokenizer, ["a red circle"])
    assert torch.allclose(alone[0], context[0], atol=1e-6)  # a prompt's embedding does not depend on its batch


def test_a_single_string_is_refused(parts):
    with pytest.raises(TypeError, match="list of strings"):
        encode_prompts(parts.text_encoder, parts.tokenizer, "a red circle")

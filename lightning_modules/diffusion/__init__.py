"""The diffusion core: what every diffusion method (FlexEControl, Mojito) builds on, knowing none of them.

- components.py: the parts of an SD-1.x-family model (UNet, VAE or pixel space, CLIP text encoder + tokenizer, noise
  scheduler) from a hub id, a local diffusers directory or configs; their problems found before loading; saving in
  diffusers' layout; freezing.
- latents.py: images (and videos, frame by frame) to latents and back, prompts to text embeddings (frozen, without
  gradients).
- objective.py: timesteps, noising, the epsilon / v / sample target, the (masked, min-SNR-weighted) MSE, prompt and
  condition dropout for classifier-free guidance.
- attention.py: recording cross-attention probabilities of chosen tokens, with gradients, at chosen layers.
- sampling.py: schedulers by class name and a denoising loop with classifier-free guidance and a per-step hook.
- tiny.py: a tiny random pipeline directory for tests and tiny configs.
"""

from lightning_modules.diffusion.attention import (
                                                   AttentionStore,
                                                   CrossAttentionRecorder,
                                                   cross_attention_layers,
                                                   phrase_token_indices,
                                                   record_cross_attention,
)
from lightning_modules.diffusion.components import (
                                                   FROM_PRETRAINED,
                                                   DiffusionParts,
                                                   base_config_problems,
                                                   diffusion_parts_problems,
                                                   freeze,
                                                   is_frozen,
                                                   load_diffusion_parts,
                                                   save_diffusion_parts,
)
from lightning_modules.diffusion.latents import (decode_latents, decode_videos, encode_images, encode_prompts,
                                                 encode_videos, latent_scale_factor)
from lightning_modules.diffusion.objective import (
                                                   adamw_with_warmup,
                                                   diffusion_loss,
                                                   drop_prompts,
                                                   dropout_mask,
                                                   min_snr_weights,
                                                   noisy_latents,
                                                   sample_timesteps,
                                                   snr,
                                                   training_target,
)
from lightning_modules.diffusion.sampling import denoise, guided, scheduler_class, scheduler_from_name
from lightning_modules.diffusion.tiny import write_tiny_text_to_image

__all__ = [
    "FROM_PRETRAINED", "AttentionStore", "adamw_with_warmup", "base_config_problems", "CrossAttentionRecorder",
    "DiffusionParts", "cross_attention_layers", "decode_latents", "decode_videos", "denoise", "diffusion_loss",
    "diffusion_parts_problems", "drop_prompts", "dropout_mask", "encode_images", "encode_prompts", "encode_videos",
    "freeze", "guided", "is_frozen", "latent_scale_factor", "load_diffusion_parts", "min_snr_weights",
    "noisy_latents", "phrase_token_indices", "record_cross_attention", "sample_timesteps", "save_diffusion_parts",
    "scheduler_class", "scheduler_from_name", "snr", "training_target", "write_tiny_text_to_image",
]

"""The denoising training objective, for any method that trains a diffusion model.

A training step: `sample_timesteps`, noise, `noisy_latents`; the model predicts what the scheduler's
`prediction_type` says (`training_target`: the noise for epsilon, the velocity for v_prediction, the clean latents for
sample); `diffusion_loss` is the MSE per sample, optionally weighted per element (masked loss) and per timestep
(min-SNR-gamma, Hang et al. 2023, arXiv 2303.09556). For classifier-free guidance a share of the prompts (and of the
conditions) is dropped during training: `dropout_mask`, `drop_prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def sample_timesteps(scheduler: Any, batch_size: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """`batch_size` timesteps drawn uniformly from 0 .. num_train_timesteps - 1 (int64)."""
    # drawn where the generator lives (a CPU generator cannot fill a CUDA tensor), then moved
    where = generator.device if generator is not None else device
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator,
                              device=where)
    return timesteps.to(device) if device is not None else timesteps


def noisy_latents(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The forward process at `timesteps`: sqrt(abar_t) * latents + sqrt(1 - abar_t) * noise (the scheduler's)."""
    return scheduler.add_noise(latents, noise, timesteps)


def prediction_type(scheduler: Any) -> str:
    """The scheduler's prediction_type; a ValueError naming the accepted ones for anything else."""
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"{type(scheduler).__name__} has prediction_type '{kind}'; a diffusion loss is defined for "
                         f"{', '.join(PREDICTION_TYPES)}")
    return kind


def training_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the model learns to predict from the noisy latents: noise (epsilon), velocity
    sqrt(abar_t) * noise - sqrt(1 - abar_t) * latents (v_prediction), or the latents themselves (sample)."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return latents
    if not hasattr(scheduler, "get_velocity"):
        raise ValueError(f"{type(scheduler).__name__} cannot compute a v_prediction target (no get_velocity); "
                         "train with a scheduler that has one, e.g. DDPMScheduler")
    return scheduler.get_velocity(latents, noise, timesteps)


def snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at `timesteps` (float32, on the timesteps' device)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    abar = alphas_cumprod[timesteps.long()]
    return abar / (1 - abar)


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma for the scheduler's prediction type: min(snr, gamma) / snr
    (epsilon), min(snr, gamma) / (snr + 1) (v_prediction), min(snr, gamma) (sample)."""
    if gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0, got {gamma}")
    kind = prediction_type(scheduler)
    ratio = snr(scheduler, timesteps)
    clipped = ratio.clamp(max=gamma)
    if kind == "epsilon":
        return (gamma / ratio).clamp(max=1.0)  # = min(snr, gamma) / snr, and 1 where snr is 0 (no 0 / 0)
    if kind == "v_prediction":
        return clipped / (ratio + 1)
    return clipped


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None,
                   snr_gamma: float | None = None, scheduler: Any = None,
                   timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of each sample's mean squared error (in float32).

    `weights` (>= 0, broadcastable to the prediction, e.g. [B, 1, H, W] from condition masks): each sample's error
    is the weighted mean, so zero-weight elements do not count (a sample with no weight at all contributes 0).
    `snr_gamma`: min-SNR-gamma weighting of each sample by its timestep, which needs `scheduler` and `timesteps`."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    squared = (prediction.float() - target.float()) ** 2
    dims = tuple(range(1, squared.ndim))
    if weights is None:
        per_sample = squared.mean(dim=dims)
    else:
        try:
            weights = torch.broadcast_to(weights.to(squared), squared.shape)
        except RuntimeError:
            raise ValueError(f"weights {tuple(weights.shape)} do not broadcast to the prediction "
                             f"{tuple(prediction.shape)}") from None
        per_sample = (squared * weights).sum(dim=dims) / weights.sum(dim=dims).clamp(min=torch.finfo(torch.float32).tiny)
    if snr_gamma is not None:
        if scheduler is None or timesteps is None:
            raise ValueError("snr_gamma weighting needs the scheduler and the timesteps")
        per_sample = per_sample * min_snr_weights(scheduler, timesteps.to(per_sample.device), snr_gamma)
    return per_sample.mean()


def dropout_mask(batch_size: int, p: float, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Which samples of a batch are dropped (True), each independently with probability `p`."""
    if not 0 <= p <= 1:
        raise ValueError(f"a dropout probability must be in [0, 1], got {p}")
    where = generator.device if generator is not None else device
    mask = torch.rand(batch_size, generator=generator, device=where) < p
    return mask.to(device) if device is not None else mask


def drop_prompts(prompts: Sequence[str], mask: torch.Tensor) -> list[str]:
    """`prompts` with the dropped ones (mask True) replaced by the empty prompt, the unconditional one of CFG."""
    if len(prompts) != len(mask):
        raise ValueError(f"{len(prompts)} prompts but a mask of {len(mask)}")
    return ["" if dropped else prompt for prompt, dropped in zip(prompts, mask.tolist())]


def adamw_with_warmup(parameters: Any, lr: float, weight_decay: float, warmup_steps: int) -> Any:
    """What a diffusion module's `configure_optimizers` returns: AdamW over `parameters`, with a linear learning-rate
    warmup over the first `warmup_steps` optimizer steps when it is > 0."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if not warmup_steps:
        return optimizer
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

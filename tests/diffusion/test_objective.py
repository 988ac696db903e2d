"""objective.py: timesteps, noising, targets by prediction type, the (weighted, min-SNR) loss, guidance dropout --
each checked against the formula computed by hand."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from lightning_modules.diffusion import (
    diffusion_loss,
    drop_prompts,
    dropout_mask,
    min_snr_weights,
    noisy_latents,
    sample_timesteps,
    snr,
    training_target,
)


def scheduler(prediction_type: str = "epsilon", **config) -> DDPMScheduler:
    return DDPMScheduler(prediction_type=prediction_type, **config)


def abar(s: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    return s.alphas_cumprod[timesteps].view(-1, 1, 1, 1)


def test_timesteps_are_uniform_integers_and_follow_the_generator():
    s = scheduler()
    t = sample_timesteps(s, 4000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (4000,)
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    assert 0.45 < float((t < 500).float().mean()) < 0.55
    assert torch.equal(t, sample_timesteps(s, 4000, generator=torch.Generator().manual_seed(0)))
    assert sample_timesteps(s, 3, device="cpu").device.type == "cpu"


def test_noisy_latents_follow_the_forward_process():
    s = scheduler()
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0, 400, 999])
    expected = abar(s, t).sqrt() * x0 + (1 - abar(s, t)).sqrt() * noise
    assert torch.allclose(noisy_latents(s, x0, noise, t), expected, atol=1e-6)


def test_targets_by_prediction_type():
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([5, 300, 900])
    assert torch.equal(training_target(scheduler("epsilon"), x0, noise, t), noise)
    assert torch.equal(training_target(scheduler("sample"), x0, noise, t), x0)
    s = scheduler("v_prediction")
    velocity = abar(s, t).sqrt() * noise - (1 - abar(s, t)).sqrt() * x0
    assert torch.allclose(training_target(s, x0, noise, t), velocity, atol=1e-6)


def test_an_unknown_prediction_type_is_a_clear_error():
    s = scheduler()
    s.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow'.*epsilon, v_prediction, sample"):
        training_target(s, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([1]))


def test_snr_by_hand():
    s = scheduler()
    t = torch.tensor([0, 10, 999])
    a = s.alphas_cumprod[t]
    assert torch.allclose(snr(s, t), a / (1 - a))


def test_mse_per_sample_without_weights_is_plain_mse():
    prediction, target = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    assert torch.allclose(diffusion_loss(prediction, target), F.mse_loss(prediction, target))


def test_weighted_mse_ignores_zero_weight_regions():
    prediction, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    weights = torch.zeros(2, 1, 4, 4)
    weights[:, :, :2] = 1  # the top half of every image counts
    loss = diffusion_loss(prediction, target, weights=weights)
    by_hand = ((prediction - target)[:, :, :2] ** 2).mean(dim=(1, 2, 3)).mean()
    assert torch.allclose(loss, by_hand)
    changed = prediction.clone()
    changed[:, :, 2:] += 100  # errors where the weight is zero do not count
    assert torch.allclose(diffusion_loss(changed, target, weights=weights), loss)


def test_a_sample_without_any_weight_contributes_nothing():
    prediction, target = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    weights = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    loss = diffusion_loss(prediction, target, weights=weights)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, ((prediction[0] - target[0]) ** 2).mean() / 2)


def test_fractional_weights_give_a_weighted_mean():
    prediction, target = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 3.0]]]])
    weights = torch.tensor([[[[1.0, 3.0]]]])
    assert torch.allclose(diffusion_loss(prediction, target, weights=weights), torch.tensor((1 + 27) / 4))


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="do not broadcast"):
        diffusion_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), weights=torch.ones(3, 1, 4, 4))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_by_hand(kind):
    s, gamma = scheduler(kind), 5.0
    t = torch.tensor([0, 50, 200, 999])
    a = s.alphas_cumprod[t].double()
    ratio = a / (1 - a)
    clipped = torch.minimum(ratio, torch.full_like(ratio, gamma))
    expected = {"epsilon": clipped / ratio, "v_prediction": clipped / (ratio + 1), "sample": clipped}[kind]
    assert torch.allclose(min_snr_weights(s, t, gamma).double(), expected, rtol=1e-5)
    prediction, target = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    loss = diffusion_loss(prediction, target, snr_gamma=gamma, scheduler=s, timesteps=t)
    assert torch.allclose(loss.double(), (per_sample.double() * expected).mean(), rtol=1e-5)


def test_min_snr_is_finite_at_zero_terminal_snr():
    s = scheduler("epsilon", rescale_betas_zero_snr=True)
    t = torch.tensor([999])
    assert float(snr(s, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(min_snr_weights(s, t, 5.0)) == pytest.approx(1.0)


def test_min_snr_needs_scheduler_timesteps_and_a_positive_gamma():
    prediction = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="needs the scheduler and the timesteps"):
        diffusion_loss(prediction, prediction, snr_gamma=5.0)
    with pytest.raises(ValueError, match="snr_gamma must be > 0"):
        diffusion_loss(prediction, prediction, snr_gamma=0.0, scheduler=scheduler(), timesteps=torch.tensor([1]))


def test_dropout_mask():
    mask = dropout_mask(10000, 0.1, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and 0.08 < float(mask.float().mean()) < 0.12
    assert torch.equal(mask, dropout_mask(10000, 0.1, torch.Generator().manual_seed(0)))
    assert not dropout_mask(50, 0.0).any() and dropout_mask(50, 1.0).all()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        dropout_mask(4, 1.5)


def test_dropped_prompts_become_empty():
    prompts = ["a red circle", "a blue square", "a star"]
    assert drop_prompts(prompts, torch.tensor([True, False, True])) == ["", "a blue square", ""]
    with pytest.raises(ValueError, match="3 prompts but a mask of 2"):
        drop_prompts(prompts, torch.tensor([True, False]))

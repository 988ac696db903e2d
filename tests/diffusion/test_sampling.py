"""sampling.py: schedulers by name, and the denoising loop: guidance combination, the step hook, determinism, and
real diffusers schedulers (deterministic, multistep, ancestral) driving a tiny UNet."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from datamodules.errors import ParamError
from lightning_modules.diffusion import denoise, scheduler_from_name
from lightning_modules.diffusion.tiny import tiny_unet


class RecordingScheduler:
    """A scheduler whose step returns sample - model_output and records what it was given: the loop's contract."""

    init_noise_sigma = 2.0

    def __init__(self):
        self.outputs, self.scaled = [], []

    def set_timesteps(self, num_steps, device=None):
        self.timesteps = torch.arange(num_steps, 0, -1) * 10

    def scale_model_input(self, sample, t):
        self.scaled.append(sample.shape[0])
        return sample * 0.5

    def step(self, model_output, t, sample, return_dict=False):
        self.outputs.append(model_output)
        return (sample - model_output,)


def test_scheduler_from_name_takes_another_schedulers_config():
    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ddim = scheduler_from_name("DDIMScheduler", ddpm.config)
    assert isinstance(ddim, DDIMScheduler) and ddim.config.beta_schedule == "scaled_linear"
    assert ddim.config.beta_end == pytest.approx(0.012)
    assert isinstance(scheduler_from_name("EulerDiscreteScheduler"), object)


def test_an_unknown_scheduler_is_a_param_error_with_did_you_mean():
    with pytest.raises(ParamError) as raised:
        scheduler_from_name("EulerDiscreteSheduler")
    assert raised.value.problems == [
        ("scheduler", "unknown scheduler class 'EulerDiscreteSheduler' (did you mean EulerDiscreteScheduler?)")]
    with pytest.raises(ParamError, match="scheduler: unknown scheduler class 'UNet2DConditionModel'"):
        scheduler_from_name("UNet2DConditionModel")


def test_guidance_combines_one_batched_forward_of_uncond_and_cond():
    calls = []

    def model_fn(latent_input, t, context):
        calls.append((latent_input.shape[0], context.clone()))
        return latent_input * 0 + context.view(-1, 1, 1, 1)  # each row predicts its context's value

    scheduler = RecordingScheduler()
    latents = torch.ones(2, 1, 2, 2)
    uncond, cond = torch.tensor([[1.0], [1.0]]), torch.tensor([[3.0], [5.0]])
    result = denoise(model_fn, scheduler, latents, num_steps=2, guidance_scale=7.5, context=cond,
                     uncond_context=uncond)
    assert [rows for rows, _ in calls] == [4, 4]  # one forward per step, [uncond, cond]
    assert torch.equal(calls[0][1], torch.cat([uncond, cond]))
    expected = uncond + 7.5 * (cond - uncond)  # [16, 31]
    for output in scheduler.outputs:
        assert torch.allclose(output, expected.view(-1, 1, 1, 1).expand(2, 1, 2, 2))
    assert torch.allclose(result, latents * 2.0 - 2 * expected.view(-1, 1, 1, 1))  # init_noise_sigma, two steps


def test_without_guidance_there_is_one_unbatched_forward():
    rows = []
    scheduler = RecordingScheduler()
    denoise(lambda x, t, c: rows.append(x.shape[0]) or torch.zeros_like(x), scheduler, torch.ones(3, 1, 2, 2),
            num_steps=3, guidance_scale=1.0, context=torch.zeros(3, 1), uncond_context=torch.zeros(3, 1))
    assert rows == [3, 3, 3]


def test_guidance_without_an_unconditional_context_is_refused():
    with pytest.raises(ParamError, match="uncond_context: guidance_scale 5.0 > 1 needs"):
        denoise(lambda x, t, c: x, RecordingScheduler(), torch.ones(1, 1, 2, 2), num_steps=2, guidance_scale=5.0,
                context=torch.zeros(1, 1))
    with pytest.raises(ParamError, match="num_steps: must be an integer >= 1"):
        denoise(lambda x, t, c: x, RecordingScheduler(), torch.ones(1, 1, 2, 2), num_steps=0, guidance_scale=1.0,
                context=None)


def test_structured_contexts_are_doubled_leaf_by_leaf():
    seen = []

    def model_fn(latent_input, t, context):
        seen.append(context)
        return torch.zeros_like(latent_input)

    context = {"text": torch.ones(2, 4, 8), "conditions": [torch.ones(2, 3)], "strength": 0.5}
    uncond = {"text": torch.zeros(2, 4, 8), "conditions": [torch.zeros(2, 3)], "strength": 0.5}
    denoise(model_fn, RecordingScheduler(), torch.ones(2, 1, 2, 2), num_steps=1, guidance_scale=2.0, context=context,
            uncond_context=uncond)
    both = seen[0]
    assert both["text"].shape == (4, 4, 8) and torch.equal(both["text"][:2], uncond["text"])
    assert both["conditions"][0].shape == (4, 3) and both["strength"] == 0.5


def test_the_step_hook_runs_once_before_each_step_and_may_change_the_latents():
    calls = []

    def hook(i, t, latents):
        calls.append((i, int(t), latents.clone()))
        return latents + 100 if i == 0 else None

    scheduler = RecordingScheduler()
    result = denoise(lambda x, t, c: torch.zeros_like(x), scheduler, torch.ones(1, 1, 1, 1), num_steps=3,
                     guidance_scale=1.0, context=None, step_hook=hook)
    assert [(i, t) for i, t, _ in calls] == [(0, 30), (1, 20), (2, 10)]
    assert float(calls[0][2]) == 2.0  # after init_noise_sigma
    assert float(calls[1][2]) == 102.0  # the hook's change reached the next step
    assert float(result) == 102.0


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return tiny_unet(8, 3).eval()


def unet_fn(unet):
    return lambda latent_input, t, context: unet(latent_input, t, context)  # a diffusers output: .sample is used


@pytest.mark.parametrize("name", ["DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_stochastic_schedulers_follow_the_generator(unet, name):
    scheduler = scheduler_from_name(name)
    context, uncond = torch.randn(1, 4, 32), torch.zeros(1, 4, 32)

    def run(seed):
        noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        return denoise(unet_fn(unet), scheduler, noise, num_steps=3, guidance_scale=3.0, context=context,
                       uncond_context=uncond, generator=torch.Generator().manual_seed(seed))

    first, same, other = run(1), run(1), run(2)
    assert torch.equal(first, same)
    assert not torch.allclose(first, other)  # the step noise comes from the generator


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler",
                                  "UniPCMultistepScheduler"])
def test_diffusers_schedulers_drive_a_tiny_unet(unet, name):
    # PNDM as Stable Diffusion configures it (PLMS): its Runge-Kutta warm-up needs more than 3 steps
    scheduler = scheduler_from_name(name, {**DDPMScheduler().config, "skip_prk_steps": True})
    steps = []
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = denoise(unet_fn(unet), scheduler, noise, num_steps=3, guidance_scale=2.0,
                     context=torch.randn(2, 4, 32), uncond_context=torch.zeros(2, 4, 32),
                     step_hook=lambda i, t, latents: steps.append(i), generator=torch.Generator().manual_seed(0))
    assert result.shape == noise.shape and torch.isfinite(result).all()
    assert not torch.allclose(result, noise * scheduler.init_noise_sigma)
    assert steps == list(range(len(scheduler.timesteps))) and len(steps) >= 3

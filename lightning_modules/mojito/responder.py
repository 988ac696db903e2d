"""Mojito answers multiple-choice questions about a video as a diffusion classifier (Li et al., 2023, "Your Diffusion
Model is Secretly a Zero-Shot Classifier", arXiv 2303.16203; here on video): `MojitoModule.benchmark_responder()`, the
responder (lightning_modules/responders.py) of the VLM4D / MMWorld BenchmarkValidation during training.

For a question, each option's text `template.format(question=..., option=...)` conditions the UNet (the intensity
input "none": the text-only prediction). The video's frames, `frames` of them sampled uniformly over the clip, each
frame's shorter side resized to the model's resolution and centre-cropped (data.py `video_pixels`, as in training),
become per-frame latents as in training; the option whose conditioning gives the lowest denoising error wins. The error
is the mean, over a fixed set of (timestep, noise) pairs, of the MSE between the UNet's prediction and the training
target (the scheduler's prediction_type). The pairs are the same for every option and every question (the timesteps
given, or `num_timesteps` spread evenly; the noise drawn from `noise_seed`), so the options are compared paired -- an
error difference comes from the text, not from the draw -- and an answer is deterministic and does not depend on
which other questions share a call. The response is the winning option's letter (what extract_choice reads).

Cost: each question costs options x timesteps UNet forwards at the model's frames and resolution (a 4-option question
with 8 timesteps: 32 forwards, in calls of `batch_size` (option, timestep) pairs), plus one VAE encoding of its frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamodules.benchmarks.frames import uniform_indices
from datamodules.benchmarks.questions import Question
from datamodules.errors import raise_param_problems
from lightning_modules.diffusion import encode_prompts, encode_videos, noisy_latents, training_target
from lightning_modules.diffusion.latents import prompt_length
from lightning_modules.mojito.data import video_pixels
from lightning_modules.mojito.intensity import NONE
from lightning_modules.responders import DEFAULT_OPTION_TEMPLATE, fitted_option_texts, template_problems

DEFAULT_NUM_TIMESTEPS = 8


def spread_timesteps(count: int, num_train_timesteps: int) -> list[int]:
    """`count` timesteps evenly spread over 0 .. num_train_timesteps - 1: the middles of `count` equal bins (the
    nearly clean and the nearly pure-noise ends, where every text predicts alike, are not used)."""
    return [(2 * i + 1) * num_train_timesteps // (2 * count) for i in range(count)]


@dataclass
class DenoisingSettings:
    """How a MojitoModule answers benchmark questions (its `responder` parameter).

    timesteps: the timesteps the error is averaged over (each with its own noise draw), or None for `num_timesteps`
        of them spread evenly (default 8). noise_seed: seeds the noise (and the VAE's posterior sample).
    template: each option's text; {question} and {option} are filled in (leading words of a question too long for
        the text encoder are dropped, never the option). batch_size: (option, timestep) pairs per UNet call.
    frames: frames the video is sampled to (None: the module's sampling frames).
    """

    timesteps: list[int] | None = None
    num_timesteps: int | None = None
    noise_seed: int = 0
    template: str = DEFAULT_OPTION_TEMPLATE
    batch_size: int = 8
    frames: int | None = None

    def problems(self, num_train_timesteps: int | None = None) -> list[tuple[str, str]]:
        """(field, why) for every value that cannot work; with the scheduler's `num_train_timesteps`, whether the
        timesteps lie in its range too."""
        problems = template_problems(self.template)
        if self.timesteps is not None and self.num_timesteps is not None:
            problems.append(("num_timesteps", "give timesteps or num_timesteps, not both"))
        if self.timesteps is not None and not self.timesteps:
            problems.append(("timesteps", "give at least one timestep, or null for num_timesteps of them"))
        outside = [t for t in self.timesteps or () if num_train_timesteps is not None and
                   not 0 <= t < num_train_timesteps]
        if outside:
            problems.append(("timesteps", f"{outside} outside the scheduler's 0..{num_train_timesteps - 1}"))
        problems += [(name, f"must be >= 1, got {value}") for name, value in
                     (("num_timesteps", self.num_timesteps), ("batch_size", self.batch_size),
                      ("frames", self.frames)) if value is not None and value < 1]
        return problems

    def chosen_timesteps(self, num_train_timesteps: int) -> list[int]:
        if self.timesteps is not None:
            return [int(t) for t in self.timesteps]
        return spread_timesteps(self.num_timesteps or DEFAULT_NUM_TIMESTEPS, num_train_timesteps)


class DenoisingResponder:
    """Responder: `respond(questions, frames)` -> the letter of each question's option of lowest denoising error.

    `module`: a MojitoModule (module.py imports this file), used in memory: the responder answers with its current
    weights (no copy), on its device and in its UNet's dtype, with the UNet in eval mode for the call (its mode
    restored afterwards)."""

    needs_frames = True

    def __init__(self, module: Any, settings: DenoisingSettings | None = None):
        settings = settings or DenoisingSettings()
        total = int(module.noise_scheduler.config.num_train_timesteps)
        raise_param_problems(settings.problems(total))
        self.module, self.settings = module, settings
        self.timesteps = settings.chosen_timesteps(total)
        self.frames = settings.frames or module.sampling.frames
        self.resolution = module.resolution()
        self._prompt_length = prompt_length(module.text_encoder, module.tokenizer)

    # -- inputs -------------------------------------------------------------------------------------------------------
    def video(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] of any size -> the model's input video [1, F, 3, R, R] in [-1, 1]: F = `frames` frames
        at uniform indices over the clip (first and last included; a shorter clip repeats frames), each resized and
        centre-cropped to the model's resolution R."""
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
            shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
            raise ValueError(f"frames must be a uint8 [T, H, W, 3] array with T >= 1, got {shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}")
        picked = frames[uniform_indices(len(frames), self.frames)]
        return video_pixels(picked, self.resolution).unsqueeze(0)

    def option_texts(self, question: Question) -> list[str]:
        """The texts conditioning the UNet, in option order, fitted to the tokenizer's length (start and end
        tokens included)."""
        tokenizer = self.module.tokenizer
        return fitted_option_texts(question, self.settings.template,
                                   lambda text: len(tokenizer(text).input_ids) <= self._prompt_length)

    def noise(self, latent_shape: Sequence[int]) -> torch.Tensor:
        """The fixed noise [K, C, F, h, w] of the K timesteps for latents of `latent_shape` [C, F, h, w]."""
        generator = torch.Generator().manual_seed(self.settings.noise_seed)
        return torch.randn((len(self.timesteps), *latent_shape), generator=generator)

    # -- errors -------------------------------------------------------------------------------------------------------
    def option_errors(self, questions: Sequence[Question], frames: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Per question, {letter: the option's denoising error, averaged over the (timestep, noise) pairs}."""
        if len(questions) != len(frames):
            raise ValueError(f"{len(questions)} questions but {len(frames)} frame arrays")
        unet = self.module.unet
        was_training = unet.training
        unet.eval()
        try:
            with torch.no_grad():
                return [self._errors(question, array) for question, array in zip(questions, frames)]
        finally:
            unet.train(was_training)

    def _errors(self, question: Question, frames: np.ndarray) -> dict[str, float]:
        module, count = self.module, len(self.timesteps)
        device, dtype = module.device, module.unet.dtype
        generator = torch.Generator().manual_seed(self.settings.noise_seed)  # the VAE's posterior sample
        clean = encode_videos(module.vae, self.video(frames).to(device), generator=generator, dtype=dtype,
                              chunk=module.hparams.vae_chunk)
        clean = clean.expand(count, *clean.shape[1:])
        noise = self.noise(clean.shape[1:]).to(clean)
        timesteps = torch.tensor(self.timesteps, dtype=torch.int64, device=device)
        noisy = noisy_latents(module.noise_scheduler, clean, noise, timesteps)
        target = training_target(module.noise_scheduler, clean, noise, timesteps).float()
        letters = list(question.options)
        context = encode_prompts(module.text_encoder, module.tokenizer, self.option_texts(question)).to(device)
        pairs = [(option, k) for option in range(len(letters)) for k in range(count)]
        errors = torch.empty(len(pairs), dtype=torch.float32)
        for start in range(0, len(pairs), self.settings.batch_size):
            options, steps = (torch.tensor(part, device=device)
                              for part in zip(*pairs[start:start + self.settings.batch_size]))
            prediction = module.predict(noisy[steps], timesteps[steps], context[options],
                                        torch.full((len(steps),), NONE, dtype=torch.int64))
            squared = (prediction.float() - target[steps]) ** 2
            errors[start:start + len(steps)] = squared.flatten(1).mean(1).cpu()
        return dict(zip(letters, errors.view(len(letters), count).mean(1).tolist()))

    def respond(self, questions: Sequence[Question], frames: Sequence[np.ndarray]) -> list[str]:
        """The letter of each question's option of lowest error (the first of equals)."""
        return [min(errors, key=errors.get) for errors in self.option_errors(questions, frames)]

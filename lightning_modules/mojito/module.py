"""Mojito (arXiv 2412.08948): text-to-video diffusion with a trained motion-intensity input and training-free
direction control, on the diffusion core (lightning_modules/diffusion).

The video UNet (backbone.py) denoises latents [B, C, F, h, w]: the VAE encodes each frame (in chunks, frozen, without
gradients; pixel space without a VAE), the CLIP text encoder is frozen. What trains is `trainable`: the intensity
modulator (intensity.py), the motion modules, LoRA adapters, or the whole UNet; everything else is frozen and a
checkpoint holds only what trains (lightning_modules/learned_weights.py). A clip's intensity level comes with the
batch (data.py); with probability `intensity_dropout` it is dropped to NONE, as the prompt is to "" with
`prompt_dropout`, so that sampling can guide over both. Randomness of a step (timesteps, noise, dropout) comes from a
generator seeded by (seed, step, rank): a resumed run draws what the uninterrupted one did. Benchmark questions about
a video (BenchmarkValidation) are answered by `benchmark_responder()`, a diffusion classifier (responder.py) with the
`responder` settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import lightning as L
import torch

from datamodules.errors import ParamError, raise_param_problems
from datamodules.param_types import KwargsOf
from datamodules.transforms import sample_generator
from lightning_modules.diffusion import (adamw_with_warmup, base_config_problems, decode_videos, denoise,
                                         diffusion_loss, drop_prompts, dropout_mask, encode_prompts, encode_videos,
                                         freeze, latent_scale_factor, load_diffusion_parts, noisy_latents,
                                         sample_timesteps, scheduler_from_name, training_target)
from lightning_modules.diffusion.sampling import scheduler_class_problem
from lightning_modules.learned_weights import LearnedWeightsOnly
from lightning_modules.mojito.direction import DirectionControl, direction_control, subject_token_indices
from lightning_modules.mojito.backbone import (DEFAULT_LORA_TARGETS, add_lora, lora_parameter_names,
                                               motion_adapter_problem, temporal_parameter_names, trainable_set_problems,
                                               video_unet, video_unet_forward)
from lightning_modules.mojito.intensity import NONE, IntensityEmbedding, add_time_condition, intensity_guided
from lightning_modules.mojito.responder import DenoisingResponder, DenoisingSettings

@dataclass
class LoraSettings:
    """peft LoRA on the UNet's attention projections whose names end with one of `target_modules`."""

    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def problems(self) -> list[tuple[str, str]]:
        problems = [("rank", f"must be >= 1, got {self.rank}")] if self.rank < 1 else []
        if self.alpha <= 0:
            problems.append(("alpha", f"must be > 0, got {self.alpha}"))
        if not self.target_modules:
            problems.append(("target_modules", "name at least one module suffix, e.g. to_q"))
        return problems


@dataclass
class SamplingSettings:
    """What generation uses when a caller does not say: denoising steps, the prompt's and the intensity's guidance
    scales, the scheduler (None: the training one's class), frames, and the side in pixels (None: the UNet's
    sample_size times the VAE's factor)."""

    steps: int = 25
    guidance: float = 7.5
    intensity_guidance: float = 2.0
    scheduler: str | None = None
    frames: int = 16
    resolution: int | None = None
    negative_prompt: str = ""

    def problems(self) -> list[tuple[str, str]]:
        problems = [(name, f"must be >= {low}, got {value}") for name, value, low in
                    (("steps", self.steps, 1), ("frames", self.frames, 2)) if value < low]
        problems += [(name, f"must be >= 0, got {value}") for name, value in
                     (("guidance", self.guidance), ("intensity_guidance", self.intensity_guidance)) if value < 0]
        if self.resolution is not None and self.resolution < 8:
            problems.append(("resolution", f"must be >= 8 or null, got {self.resolution}"))
        if self.scheduler is not None:
            problem = scheduler_class_problem(self.scheduler)
            if problem:
                problems.append(("scheduler", problem))
        return problems


def _settings(cls: type, values: dict[str, Any] | None, key: str, problems: list[tuple[str, str]]) -> Any:
    try:
        settings = cls(**(values or {}))
    except TypeError as e:
        problems.append((key, str(e)))
        return cls()
    problems += [(f"{key}.{name}", message) for name, message in settings.problems()]
    return settings


class MojitoModule(LearnedWeightsOnly, L.LightningModule):
    def __init__(self, base: Annotated[dict[str, Any], KwargsOf(load_diffusion_parts)],
                 motion_adapter: str | dict[str, Any] | None = None, trainable: list[str] | None = None,
                 intensity_dim: int | None = 256, lora: Annotated[dict[str, Any], KwargsOf(LoraSettings)] | None = None,
                 intensity_dropout: float = 0.1, prompt_dropout: float = 0.1, lr: float = 1e-4,
                 weight_decay: float = 1e-2, warmup_steps: int = 0, snr_gamma: float | None = None,
                 gradient_checkpointing: bool = True, vae_chunk: int = 16,
                 sampling: Annotated[dict[str, Any], KwargsOf(SamplingSettings)] | None = None,
                 direction: Annotated[dict[str, Any], KwargsOf(DirectionControl)] | None = None,
                 responder: Annotated[dict[str, Any], KwargsOf(DenoisingSettings)] | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        trainable = list(trainable if trainable is not None else ["intensity"])
        problems = trainable_set_problems(trainable, lora, intensity_dim)
        problems += self.argument_problems(intensity_dim, intensity_dropout, prompt_dropout, lr, warmup_steps,
                                           snr_gamma, vae_chunk)
        if motion_adapter is not None:
            problem = motion_adapter_problem(motion_adapter)
            if problem:
                problems.append(("motion_adapter", problem))
        self.lora_settings = _settings(LoraSettings, lora, "lora", problems) if lora else None
        self.sampling = _settings(SamplingSettings, sampling, "sampling", problems)
        self.direction = _settings(DirectionControl, direction, "direction", problems)
        self.responder_settings = _settings(DenoisingSettings, responder, "responder", problems)
        raise_param_problems(problems)
        parts = load_diffusion_parts(**base)
        raise_param_problems([(f"responder.{name}", message) for name, message in self.responder_settings.problems(
            int(parts.scheduler.config.num_train_timesteps))])
        try:
            self.unet = video_unet(parts.unet, motion_adapter)
        except ValueError as e:
            raise ParamError([("motion_adapter", str(e))]) from None
        self.vae, self.text_encoder = parts.vae, freeze(parts.text_encoder)
        if self.vae is not None:
            freeze(self.vae)
        self.tokenizer, self.noise_scheduler = parts.tokenizer, parts.scheduler
        self.intensity = None
        if intensity_dim is not None:
            add_time_condition(self.unet, intensity_dim)
            self.intensity = IntensityEmbedding(intensity_dim)
        if self.lora_settings is not None:
            add_lora(self.unet, self.lora_settings.rank, self.lora_settings.alpha, self.lora_settings.target_modules)
        self.trainable_sets = trainable
        self.choose_trainable(trainable)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    @staticmethod
    def argument_problems(intensity_dim: int | None, intensity_dropout: float, prompt_dropout: float, lr: float,
                          warmup_steps: int, snr_gamma: float | None, vae_chunk: int) -> list[tuple[str, str]]:
        problems = []
        if intensity_dim is not None and intensity_dim < 1:
            problems.append(("intensity_dim", f"must be >= 1 or null (no intensity input), got {intensity_dim}"))
        problems += [(name, f"must be in [0, 1], got {p}") for name, p in
                     (("intensity_dropout", intensity_dropout), ("prompt_dropout", prompt_dropout)) if not 0 <= p <= 1]
        if lr <= 0:
            problems.append(("lr", f"must be > 0, got {lr}"))
        if warmup_steps < 0:
            problems.append(("warmup_steps", f"must be >= 0, got {warmup_steps}"))
        if snr_gamma is not None and snr_gamma <= 0:
            problems.append(("snr_gamma", f"must be > 0 or null, got {snr_gamma}"))
        if vae_chunk < 1:
            problems.append(("vae_chunk", f"must be >= 1 frames, got {vae_chunk}"))
        return problems

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """The base model's and the motion adapter's sources, before anything loads."""
        problems = base_config_problems(params, check_files)
        if not check_files:
            return problems
        adapter = params.get("motion_adapter")
        if adapter is not None:
            problem = motion_adapter_problem(adapter)
            if problem:
                problems.append(("motion_adapter", problem))
        return problems

    def choose_trainable(self, sets: Sequence[str]) -> None:
        """Only the named sets train; the UNet follows the trainer's train / eval mode either way (a frozen UNet in
        train mode is what the layers that train see around them)."""
        names: set[str] = set()
        if "unet" in sets:
            names |= {name for name, _ in self.unet.named_parameters() if "lora_" not in name}
        if "motion_modules" in sets:
            names |= set(temporal_parameter_names(self.unet))
        if "lora" in sets:
            names |= set(lora_parameter_names(self.unet))
        if "intensity" in sets:
            names |= {name for name, _ in self.unet.named_parameters() if name.startswith("time_embedding.cond_proj.")}
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(name in names)
        self.unet.train()  # from_pretrained leaves it in eval mode; the trainer's loops switch it from here
        if self.intensity is not None:
            self.intensity.requires_grad_("intensity" in sets)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- training -----------------------------------------------------------------------------------------------------
    def time_condition(self, levels: torch.Tensor) -> torch.Tensor | None:
        """timestep_cond [B, intensity_dim] of the levels, or None when the model has no intensity input."""
        if self.intensity is None:
            return None
        return self.intensity(levels.to(self.device, torch.int64)).to(self.unet.dtype)

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                levels: torch.Tensor) -> torch.Tensor:
        return video_unet_forward(self.unet, latents, timesteps, context, self.time_condition(levels))

    def step_generator(self, stage: str, index: int) -> torch.Generator:
        return sample_generator(self.hparams.seed, index, f"{stage}/rank{self.global_rank}")

    def loss(self, batch: dict[str, Any], generator: torch.Generator, train: bool) -> torch.Tensor:
        hp = self.hparams
        latents = encode_videos(self.vae, batch["video"].to(self.device), generator=generator, dtype=self.unet.dtype,
                                chunk=hp.vae_chunk)
        batch_size = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = sample_timesteps(self.noise_scheduler, batch_size, generator=generator).to(self.device)
        captions = list(batch["caption"])
        levels = torch.as_tensor(batch["level"], dtype=torch.int64)
        if train:
            captions = drop_prompts(captions, dropout_mask(batch_size, hp.prompt_dropout, generator))
            levels = levels.masked_fill(dropout_mask(batch_size, hp.intensity_dropout, generator), NONE)
        context = encode_prompts(self.text_encoder, self.tokenizer, captions).to(self.device)
        prediction = self.predict(noisy_latents(self.noise_scheduler, latents, noise, timesteps), timesteps, context,
                                  levels)
        target = training_target(self.noise_scheduler, latents, noise, timesteps)
        return diffusion_loss(prediction.float(), target.float(), snr_gamma=hp.snr_gamma,
                              scheduler=self.noise_scheduler, timesteps=timesteps)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, self.step_generator("train", self.global_step), train=True)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss = self.loss(batch, self.step_generator("val", batch_idx), train=False)
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["caption"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.trainable_parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # -- sampling -----------------------------------------------------------------------------------------------------
    def resolution(self) -> int:
        """The side of generated frames in pixels."""
        if self.sampling.resolution is not None:
            return self.sampling.resolution
        return int(self.unet.config.sample_size) * latent_scale_factor(self.vae)

    def settings(self, **overrides: Any) -> SamplingSettings:
        """The sampling settings with the given (non-None) values in place of the configured ones, checked."""
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = SamplingSettings(**{**asdict(self.sampling), **given})
        raise_param_problems(settings.problems())
        return settings

    def initial_noise(self, batch: int, frames: int, generator: torch.Generator | None) -> torch.Tensor:
        side = self.resolution() // latent_scale_factor(self.vae)
        shape = (batch, self.unet.config.in_channels, frames, side, side)
        return torch.randn(shape, generator=generator).to(self.device, self.unet.dtype)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, levels: Sequence[int | None] | None = None,
                 boxes: torch.Tensor | None = None, subject: str | None = None,
                 direction: DirectionControl | None = None, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, **overrides: Any) -> torch.Tensor:
        """Videos [B, F, 3, H, W] in [-1, 1] for `prompts`, each at its intensity level (None: no intensity).

        Guidance over the prompt (`guidance`) and, where a level is asked for, over the intensity
        (`intensity_guidance`, intensity.py). With `boxes` [F, 4] (normalised, one per frame) and `subject` (words of
        every prompt), direction control (direction.py) steers the subject into the boxes with `direction` (default:
        the configured one; its mode "none" samples without control). `noise`: the initial latents [B, C, F, h, w]
        (default: drawn from `generator`). `overrides`: SamplingSettings fields for this call."""
        settings = self.settings(**overrides)
        batch = len(prompts)
        levels = list(levels) if levels is not None else [None] * batch
        if len(levels) != batch:
            raise ValueError(f"{len(levels)} levels for {batch} prompts")
        if any(level is not None for level in levels) and self.intensity is None:
            raise ValueError("this model has no intensity input (intensity_dim: null); ask for no level")
        if (boxes is None) != (subject is None):
            raise ValueError("direction control needs both boxes and the subject's words")
        requested = torch.tensor([NONE if level is None else level for level in levels], dtype=torch.int64)
        name = settings.scheduler or type(self.noise_scheduler).__name__
        schedule = scheduler_from_name(name, self.noise_scheduler.config)
        text = encode_prompts(self.text_encoder, self.tokenizer, list(prompts)).to(self.device)
        empty = encode_prompts(self.text_encoder, self.tokenizer, [settings.negative_prompt] * batch).to(self.device)
        none = torch.full((batch,), NONE, dtype=torch.int64)
        use_intensity = bool((requested != NONE).any()) and settings.intensity_guidance > 0
        use_text = settings.guidance != 1
        latents = noise.to(self.device, self.unet.dtype) if noise is not None else \
            self.initial_noise(batch, settings.frames, generator)
        # the branches of one UNet call: [empty prompt] (prompt guidance), text, [text at the level] (intensity)
        branches = ([(empty, none)] if use_text else []) + [(text, none)] + (
            [(text, requested)] if use_intensity else [])

        def model_fn(x: torch.Tensor, t: torch.Tensor, _: Any) -> torch.Tensor:
            timesteps = t.expand(batch).to(self.device)
            predictions = self.predict(torch.cat([x] * len(branches)), timesteps.repeat(len(branches)),
                                       torch.cat([c for c, _ in branches]), torch.cat([lv for _, lv in branches]))
            parts = list(predictions.chunk(len(branches)))
            uncond = parts.pop(0) if use_text else None
            with_text = parts[0]
            with_level = parts[1] if use_intensity else with_text
            if uncond is None:
                return with_text + settings.intensity_guidance * (with_level - with_text)
            return intensity_guided(uncond, with_text, with_level, settings.guidance,
                                    settings.intensity_guidance if use_intensity else 0.0)

        def conditional_fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            """The forward direction control steers: the prompt at the requested level."""
            return self.predict(x, t.expand(x.shape[0]).to(self.device), context, requested)

        control = direction or self.direction
        steering = control.mode != "none" and boxes is not None
        was_training = self.unet.training
        self.unet.eval()
        try:
            with contextlib.ExitStack() as stack:
                hook = None
                if steering:
                    tokens = torch.tensor([subject_token_indices(self.tokenizer, p, subject) for p in prompts])
                    hook = stack.enter_context(direction_control(
                        control, self.unet, tokens=tokens, boxes=boxes, latent_size=tuple(latents.shape[-2:]),
                        model_fn=conditional_fn, context=text, scheduler=schedule,
                        unconditional_first=use_text))
                latents = denoise(model_fn, schedule, latents, num_steps=settings.steps, guidance_scale=1.0,
                                  context=text, step_hook=hook, generator=generator)
        finally:
            self.unet.train(was_training)
        return decode_videos(self.vae, latents, chunk=self.hparams.vae_chunk).clamp(-1, 1)

    @torch.no_grad()
    def generate_videos(self, prompts: Sequence[str], *, levels: Sequence[int | None] | None = None,
                        boxes: Sequence[torch.Tensor | None] | None = None,
                        subjects: Sequence[str | None] | None = None,
                        seed: int = 0, steps: int | None = None, frames: int | None = None) -> torch.Tensor:
        """Videos [B, F, 3, H, W] in [0, 1], every one from the same initial noise (drawn with `seed`), so that videos
        of one call differ only by what was asked: prompt, level (None: none), and direction control where a prompt
        has boxes [F, 4] and a subject (the evaluators' and the demo's entry)."""
        count = len(prompts)
        levels = list(levels) if levels is not None else [None] * count
        boxes = list(boxes) if boxes is not None else [None] * count
        subjects = list(subjects) if subjects is not None else [None] * count
        if not len(levels) == len(boxes) == len(subjects) == count:
            raise ValueError(f"{count} prompts need as many levels, boxes and subjects")
        settings = self.settings(steps=steps, frames=frames)
        noise = self.initial_noise(1, settings.frames, torch.Generator().manual_seed(seed))
        videos: list[torch.Tensor | None] = [None] * count
        plain = [i for i in range(count) if boxes[i] is None or subjects[i] is None]
        groups = [plain] if plain else []
        groups += [[i] for i in range(count) if i not in plain]  # each its own boxes
        for group in groups:
            first = group[0]
            steer = first not in plain
            out = self.generate([prompts[i] for i in group], levels=[levels[i] for i in group],
                                boxes=boxes[first] if steer else None, subject=subjects[first] if steer else None,
                                noise=noise.expand(len(group), *noise.shape[1:]).clone(),
                                generator=torch.Generator().manual_seed(seed), steps=settings.steps,
                                frames=settings.frames)
            for i, video in zip(group, out):
                videos[i] = video
        return ((torch.stack(videos).float() + 1) / 2).clamp(0, 1)

    # -- benchmark questions ------------------------------------------------------------------------------------------
    def benchmark_responder(self) -> DenoisingResponder:
        """Video multiple choice with the current weights (callbacks.benchmark_validation's default responder): the
        option whose text conditions the lowest denoising error of the video wins (responder.py; `responder`'s
        settings)."""
        return DenoisingResponder(self, self.responder_settings)

    @torch.no_grad()
    def video_rows(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Rows of videos [N, F, 3, H, W] in [0, 1] for the video logger (callbacks/video_logger.py): `samples`
        (from the captions at the batch's levels, same noise for all) and `target` (the batch's clips)."""
        levels = [int(level) or None for level in torch.as_tensor(batch["level"]).tolist()]
        if self.intensity is None:
            levels = [None] * len(levels)
        frames = int(batch["video"].shape[1])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        samples = self.generate_videos(list(batch["caption"]), levels=levels, seed=seed, frames=frames)
        return {"samples": samples.cpu(), "target": ((batch["video"].float().cpu() + 1) / 2).clamp(0, 1)}

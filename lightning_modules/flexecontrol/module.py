"""FlexEControl (arXiv 2405.04834) and its baselines in one LightningModule, `variant`:

- `flexecontrol`: a frozen copy of the UNet's encoder + mid whose every Linear/Conv weight takes a Kronecker update
  with factors shared by all layers and conditions (branch.py, kronecker.py); light per-type condition encoders fused
  over the inputs present; zero-convs into the UNet.
- `uni_controlnet`: Uni-ControlNet's local adapter (uni_controlnet.py): a trainable copy, all types stacked in
  channels, feature denormalisation.
- `controlnet`: one diffusers ControlNetModel on one condition type, trained in full (controlnet.py).

The base UNet, VAE and text encoder come from the diffusion core (lightning_modules/diffusion) and are frozen; a
checkpoint holds only the trainable weights. Losses: the diffusion MSE; with `masked_loss_weight`, the same MSE over
the conditions' union region (condition maps' non-zero pixels) added with that weight; with `attention_loss_weight`,
cross-attention supervision: in `attention_layers`, the attention mass of a region word's token that falls outside its
region (data.py's `region_*` fields), `mean(1 - inside / total)`. Randomness of a step (timesteps, noise, dropout)
comes from a generator seeded by (seed, step, rank), so a resumed run draws what the uninterrupted one did.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Sequence

import lightning as L
import torch
import torch.nn.functional as F

from datamodules.errors import ParamError, raise_param_problems
from datamodules.param_types import KwargsOf
from datamodules.transforms import sample_generator
from lightning_modules.diffusion import (adamw_with_warmup, base_config_problems, decode_latents, denoise,
                                         diffusion_loss, drop_prompts, dropout_mask, encode_images, encode_prompts,
                                         freeze, latent_scale_factor, load_diffusion_parts, noisy_latents,
                                         phrase_token_indices, record_cross_attention, sample_timesteps,
                                         scheduler_from_name, training_target)
from lightning_modules.flexecontrol.branch import FlexEControlBranch
from lightning_modules.flexecontrol.conditions import ConditionDropout, Maps, Present, union_region
from lightning_modules.flexecontrol.controlnet import ControlNetBaseline
from lightning_modules.flexecontrol.evaluation import merged_condition
from lightning_modules.flexecontrol.uni_controlnet import UniControlNetAdapter

Variant = Literal["flexecontrol", "uni_controlnet", "controlnet"]
VARIANTS = ("flexecontrol", "uni_controlnet", "controlnet")


class FlexEControlModule(L.LightningModule):
    def __init__(self, base: Annotated[dict[str, Any], KwargsOf(load_diffusion_parts)],
                 variant: Variant = "flexecontrol", condition_channels: dict[str, int] | None = None,
                 kronecker_n: int = 4, kronecker_rank: int = 4, kronecker_alpha: float = 1.0,
                 lr: float = 1e-5, weight_decay: float = 1e-2, warmup_steps: int = 0, prompt_dropout: float = 0.05,
                 condition_dropout: Annotated[dict[str, float], KwargsOf(ConditionDropout)] | None = None,
                 masked_loss_weight: float = 0.0, attention_loss_weight: float = 0.0,
                 attention_layers: list[str] | None = None, snr_gamma: float | None = None,
                 gradient_checkpointing: bool = False, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        channels = dict(condition_channels or {"canny": 1, "depth": 1, "seg": 1})
        problems = self.argument_problems(variant, channels, kronecker_n, kronecker_rank, lr, prompt_dropout,
                                          masked_loss_weight, attention_loss_weight, snr_gamma, warmup_steps)
        try:
            self.condition_dropout = ConditionDropout(**(condition_dropout or {}))
        except ParamError as e:
            problems += e.under("condition_dropout").problems
        raise_param_problems(problems)
        self.condition_channels = channels
        parts = load_diffusion_parts(**base)
        self.unet, self.vae, self.text_encoder = freeze(parts.unet), parts.vae, freeze(parts.text_encoder)
        if self.vae is not None:
            freeze(self.vae)
        self.tokenizer, self.noise_scheduler = parts.tokenizer, parts.scheduler
        self.condition_scale = latent_scale_factor(self.vae)
        self.control = self.build_control(variant, channels)
        if gradient_checkpointing:
            self.control_model().enable_gradient_checkpointing()
        self.attention_layers = list(attention_layers or ["*attn2"])

    @staticmethod
    def argument_problems(variant: str, channels: dict[str, int], n: int, rank: int, lr: float,
                          prompt_dropout: float, masked_loss_weight: float, attention_loss_weight: float,
                          snr_gamma: float | None, warmup_steps: int) -> list[tuple[str, str]]:
        problems = []
        if variant not in VARIANTS:
            problems.append(("variant", f"must be one of {', '.join(VARIANTS)}, got {variant!r}"))
        if not channels:
            problems.append(("condition_channels", "name at least one condition type"))
        if variant == "controlnet" and len(channels) != 1:
            problems.append(("condition_channels", f"the controlnet variant takes exactly one condition type, got "
                                                   f"{len(channels)} ({', '.join(channels)})"))
        problems += [(f"condition_channels.{name}", f"must be 1 or 3, got {c}") for name, c in channels.items()
                     if c not in (1, 3)]
        problems += [(name, f"must be >= 1, got {value}") for name, value in
                     (("kronecker_n", n), ("kronecker_rank", rank)) if value < 1]
        if lr <= 0:
            problems.append(("lr", f"must be > 0, got {lr}"))
        if not 0 <= prompt_dropout <= 1:
            problems.append(("prompt_dropout", f"must be in [0, 1], got {prompt_dropout}"))
        problems += [(name, f"must be >= 0, got {value}") for name, value in
                     (("masked_loss_weight", masked_loss_weight), ("attention_loss_weight", attention_loss_weight),
                      ("warmup_steps", warmup_steps)) if value < 0]
        if snr_gamma is not None and snr_gamma <= 0:
            problems.append(("snr_gamma", f"must be > 0 or null, got {snr_gamma}"))
        return problems

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """The base model's sources (a local path that does not exist, an unknown scheduler), before anything loads."""
        return base_config_problems(params, check_files)

    def build_control(self, variant: str, channels: dict[str, int]) -> torch.nn.Module:
        hp = self.hparams
        if variant == "flexecontrol":
            return FlexEControlBranch.from_unet(self.unet, channels, condition_scale=self.condition_scale,
                                                n=hp.kronecker_n, rank=hp.kronecker_rank, alpha=hp.kronecker_alpha)
        if variant == "uni_controlnet":
            return UniControlNetAdapter.from_unet(self.unet, channels, condition_scale=self.condition_scale)
        (name, c), = channels.items()
        return ControlNetBaseline(self.unet, name, c, self.condition_scale)

    def control_model(self) -> torch.nn.Module:
        """The diffusers model inside the control variant (what gradient checkpointing and export act on)."""
        return self.control.controlnet if isinstance(self.control, ControlNetBaseline) else self.control

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- one forward ------------------------------------------------------------------------------------------------
    @staticmethod
    def condition_inputs(batch: dict[str, Any]) -> tuple[Maps, Present]:
        maps = {key[len("cond."):]: value for key, value in batch.items() if key.startswith("cond.")}
        present = {name: batch[f"present.{name}"] for name in maps}
        return maps, present

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, maps: Maps,
                      present: Present, strengths: dict[str, float] | None = None) -> torch.Tensor:
        down, mid = self.control(noisy, timesteps, context, maps, present, strengths)
        return self.unet(noisy, timesteps, context, down_block_additional_residuals=list(down),
                         mid_block_additional_residual=mid).sample

    def step_generator(self, stage: str, index: int) -> torch.Generator:
        return sample_generator(self.hparams.seed, index, f"{stage}/rank{self.global_rank}")

    def losses(self, batch: dict[str, Any], generator: torch.Generator, train: bool) -> dict[str, torch.Tensor]:
        hp = self.hparams
        pixels = batch["pixel_values"].to(self.device)
        latents = encode_images(self.vae, pixels, generator=generator, dtype=self.unet.dtype)
        batch_size = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = sample_timesteps(self.noise_scheduler, batch_size, generator=generator).to(self.device)
        noisy = noisy_latents(self.noise_scheduler, latents, noise, timesteps)
        target = training_target(self.noise_scheduler, latents, noise, timesteps)
        maps, present = self.condition_inputs(batch)
        captions = list(batch["caption"])
        if train:
            present = self.condition_dropout(present, generator)
            captions = drop_prompts(captions, dropout_mask(batch_size, hp.prompt_dropout, generator))
        context = encode_prompts(self.text_encoder, self.tokenizer, captions).to(self.device)
        want_attention = train and hp.attention_loss_weight > 0
        tokens, valid = self.region_tokens(batch, captions) if want_attention else (None, None)
        if want_attention and bool(valid.any()):
            with record_cross_attention(self.unet, self.attention_layers, tokens) as store:
                prediction = self.predict_noise(noisy, timesteps, context, maps, present)
        else:
            store, prediction = None, self.predict_noise(noisy, timesteps, context, maps, present)
        out = {"diffusion": diffusion_loss(prediction.float(), target.float(), snr_gamma=hp.snr_gamma,
                                           scheduler=self.noise_scheduler, timesteps=timesteps)}
        loss = out["diffusion"]
        if hp.masked_loss_weight > 0 and maps:
            region = union_region(maps, present, tuple(latents.shape[-2:]))
            out["masked"] = diffusion_loss(prediction.float(), target.float(), weights=region)
            loss = loss + hp.masked_loss_weight * out["masked"]
        if store is not None:
            out["attention"] = self.attention_loss(store, batch, valid, tuple(latents.shape[-2:]))
            loss = loss + hp.attention_loss_weight * out["attention"]
        if train and isinstance(self.control, FlexEControlBranch):
            loss = loss + self.idle_encoders_term(present)
        out["loss"] = loss
        return out

    def idle_encoders_term(self, present: Present) -> torch.Tensor:
        """Zero, but touching the encoders of the types no sample of this batch carries (condition dropout makes
        that common): DDP's reducer and ZeRO's gradient partitions expect a gradient for every trainable parameter
        from every rank's backward; those encoders get a zero one instead of none."""
        idle = [name for name in self.control.condition_encoders
                if name not in present or not bool(present[name].any())]
        params = [p for name in idle for p in self.control.condition_encoders[name].parameters()]
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=self.device))

    def region_tokens(self, batch: dict[str, Any], captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample and region: the index of the region word's first token in its (possibly dropped) caption, and
        whether there is one to supervise (a word not in the caption, e.g. a dropped prompt, is not)."""
        masks_valid = batch["region_valid"].bool()
        tokens = torch.zeros(masks_valid.shape, dtype=torch.long)
        valid = torch.zeros(masks_valid.shape, dtype=torch.bool)
        for b, (caption, words) in enumerate(zip(captions, batch["region_words"])):
            for r, word in enumerate(w for w in words.split("|") if w):
                try:
                    at = phrase_token_indices(self.tokenizer, caption, word)[0]
                except ValueError:
                    continue
                if at < self.tokenizer.model_max_length and bool(masks_valid[b, r]):
                    tokens[b, r], valid[b, r] = at, True
        return tokens.to(self.device), valid.to(self.device)

    def attention_loss(self, store: Any, batch: dict[str, Any], valid: torch.Tensor,
                       latent_size: tuple[int, int]) -> torch.Tensor:
        regions = batch["region_masks"].to(self.device).float()  # [B, R, H, W]
        losses = []
        for layer in store.maps:
            maps = store.spatial(layer, latent_size).float()  # [B, R, h, w]
            inside = F.adaptive_max_pool2d(regions, maps.shape[-2:])
            mass = maps.flatten(2).sum(-1).clamp_min(1e-8)
            outside = 1.0 - (maps * inside).flatten(2).sum(-1) / mass
            losses.append(outside[valid])
        return torch.cat(losses).mean()

    # -- Lightning ---------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch, self.step_generator("train", self.global_step), train=True)
        size = batch["pixel_values"].shape[0]
        self.log_dict({f"train/{name}_loss": value.detach() for name, value in out.items() if name != "loss"},
                      batch_size=size)
        self.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=size)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        # fixed noise and timesteps per batch, so validation losses of two checkpoints compare like with like
        out = self.losses(batch, self.step_generator(f"val{dataloader_idx}", batch_idx), train=False)
        self.log("val/loss", out["loss"], sync_dist=True, prog_bar=True, batch_size=batch["pixel_values"].shape[0])

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.trainable_parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # -- sampling ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], maps: Maps, present: Present, *, resolution: int,
                 strengths: dict[str, float] | None = None, steps: int = 30, guidance: float = 7.5,
                 scheduler: str | None = None, generator: torch.Generator | None = None,
                 negative_prompt: str = "", control: bool = True) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] for `prompts` under the given conditions (classifier-free guidance over the
        prompt; the control applies to both halves, as diffusers' ControlNet pipelines do). `control=False`: the base
        model alone, without the control branch (what "no control" is compared against; a branch given no condition
        still adds its residuals)."""
        schedule = (scheduler_from_name(scheduler, self.noise_scheduler.config) if scheduler
                    else scheduler_from_name(type(self.noise_scheduler).__name__, self.noise_scheduler.config))
        batch = len(prompts)
        context = encode_prompts(self.text_encoder, self.tokenizer, list(prompts)).to(self.device)
        uncond = encode_prompts(self.text_encoder, self.tokenizer, [negative_prompt] * batch).to(self.device)
        side = resolution // self.condition_scale
        latents = torch.randn((batch, self.unet.config.in_channels, side, side), generator=generator)
        latents = latents.to(self.device, self.unet.dtype)
        maps = {k: v.to(self.device, self.unet.dtype) for k, v in maps.items()}
        present = {k: v.to(self.device) for k, v in present.items()}

        def model_fn(latent_input: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            repeat = latent_input.shape[0] // batch
            m = {k: v.repeat(repeat, *([1] * (v.dim() - 1))) for k, v in maps.items()}
            p = {k: v.repeat(repeat, 1) for k, v in present.items()}
            timesteps = (t.expand(latent_input.shape[0]) if t.dim() == 0 else t).to(self.device)
            if not control:
                return self.unet(latent_input, timesteps, ctx).sample
            return self.predict_noise(latent_input, timesteps, ctx, m, p, strengths)

        latents = denoise(model_fn, schedule, latents, num_steps=steps, guidance_scale=guidance, context=context,
                          uncond_context=uncond, generator=generator)
        return decode_latents(self.vae, latents).clamp(-1, 1)

    @torch.no_grad()
    def image_rows(self, batch: dict[str, Any], generator: torch.Generator, *, steps: int = 20,
                   guidance: float = 3.0) -> dict[str, torch.Tensor]:
        """Rows of images [N, 3, H, W] in [0, 1] for an image logger (callbacks/image_logger.py): per condition type
        `condition/<type>` (its present inputs merged by maximum, each map scaled so that its brightest pixel is white,
        which makes small label ids visible; a gray map as RGB), then `samples` (generated from the captions under those
        conditions), then `target` (the batch's images)."""
        maps, present = self.condition_inputs(batch)
        rows = {}
        for name, stack in maps.items():
            merged = merged_condition(stack.float(), present[name]).cpu().clamp(0, 1)
            merged = merged / merged.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            rows[f"condition/{name}"] = merged.expand(-1, 3, -1, -1) if merged.shape[1] == 1 else merged
        samples = self.generate(list(batch["caption"]), maps, present, resolution=int(batch["pixel_values"].shape[-1]),
                                steps=steps, guidance=guidance, generator=generator)
        rows["samples"] = ((samples.float().cpu() + 1) / 2).clamp(0, 1)
        rows["target"] = ((batch["pixel_values"].float().cpu() + 1) / 2).clamp(0, 1)
        return rows

    # -- checkpoints: only what is learned ----------------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)
        learned = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in learned}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """The frozen base and the frozen branch copy are not in the checkpoint (they come from `base`); every learned
        weight must be."""
        missing = [k for k in self.state_dict() if k not in state_dict]
        if strict and missing:
            raise KeyError(f"checkpoint lacks learned weights: {', '.join(missing[:5])}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return super().load_state_dict(state_dict, strict=False, assign=assign)

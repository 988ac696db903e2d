"""FlexEControl against Uni-ControlNet (and ControlNet): trainable parameters, training memory and time per training
step, side by side in one run (DESIGN.md, "FlexEControl" and "Performance").

Run from the repository root:
  .venv/bin/python bench/flexecontrol.py     # ~13 minutes on 2 CPU cores; writes bench/results/flexecontrol.json
  .venv/bin/python bench/flexecontrol.py --quick --out /tmp/flexecontrol_quick.json   # tiny sizes

1. Trainable parameters at SD-1.5 shapes: the UNet built from SD-1.5's config with random weights (no VAE or text
   encoder needed), then each control model from it, one at a time: FlexEControlBranch.from_unet,
   UniControlNetAdapter.from_unet and the module's ControlNet baseline (diffusers' ControlNetModel.from_unet, a
   3-channel condition), with 7 condition types of 3 channels (Uni-ControlNet's setting) and with 3.
2. A training step at a size this machine runs (SMALL_UNET; --quick: QUICK_UNET), for flexecontrol and uni_controlnet
   (both with the 7 types) with 1 and with 3 conditions present: FlexEControlModule.predict_noise (the control model,
   then the frozen UNet with its residuals), the module's diffusion loss, backward, and an AdamW step on the module's
   trainable parameters (its configure_optimizers). Random latents and a prompt encoding made once stand in for the
   frozen VAE and text encoder, whose cost is the same on both sides. Gradient checkpointing is off on both sides,
   and with `--checkpointing both` (the default) also on, as a second figure (the control model's, as the module's
   `gradient_checkpointing` sets it).
3. Memory: each configuration runs in a process of its own, `--rounds` times, the configurations interleaved and their
   order rotated per round: `--warmup` untimed steps, then `--steps` timed ones. The peak RSS is reset once the
   models, optimizer and prompt encoding exist (/proc/self/clear_refs 5, so that building's transient peak does not
   hide the step's); `train_memory_mb` = ru_maxrss over the steps minus the RSS then, `peak_rss_mb` = that ru_maxrss.
   The memory ratio with a target uses train_memory_mb (MEMORY_RATIO_BASIS); the peak_rss ratio is written beside it.
4. Time: one more process per setting holds both variants, which step in turn on the same batches
   (STEP_TIME_RATIO_BASIS): `--warmup` untimed steps each, then `--steps` timed ones each, each step split into
   PHASES. The memory processes' own step times and their ratio are written beside it.
Figures are medians: times over every timed step, memory over the rounds; the raw samples beside them
(bench/result_file.py writes the file). Torch runs `--threads` threads (default 1) in every measurement.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
from diffusers import UNet2DConditionModel

from bench import measure
from bench.measure import fingerprint, max_rss_mb, reset_peak_rss, rotated, rss_mb
from bench.result_file import MIN_SAMPLES, RESULTS, target_met, write_result
from lightning_modules.clip_pretrain.random_clip import WORDS
from lightning_modules.clip_pretrain.tokenizer import build_tokenizer, save_tokenizer
from lightning_modules.diffusion import (
    diffusion_loss,
    encode_prompts,
    noisy_latents,
    sample_timesteps,
    training_target,
)
from lightning_modules.flexecontrol.branch import FlexEControlBranch
from lightning_modules.flexecontrol.controlnet import ControlNetBaseline
from lightning_modules.flexecontrol.module import FlexEControlModule
from lightning_modules.flexecontrol.uni_controlnet import UniControlNetAdapter

# Uni-ControlNet's seven local conditions, in its stacking order; THREE_TYPES: the 3-type models of the parameter
# counts, and in the training step (whose models have all seven) the first 1 or all 3 of them are present.
TYPES = ("canny", "mlsd", "hed", "sketch", "openpose", "depth", "seg")
THREE_TYPES = ("canny", "depth", "seg")
CONDITION_CHANNELS = 3
CONDITION_SCALE = 8  # SD's VAE: condition maps are 8 times the latents' size
PROMPT_TOKENS = 77  # SD-1.x's CLIP prompt length
VARIANTS = ("flexecontrol", "uni_controlnet")
PRESENT = (1, 3)
PHASES = ("control_forward", "unet_forward", "unet_backward", "control_backward", "optimizer")
PAPER = {"params": 0.59, "memory": 0.70, "step_time": 2.1 / 5.7}  # FlexEControl / Uni-ControlNet, arXiv 2405.04834
TARGETS = {"flexecontrol_over_uni_controlnet_params": "<= 0.4",
           **{f"flexecontrol_over_uni_controlnet_memory_{k}cond": "<= 0.6" for k in PRESENT},
           **{f"flexecontrol_over_uni_controlnet_step_time_{k}cond": "<= 0.5" for k in PRESENT}}
MEMORY_RATIO_BASIS = (
    "train_memory_mb (peak RSS over the training steps minus the RSS once models, optimizer and prompt encoding "
    "exist): what a training step adds -- activations kept for backward (FlexEControl's adapted layers keep their "
    "inputs and small factors: their updates are applied factored, no W + dW is formed), gradients, AdamW's moments. "
    "The RSS once built holds the Python process and its libraries (neither method's) "
    "and weights of nearly the same size on both sides (Uni-ControlNet's trainable copy, FlexEControl's frozen one), "
    "which at this small size would pull the total-peak ratio toward 1; peak_rss_mb and its ratio are written beside")
STEP_TIME_RATIO_BASIS = (
    "step_ms: one process per setting holding both variants, which step in turn on the same batches (the order "
    "swapped every step), so that the machine's changing load (other jobs share its 2 cores) falls on both alike; "
    "own_process_step_ms, the same steps timed in the per-configuration memory processes, which ran minutes apart, "
    "and their ratio are written beside it")

SD15_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
             "layers_per_block": 2, "cross_attention_dim": 768, "attention_head_dim": 8,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
# SD-1.5's layout at a fifth of its widths and three resolution levels; 32 px latents (256 px condition maps)
SMALL_UNET = {"sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": [64, 128, 256],
              "layers_per_block": 2, "cross_attention_dim": 256, "attention_head_dim": 8,
              "down_block_types": ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
              "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2}
QUICK_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64],
              "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8,
              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
SIZES = {  # params: the UNet the parameter counts are taken at; train: the training-step setting
    "full": {"params_unet": SD15_UNET, "train": {"unet": SMALL_UNET, "latent_size": 32, "batch": 2}},
    "quick": {"params_unet": QUICK_UNET, "train": {"unet": QUICK_UNET, "latent_size": 8, "batch": 2}},
}
# SD-1.x's noise schedule (the module's scheduler); the VAE only sets the module's condition scale: never run here
SD_SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
                "steps_offset": 1}
SCALE_ONLY_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8, 8, 8],
                  "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                  "layers_per_block": 1, "norm_num_groups": 8}


# -- measurements, each run by a worker (a process of its own unless inline) -------------------------------------------
def trainable_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def condition_channels(types: Sequence[str]) -> dict[str, int]:
    return {name: CONDITION_CHANNELS for name in types}


def count_parameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Trainable parameters of each control model for a UNet built from `spec["unet"]` (random weights), by part.
    Models are built one at a time and freed before the next (SD-1.5-sized ones take GBs)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(dict(spec["unet"]))
    out: dict[str, Any] = {"unet_params": sum(p.numel() for p in unet.parameters())}
    for label, types in (("7types", TYPES), ("3types", THREE_TYPES)):
        branch = FlexEControlBranch.from_unet(unet, condition_channels(types), condition_scale=CONDITION_SCALE,
                                              n=spec["n"], rank=spec["rank"])
        out[f"flexecontrol_{label}"] = {"total": trainable_count(branch), **branch.trainable_parameter_counts()}
        # the frozen copy, whose weights FlexEControl back-propagates through without their gradients
        out[f"flexecontrol_{label}_frozen"] = sum(p.numel() for p in branch.parameters() if not p.requires_grad)
        del branch
        gc.collect()
        adapter = UniControlNetAdapter.from_unet(unet, condition_channels(types), condition_scale=CONDITION_SCALE)
        parts = adapter.trainable_parameter_counts()
        out[f"uni_controlnet_{label}"] = {**parts, "total": trainable_count(adapter), "parts_total": parts["total"]}
        del adapter
        gc.collect()
    controlnet = ControlNetBaseline(unet, THREE_TYPES[0], CONDITION_CHANNELS, CONDITION_SCALE)
    out["controlnet"] = {"total": trainable_count(controlnet)}
    return out


def build_module(spec: Mapping[str, Any], tokenizer_dir: Path) -> FlexEControlModule:
    unet = spec["size"]["unet"]
    tokenizer = build_tokenizer(WORDS, model_max_length=PROMPT_TOKENS)
    save_tokenizer(tokenizer, tokenizer_dir)
    text_width = unet["cross_attention_dim"]
    text = {"vocab_size": len(tokenizer), "hidden_size": text_width, "intermediate_size": 2 * text_width,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": PROMPT_TOKENS,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(spec["seed"])  # the same frozen UNet (built first) on every side
    return FlexEControlModule(
        base={"unet": {"config": dict(unet)}, "vae": {"config": SCALE_ONLY_VAE}, "text_encoder": {"config": text},
              "tokenizer": str(tokenizer_dir), "scheduler": "DDPMScheduler", "scheduler_config": SD_SCHEDULER},
        variant=spec["variant"], condition_channels=condition_channels(TYPES), kronecker_n=spec["n"],
        kronecker_rank=spec["rank"], gradient_checkpointing=spec["gradient_checkpointing"], seed=spec["seed"])


def make_batch(module: FlexEControlModule, spec: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """Latents, noise, timesteps, and every type's map, the first `present` of THREE_TYPES present (as ControlData
    gives them: all types' maps, a present mask each)."""
    size = spec["size"]
    batch, side = size["batch"], size["latent_size"]
    maps_side = side * module.condition_scale
    latents = torch.randn(batch, size["unet"]["in_channels"], side, side, generator=generator)
    return {"latents": latents, "noise": torch.randn(latents.shape, generator=generator),
            "timesteps": sample_timesteps(module.noise_scheduler, batch, generator=generator),
            "maps": {name: (torch.rand(batch, 1, CONDITION_CHANNELS, maps_side, maps_side, generator=generator)
                            > 0.8).float() for name in TYPES},
            "present": {name: torch.full((batch, 1), name in THREE_TYPES[:spec["present"]]) for name in TYPES}}


class TrainingStep:
    """One configuration's module (build_module), its AdamW (the module's configure_optimizers) and a prompt encoding
    made once; calling it on a batch (make_batch) takes one training step and returns (loss, {"step": ms, and each of
    PHASES: ms}). `checks()` says what it verified about its steps so far."""

    def __init__(self, spec: Mapping[str, Any]):
        self.spec = spec
        with tempfile.TemporaryDirectory() as tmp:
            self.module = module = build_module(spec, Path(tmp) / "tokenizer")
        module.train()  # the frozen parts stay in eval mode (diffusion.freeze)
        self.optimizer = module.configure_optimizers()
        captions = [" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(8)) for i in range(spec["size"]["batch"])]
        with torch.no_grad():
            self.context = encode_prompts(module.text_encoder, module.tokenizer, captions)
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        self.frozen = [p for p in module.parameters() if not p.requires_grad]
        self.in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        self.frozen_before, self.trainable_before = fingerprint(self.frozen), fingerprint(self.trainable)
        self.unet_fingerprint = fingerprint(module.unet.parameters())
        self.losses: list[float] = []
        self.stamps: dict[str, float] = {}
        self.hooks = [module.unet.register_forward_pre_hook(self.unet_starts),
                      module.control.register_forward_hook(self.on_control_output)]

    def unet_starts(self, *_) -> None:
        self.stamps["unet_start"] = time.perf_counter()

    def on_control_output(self, _module, _args, output) -> None:
        # the middle residual is the UNet's first use of the control's outputs in its up path, so its gradient
        # arrives when the UNet's part of the backward pass is done (autograd runs later-recorded nodes first)
        mid = output[1]
        if mid.requires_grad:
            mid.register_hook(lambda grad: self.stamps.__setitem__("mid_grad", time.perf_counter()))

    def __call__(self, batch: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        module, scheduler, stamps = self.module, self.module.noise_scheduler, self.stamps
        stamps.clear()
        start = time.perf_counter()
        noisy = noisy_latents(scheduler, batch["latents"], batch["noise"], batch["timesteps"])
        target = training_target(scheduler, batch["latents"], batch["noise"], batch["timesteps"])
        prediction = module.predict_noise(noisy, batch["timesteps"], self.context, batch["maps"], batch["present"])
        loss = diffusion_loss(prediction.float(), target.float())
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        if "mid_grad" not in stamps:
            raise RuntimeError("the control's middle residual got no gradient: the backward pass did not reach it")
        unet_start, mid_grad = stamps["unet_start"], stamps["mid_grad"]
        phases = {"control_forward": unet_start - start, "unet_forward": forward_done - unet_start,
                  "unet_backward": mid_grad - forward_done, "control_backward": backward_done - mid_grad,
                  "optimizer": done - backward_done}
        self.losses.append(float(loss.detach()))
        return self.losses[-1], {"step": (done - start) * 1000, **{k: v * 1000 for k, v in phases.items()}}

    def checks(self) -> dict[str, bool]:
        module = self.module
        return {
            "losses_finite": bool(self.losses) and all(math.isfinite(v) for v in self.losses),
            "optimizer_holds_exactly_the_trainable_parameters": self.in_optimizer == {id(p) for p in self.trainable},
            "frozen_parameters_unchanged": fingerprint(self.frozen) == self.frozen_before,
            "trainable_parameters_changed": fingerprint(self.trainable) != self.trainable_before,
            "control_gradient_checkpointing_as_asked": (module.control_model().is_gradient_checkpointing
                                                        == self.spec["gradient_checkpointing"]),
            "unet_gradient_checkpointing_off": not module.unet.is_gradient_checkpointing,
        }

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def measure_training(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One configuration in a process of its own: `warmup` untimed and `steps` timed training steps; per timed step
    the time and its phases (ms), and the memory figures (module docstring)."""
    torch.set_num_threads(spec["threads"])
    rss_imports = rss_mb()
    step = TrainingStep(spec)
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    gc.collect()
    build_peak = max_rss_mb()
    rss_built = rss_mb()
    peak_reset = reset_peak_rss()
    timed = []
    for index in range(spec["warmup"] + spec["steps"]):
        batch = make_batch(step.module, spec, generator)
        _, times = step(batch)
        if index >= spec["warmup"]:
            timed.append(times)
        del batch
    train_peak = max_rss_mb()
    step.close()
    return {
        "variant": spec["variant"], "present": spec["present"],
        "gradient_checkpointing": spec["gradient_checkpointing"], **measure.timing_record(timed, PHASES),
        "rss_after_imports_mb": rss_imports, "build_peak_mb": build_peak, "rss_after_build_mb": rss_built,
        "peak_rss_mb": train_peak, "train_memory_mb": train_peak - rss_built, "peak_reset": peak_reset,
        "trainable_params": sum(p.numel() for p in step.trainable),
        "frozen_params": sum(p.numel() for p in step.frozen), "checks": step.checks(),
        "unet_fingerprint": step.unet_fingerprint,
    }


def measure_alternating(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Both variants in one process, stepping in turn on the same batches (the order swapped every step), so that a
    change in the machine's load falls on both alike: `warmup` untimed steps each, then `steps` timed ones each."""
    torch.set_num_threads(spec["threads"])
    steps = {variant: TrainingStep({**spec, "variant": variant}) for variant in VARIANTS}
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    timed: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for index in range(spec["warmup"] + spec["steps"]):
        batch = make_batch(steps[VARIANTS[0]].module, spec, generator)
        for variant in (VARIANTS if index % 2 == 0 else VARIANTS[::-1]):
            _, times = steps[variant](batch)
            if index >= spec["warmup"]:
                timed[variant].append(times)
    for step in steps.values():
        step.close()
    return {"present": spec["present"], "gradient_checkpointing": spec["gradient_checkpointing"],
            "variants": {variant: {**measure.timing_record(timed[variant], PHASES), "checks": steps[variant].checks(),
                                   "unet_fingerprint": steps[variant].unet_fingerprint} for variant in VARIANTS}}


WORKERS = {"params": count_parameters, "train": measure_training, "alternating": measure_alternating}


def run_job(kind: str, spec: Mapping[str, Any], *, inline: bool) -> dict[str, Any]:
    """WORKERS[kind](spec), in this process (inline) or in a process of its own (bench/measure.py's run_job)."""
    return measure.run_job(__name__ if inline else "bench.flexecontrol", kind, spec, inline=inline,
                           what=f"{kind} {describe(spec)}")


def describe(spec: Mapping[str, Any]) -> str:
    if "present" not in spec:
        return "parameter counts"
    setting = f"{spec['present']}cond{' checkpointing' if spec['gradient_checkpointing'] else ''}"
    return f"{spec['variant']} {setting}" if "variant" in spec else f"{' and '.join(VARIANTS)} alternating {setting}"


# -- one run: every job, then the result file --------------------------------------------------------------------------
def config_key(variant: str, present: int, checkpointing: bool) -> str:
    return f"{variant}_{present}cond{'_checkpointing' if checkpointing else ''}"


def settings_of(args: argparse.Namespace) -> list[tuple[int, bool]]:
    """(conditions present, gradient checkpointing) of every measured setting."""
    checkpointing = (False, True) if args.checkpointing == "both" else (False,)
    return [(present, gc_on) for gc_on in checkpointing for present in PRESENT]


def train_specs(args: argparse.Namespace, size: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One spec per configuration (variant, conditions present, checkpointing), each measured in its own process."""
    return [{"variant": variant, **alternating_spec(args, size, present, gc_on)}
            for present, gc_on in settings_of(args) for variant in VARIANTS]


def alternating_spec(args: argparse.Namespace, size: Mapping[str, Any], present: int, gc_on: bool) -> dict[str, Any]:
    return {"present": present, "gradient_checkpointing": gc_on, "size": dict(size), "warmup": args.warmup,
            "steps": args.steps, "threads": args.threads, "n": args.n, "rank": args.rank, "seed": 0}


def flexecontrol_pairs(keys) -> list[tuple[str, str, str]]:
    """(flexecontrol key, uni_controlnet key, ratio suffix) for every setting both variants were measured in."""
    pairs = []
    for key in keys:
        if key.startswith("flexecontrol_") and f"uni_controlnet_{key[len('flexecontrol_'):]}" in keys:
            rest = key[len("flexecontrol_"):]  # "1cond" or "1cond_checkpointing"
            pairs.append((key, f"uni_controlnet_{rest}", rest))
    return pairs


def aggregate(params: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
              alternating: Sequence[Mapping[str, Any]], *, sd15_counts: bool) -> dict[str, Any]:
    """Figures, samples, ratios and checks from the parameter counts, every own-process run's record and every
    alternating run's record; `sd15_counts`: the counts were taken at SD-1.5 shapes (then Uni-ControlNet's is checked
    against the published ~412M)."""
    figures: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    for label in ("7types", "3types"):
        for variant in VARIANTS:
            counts = params[f"{variant}_{label}"]
            figures[f"{variant}_{label}_trainable_params"] = counts["total"]
            if variant == "flexecontrol":
                figures[f"flexecontrol_{label}_frozen_params"] = params[f"flexecontrol_{label}_frozen"]
            for part, value in counts.items():
                if part not in ("total", "parts_total"):
                    figures[f"{variant}_{label}_trainable_params_{part}"] = value
    figures["controlnet_trainable_params"] = params["controlnet"]["total"]
    figures["three_controlnets_trainable_params"] = 3 * params["controlnet"]["total"]
    ratios = {
        "flexecontrol_over_uni_controlnet_params": figures["flexecontrol_7types_trainable_params"]
        / figures["uni_controlnet_7types_trainable_params"],
        "flexecontrol_over_uni_controlnet_params_3types": figures["flexecontrol_3types_trainable_params"]
        / figures["uni_controlnet_3types_trainable_params"],
        "flexecontrol_over_3_controlnets_params": figures["flexecontrol_3types_trainable_params"]
        / figures["three_controlnets_trainable_params"],
    }

    own: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        own.setdefault(config_key(run["variant"], run["present"], run["gradient_checkpointing"]), []).append(run)
    for key, key_runs in own.items():
        samples[f"{key}_own_process_step_ms"] = [value for run in key_runs for value in run["step_ms"]]
        for series in ("train_memory_mb", "peak_rss_mb", "rss_after_build_mb"):
            samples[f"{key}_{series}"] = [run[series] for run in key_runs]
        figures[f"{key}_trainable_params"] = key_runs[0]["trainable_params"]
    timed: dict[str, list[Mapping[str, Any]]] = {}
    for run in alternating:
        for variant, record in run["variants"].items():
            timed.setdefault(config_key(variant, run["present"], run["gradient_checkpointing"]), []).append(record)
    for key, records in timed.items():
        for series in ("step_ms", *(f"{phase}_ms" for phase in PHASES)):
            samples[f"{key}_{series}"] = [value for record in records for value in record[series]]
    figures.update({name: statistics.median(values) for name, values in samples.items()})

    for key, other, rest in flexecontrol_pairs(own):
        for ratio, series in ((f"memory_{rest}", "train_memory_mb"), (f"peak_rss_{rest}", "peak_rss_mb"),
                              (f"step_time_{rest}_own_processes", "own_process_step_ms")):
            ours, theirs = figures[f"{key}_{series}"], figures[f"{other}_{series}"]
            if ours > 0 and theirs > 0:  # a step can add less than the allocator's granularity at tiny sizes
                ratios[f"flexecontrol_over_uni_controlnet_{ratio}"] = ours / theirs
    for key, other, rest in flexecontrol_pairs(timed):
        ratios[f"flexecontrol_over_uni_controlnet_step_time_{rest}"] = (
            figures[f"{key}_step_ms"] / figures[f"{other}_step_ms"])
        control = [sum(figures[f"{k}_{p}_ms"] for p in ("control_forward", "control_backward", "optimizer"))
                   for k in (key, other)]
        ratios[f"flexecontrol_over_uni_controlnet_control_time_{rest}"] = control[0] / control[1]

    records = [*runs, *(record for run in alternating for record in run["variants"].values())]
    run_checks = ({name: all(record["checks"][name] for record in records) for name in records[0]["checks"]}
                  if records else {})
    uni_7 = params["uni_controlnet_7types"]
    checks = {
        **run_checks,
        "same_frozen_unet_on_every_side": len({record["unet_fingerprint"] for record in records}) == 1,
        "peak_rss_reset_after_build": all(run["peak_reset"] for run in runs),
        "uni_controlnet_parts_sum_to_its_trainable_count": all(
            params[f"uni_controlnet_{label}"]["parts_total"] == params[f"uni_controlnet_{label}"]["total"]
            for label in ("7types", "3types")),
        "flexecontrol_groups_sum_to_its_trainable_count": all(
            sum(v for k, v in params[f"flexecontrol_{label}"].items() if k != "total")
            == params[f"flexecontrol_{label}"]["total"] for label in ("7types", "3types")),
    }
    if sd15_counts:
        checks["uni_controlnet_7types_params_near_412M_at_sd15"] = bool(abs(uni_7["total"] - 412e6) / 412e6 < 0.01)
    return {"figures": figures, "samples": samples, "ratios": ratios, "checks": checks}


def notes(result: Mapping[str, Any], quick: bool) -> str:
    """What the figures say: every target met or missed, and for the training ratios where the time and memory go."""
    figures, ratios = result["figures"], result["ratios"]
    lines = []
    if quick:
        lines.append("--quick: tiny sizes for the bench's test; parameter counts at a tiny UNet, not SD-1.5.")
    for name, target in TARGETS.items():
        if name not in ratios:
            lines.append(f"{name} (target {target}): not measured -- a training step added no memory that the "
                         f"process's RSS shows (tiny sizes only).")
            continue
        met = target_met(ratios[name], target)
        lines.append(f"{name} = {ratios[name]:.3g} (target {target}): {'met' if met else 'MISSED'}.")
    for present in PRESENT:
        parts = []
        for variant in VARIANTS:
            key = f"{variant}_{present}cond"
            if f"{key}_step_ms" not in figures:
                continue
            phase = {p: figures[f"{key}_{p}_ms"] for p in PHASES}
            unet = phase["unet_forward"] + phase["unet_backward"]
            parts.append(f"{variant} {figures[f'{key}_step_ms']:.0f} ms = control forward "
                         f"{phase['control_forward']:.0f} + UNet forward {phase['unet_forward']:.0f} + UNet backward "
                         f"{phase['unet_backward']:.0f} + control backward {phase['control_backward']:.0f} + AdamW "
                         f"{phase['optimizer']:.0f} (the frozen UNet, the same on both sides: "
                         f"{unet / figures[f'{key}_step_ms']:.0%})")
        flex_key, uni_key = f"flexecontrol_{present}cond", f"uni_controlnet_{present}cond"
        if len(parts) == 2:
            unet = [figures[f"{key}_unet_forward_ms"] + figures[f"{key}_unet_backward_ms"] for key in (flex_key, uni_key)]
            lines.append(
                f"{present} condition(s), medians per step, the two stepping in turn in one process: " + "; ".join(parts)
                + f". The frozen UNet's forward and backward are the same work on both sides ({unet[0]:.0f} vs "
                f"{unet[1]:.0f} ms: their {abs(unet[0] / unet[1] - 1):.0%} difference shows the measurement's noise); "
                f"without them flexecontrol's part of a step is "
                f"{ratios[f'flexecontrol_over_uni_controlnet_control_time_{present}cond']:.2f}x Uni-ControlNet's. "
                f"The frozen UNet alone is {unet[0] / figures[f'{uni_key}_step_ms']:.2f} of Uni-ControlNet's step, so "
                f"at this size the step-time ratio cannot fall below that, whatever the control costs.")
        if f"{flex_key}_train_memory_mb" in figures and f"{uni_key}_train_memory_mb" in figures:
            uni_params = figures[f"{uni_key}_trainable_params"]
            lines.append(
                f"{present} condition(s), training memory: flexecontrol {figures[f'{flex_key}_train_memory_mb']:.0f} "
                f"MiB, uni_controlnet {figures[f'{uni_key}_train_memory_mb']:.0f} MiB, of which Uni-ControlNet's "
                f"gradients and AdamW moments of its {uni_params / 1e6:.1f}M trainable parameters are "
                f"{3 * 4 * uni_params / 2 ** 20:.0f} MiB (fp32, counted); flexecontrol trains "
                f"{figures[f'{flex_key}_trainable_params'] / 1e6:.2f}M and forms no W + dW (its updates are applied "
                f"factored), but back-propagates through the whole frozen copy as Uni-ControlNet does through its "
                f"trainable one, whose activations both keep.")
    per_condition = []
    for variant in VARIANTS:
        keys = [f"{variant}_{present}cond" for present in PRESENT]
        if all(f"{key}_control_forward_ms" in figures and f"{key}_train_memory_mb" in figures for key in keys):
            forward = " -> ".join(f"{figures[f'{key}_control_forward_ms']:.0f}" for key in keys)
            memory = " -> ".join(f"{figures[f'{key}_train_memory_mb']:.0f}" for key in keys)
            per_condition.append(f"{variant} control forward {forward} ms, training memory {memory} MiB")
    if per_condition:
        lines.append(
            f"From {' to '.join(map(str, PRESENT))} conditions present: " + "; ".join(per_condition) + ". FlexEControl "
            "runs each present condition's own encoder (space-to-depth first, its convs at the latents' size); "
            "Uni-ControlNet stacks all its types in channels and costs the same whatever is present.")
    for label, types in (("7types", len(TYPES)), ("3types", len(THREE_TYPES))):
        flex = {part: figures[f"flexecontrol_{label}_trainable_params_{part}"]
                for part in ("zero_convolutions", "condition_encoders", "kronecker_layers", "kronecker_shared")}
        lines.append(
            f"Parameters, {types} types: flexecontrol {figures[f'flexecontrol_{label}_trainable_params'] / 1e6:.2f}M "
            f"(zero-convolutions {flex['zero_convolutions'] / 1e6:.2f}M, condition encoders "
            f"{flex['condition_encoders'] / 1e6:.2f}M, Kronecker u/v {flex['kronecker_layers'] / 1e6:.2f}M, shared H "
            f"{flex['kronecker_shared']}), uni_controlnet {figures[f'uni_controlnet_{label}_trainable_params'] / 1e6:.1f}M"
            f" (its trainable copy {figures[f'uni_controlnet_{label}_trainable_params_copy'] / 1e6:.1f}M).")
    frozen, uni_7 = figures["flexecontrol_7types_frozen_params"], figures["uni_controlnet_7types_trainable_params"]
    flex_7 = figures["flexecontrol_7types_trainable_params"]
    lines.append(
        f"Counted, not measured, at the parameter counts' shapes{' (tiny here)' if quick else ' (SD-1.5)'}, 7 types, "
        f"fp32: Uni-ControlNet's gradients and AdamW moments take {3 * 4 * uni_7 / 2 ** 30:.2f} GiB, FlexEControl's "
        f"{3 * 4 * flex_7 / 2 ** 30:.2f} GiB; forming W + dW for its {frozen / 1e6:.1f}M frozen copy weights, which "
        f"its factored updates never do, would keep {4 * frozen / 2 ** 30:.2f} GiB more for backward; activations "
        f"come on top on both sides.")
    if not all(result["checks"].values()):
        failed = [name for name, ok in result["checks"].items() if not ok]
        lines.append(f"Checks that failed: {', '.join(failed)}.")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the bench's test (needs --out)")
    parser.add_argument("--out", type=Path, help="result file to write (default bench/results/flexecontrol.json; "
                                                 "with --quick required, outside bench/results)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per configuration, interleaved")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every measurement")
    parser.add_argument("--n", type=int, default=4, help="FlexEControl's Kronecker n")
    parser.add_argument("--rank", type=int, default=4, help="FlexEControl's Kronecker rank")
    parser.add_argument("--checkpointing", choices=("off", "both"), default="both",
                        help="gradient checkpointing of the control model: off only, or off and on")
    parser.add_argument("--inline", action="store_true",
                        help="with --quick: run every measurement in this process (memory figures not separate)")
    args = parser.parse_args(argv)
    problems = [f"--{name} must be >= {low}, got {getattr(args, name)}"
                for name, low in (("rounds", MIN_SAMPLES), ("warmup", 0), ("steps", MIN_SAMPLES if args.quick else 5),
                                  ("threads", 1), ("n", 1), ("rank", 1)) if getattr(args, name) < low]
    problems += measure.output_problems(args, RESULTS, REPO)
    if problems:
        parser.error("; ".join(problems))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()
    params = run_job("params", {"unet": size["params_unet"], "n": args.n, "rank": args.rank}, inline=args.inline)
    print(f"parameter counts ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    specs = train_specs(args, size["train"])
    runs = []
    for round_index in range(args.rounds):
        for spec in rotated(specs, round_index):
            run = run_job("train", spec, inline=args.inline)
            runs.append(run)
            print(f"round {round_index + 1}/{args.rounds} {describe(spec)}: "
                  f"{statistics.median(run['step_ms']):.0f} ms/step, training memory {run['train_memory_mb']:.0f} MiB "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    alternating = []
    for present, gc_on in settings_of(args):
        spec = alternating_spec(args, size["train"], present, gc_on)
        run = run_job("alternating", spec, inline=args.inline)
        alternating.append(run)
        times = ", ".join(f"{variant} {statistics.median(record['step_ms']):.0f}" for variant, record in
                          run["variants"].items())
        print(f"{describe(spec)}: {times} ms/step ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)
    result = aggregate(params, runs, alternating, sd15_counts=size["params_unet"] == SD15_UNET)
    out = args.out if args.out is not None else RESULTS / "flexecontrol.json"
    argv = sys.argv if argv is None else [str(Path(__file__)), *argv]
    write_result(
        out.stem, directory=out.parent, argv=argv, libraries=("diffusers",),
        figures=result["figures"], ratios=result["ratios"],
        targets={name: target for name, target in TARGETS.items() if name in result["ratios"]},
        samples=result["samples"], checks=result["checks"], notes=notes(result, args.quick),
        settings={
            "size": "quick" if args.quick else "full",
            "params_unet": size["params_unet"], "params_models": (
                "FlexEControlBranch.from_unet(unet, types, condition_scale=8, n, rank); "
                "UniControlNetAdapter.from_unet(unet, types, condition_scale=8); ControlNetBaseline (diffusers "
                "ControlNetModel.from_unet, 3-channel condition), one per condition for three_controlnets"),
            "types_7": list(TYPES), "types_3": list(THREE_TYPES), "condition_channels": CONDITION_CHANNELS,
            "condition_scale": CONDITION_SCALE, "kronecker_n": args.n, "kronecker_rank": args.rank,
            "train_unet": size["train"]["unet"], "latent_size": size["train"]["latent_size"],
            "condition_map_size": size["train"]["latent_size"] * CONDITION_SCALE, "batch": size["train"]["batch"],
            "prompt_tokens": PROMPT_TOKENS, "train_types": list(TYPES),
            "present": {str(k): list(THREE_TYPES[:k]) for k in PRESENT},
            "step": ("FlexEControlModule.predict_noise (control, then the frozen UNet with its residuals), "
                     "diffusion_loss (MSE to the epsilon target), backward, AdamW step (configure_optimizers: the "
                     "trainable parameters only), zero_grad; latents and the prompt encoding are made outside it"),
            "precision": "fp32", "device": "cpu", "torch_threads": args.threads,
            "warmup_steps": args.warmup, "timed_steps": args.steps, "rounds": args.rounds,
            "separate_processes": not args.inline, "step_time_ratio_basis": STEP_TIME_RATIO_BASIS,
            "gradient_checkpointing": "off and on (control model)" if args.checkpointing == "both" else "off",
            "memory_ratio_basis": MEMORY_RATIO_BASIS,
            "phases": ("control_forward until the UNet's forward starts; unet_forward to the loss; unet_backward "
                       "until the gradient of the control's middle residual arrives; control_backward the rest of "
                       "backward; optimizer the AdamW step and zero_grad"),
            "paper_ratios": PAPER, "seconds": round(time.perf_counter() - started, 1)},
        device="cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())

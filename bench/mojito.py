"""Mojito's costs (DESIGN.md "Mojito" and "Performance"): sampling time per denoising step with direction control
against none, and training step time and memory of the trainable sets against training the whole UNet, each side by
side in one run.

Run from the repository root:
  .venv/bin/python bench/mojito.py     # ~17 minutes on 2 shared CPU cores; writes bench/results/mojito.json
  .venv/bin/python bench/mojito.py --quick --out /tmp/mojito_quick.json   # tiny sizes, seconds

The model: a random pixel-space text-to-video pipeline (lightning_modules/diffusion/tiny.py write_tiny_text_to_video)
whose UNetMotionModel has SIZES[size]["unet"] (full: block_out_channels (32, 64), spatial and text cross-attention at
the inner 16 x 16 level and in the middle block, a motion module after every spatial layer), written once and loaded
by MojitoModule (intensity_dim 256, gradient checkpointing on: the module's defaults) on every side.

1. Sampling: MojitoModule.generate of one prompt at intensity level LEVEL with guidance 7.5 and intensity guidance 2
   (three UNet branches per step, as real sampling runs), `steps` denoising steps of the module's DDPM scheduler, from
   the same seed, with direction control off ("none"), in gradient mode and in reweight mode (DirectionControl
   defaults: steered in the first 10 of 25 steps, 1 gradient iteration; boxes along TRAJECTORY around SUBJECT). One
   process; per mode one untimed 2-step call, then `--rounds` rounds, each timing one whole call per mode in an order
   rotated per round. A figure is the call's time over its denoising steps (ms per step), median over the rounds.
2. Training: a step of MojitoModule.loss (prompt encoding, noise, the UNet's forward, MSE) on the same random
   batches, backward and an AdamW step (configure_optimizers) for each set-up of SETUPS: trainable [intensity],
   [motion_modules], [lora] (rank 8 on to_q/to_k/to_v/to_out.0) and [unet] (the reference), gradient checkpointing on
   (the default), and [motion_modules] with it off as well. Memory as bench/flexecontrol.py measures it
   (bench/measure.py): each set-up in a process of its own, `--rounds` times, set-ups interleaved and rotated per
   round; the peak RSS is reset once model and optimizer exist; `train_memory_mb` = peak RSS over `--warmup` + `--steps`
   steps minus the RSS then (AdamW's moments, allocated at the first step, included). Time: one more process holds
   every set-up, which step in turn on the same batches (order rotated every step), `--warmup` untimed and `--steps`
   timed steps each.
Torch runs `--threads` threads (default 1). Medians, with the raw samples beside them (bench/result_file.py).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from bench import measure
from bench.measure import fingerprint, max_rss_mb, reset_peak_rss, rotated, rss_mb
from bench.result_file import MIN_SAMPLES, RESULTS, target_met, write_result
from lightning_modules.diffusion.tiny import write_tiny_text_to_video
from lightning_modules.mojito import MojitoModule
from lightning_modules.mojito.direction import DirectionControl, boxes_from_trajectory

PROMPT, SUBJECT = "a red ball rolling on grass", "red ball"
CAPTIONS = ("a red ball rolling on grass", "a blue circle moving left", "a green square staying still",
            "a yellow ball moving up")
TRAJECTORY, BOX_SIZE = ((0.15, 0.5), (0.85, 0.5)), 0.35
LEVEL, GUIDANCE, INTENSITY_GUIDANCE = 3, 7.5, 2.0
MODES = ("none", "gradient", "reweight")
LORA = {"rank": 8, "alpha": 8.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
REFERENCE = "unet"
# set-up name -> (trainable sets, gradient checkpointing); the reference trains every UNet weight
SETUPS = {"intensity": (["intensity"], True), "motion_modules": (["motion_modules"], True), "lora": (["lora"], True),
          "unet": (["unet"], True), "motion_modules_no_checkpointing": (["motion_modules"], False)}
CHECKPOINTING_PAIR = ("motion_modules_no_checkpointing", "motion_modules")  # (off, on)
PHASES = ("forward", "backward", "optimizer")
TARGETS = {"gradient_over_none_sampling_step_time": "<= 1.5", "reweight_over_none_sampling_step_time": "<= 1.05"}
WARMUP_SAMPLING_STEPS = 2
# attention at the inner level only: self-attention over every pixel of a 32-pixel frame would cost most of a step
# on a CPU (DEMO_UNET's reason); cross-attention there is what direction control reads
INNER_ATTENTION = {"down_block_types": ("DownBlockMotion", "CrossAttnDownBlockMotion"),
                   "up_block_types": ("CrossAttnUpBlockMotion", "UpBlockMotion")}
SIZES = {
    "full": {"unet": {"block_out_channels": (32, 64), **INNER_ATTENTION}, "image_size": 32, "frames": 16,
             "steps": 25, "direction_steps": 10, "batch": 1},
    "quick": {"unet": {"block_out_channels": (16, 32), **INNER_ATTENTION}, "image_size": 8, "frames": 2,
              "steps": 3, "direction_steps": 2, "batch": 1},
}


def build_module(spec: Mapping[str, Any], trainable: Sequence[str], checkpointing: bool) -> MojitoModule:
    size = spec["size"]
    torch.manual_seed(spec["seed"])  # the intensity embedding and LoRA's A start alike on every side
    return MojitoModule(
        base={"pretrained": spec["base"], "vae": None, "unet_class": "UNetMotionModel"}, trainable=list(trainable),
        lora=dict(LORA) if "lora" in trainable else None, gradient_checkpointing=checkpointing,
        intensity_dropout=0.1, prompt_dropout=0.1, lr=1e-4, seed=spec["seed"],
        sampling={"steps": size["steps"], "frames": size["frames"], "guidance": GUIDANCE,
                  "intensity_guidance": INTENSITY_GUIDANCE})


def base_fingerprint(module: MojitoModule) -> float:
    """The UNet's own weights (LoRA's adapters left out): the same base on every side."""
    return fingerprint(p for name, p in module.unet.named_parameters() if "lora_" not in name)


def direction_settings(size: Mapping[str, Any], mode: str) -> DirectionControl:
    return DirectionControl(mode=mode, steps=size["direction_steps"]).check()


# -- sampling ----------------------------------------------------------------------------------------------------------
def measure_sampling(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every mode's whole generate call timed once per round (order rotated per round) after one untimed short call
    each; ms per denoising step, and checks on the videos."""
    torch.set_num_threads(spec["threads"])
    size = spec["size"]
    module = build_module(spec, ["intensity"], checkpointing=True).eval()
    boxes = boxes_from_trajectory(TRAJECTORY, BOX_SIZE, size["frames"])

    def sample(mode: str, **overrides: Any) -> torch.Tensor:
        return module.generate([PROMPT], levels=[LEVEL], boxes=boxes, subject=SUBJECT,
                               direction=direction_settings(size, mode),
                               generator=torch.Generator().manual_seed(spec["seed"]), **overrides)

    for mode in MODES:
        sample(mode, steps=WARMUP_SAMPLING_STEPS)
    step_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
    videos: dict[str, list[torch.Tensor]] = {mode: [] for mode in MODES}
    for round_index in range(spec["rounds"]):
        for mode in rotated(MODES, round_index):
            start = time.perf_counter()
            video = sample(mode)
            step_ms[mode].append((time.perf_counter() - start) * 1000 / size["steps"])
            videos[mode].append(video)
    first = {mode: videos[mode][0] for mode in MODES}
    checks = {
        "videos_finite": all(bool(torch.isfinite(v).all()) for vs in videos.values() for v in vs),
        "each_mode_repeats_its_video": all(torch.equal(v, vs[0]) for vs in videos.values() for v in vs),
        **{f"{mode}_changes_the_video": not torch.equal(first[mode], first["none"]) for mode in MODES[1:]},
        "unet_gradient_checkpointing_on": bool(module.unet.is_gradient_checkpointing),
    }
    return {"step_ms": step_ms, "checks": checks,
            "video_change": {mode: float((first[mode] - first["none"]).abs().mean()) for mode in MODES},
            "unet_params": sum(p.numel() for p in module.unet.parameters())}


# -- training ----------------------------------------------------------------------------------------------------------
def make_batch(size: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """Random clips in [-1, 1], captions and intensity levels, as VideoCaptionData gives them."""
    batch = size["batch"]
    video = torch.rand(batch, size["frames"], 3, size["image_size"], size["image_size"], generator=generator) * 2 - 1
    levels = torch.randint(1, 6, (batch,), generator=generator)
    return {"video": video, "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)], "level": levels}


class TrainingStep:
    """One set-up's module (build_module) and its AdamW (configure_optimizers); calling it on a batch (make_batch)
    takes one training step and returns {"step": ms, and each of PHASES: ms}. `checks()` says what it verified."""

    def __init__(self, spec: Mapping[str, Any], setup: str):
        trainable, self.checkpointing = SETUPS[setup]
        self.module = module = build_module(spec, trainable, self.checkpointing)
        module.train()
        self.optimizer = module.configure_optimizers()
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        self.frozen = [p for p in module.parameters() if not p.requires_grad]
        self.in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        self.trainable_before, self.frozen_before = fingerprint(self.trainable), fingerprint(self.frozen)
        self.base_fingerprint = base_fingerprint(module)
        self.losses: list[float] = []

    def __call__(self, batch: Mapping[str, Any], index: int) -> dict[str, float]:
        start = time.perf_counter()
        loss = self.module.loss(dict(batch), self.module.step_generator("train", index), train=True)
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        self.losses.append(float(loss.detach()))
        return {"step": (done - start) * 1000, "forward": (forward_done - start) * 1000,
                "backward": (backward_done - forward_done) * 1000, "optimizer": (done - backward_done) * 1000}

    def checks(self) -> dict[str, bool]:
        return {
            "losses_finite": bool(self.losses) and all(math.isfinite(v) for v in self.losses),
            "optimizer_holds_exactly_the_trainable_parameters": self.in_optimizer == {id(p) for p in self.trainable},
            "frozen_parameters_unchanged": fingerprint(self.frozen) == self.frozen_before,
            "trainable_parameters_changed": fingerprint(self.trainable) != self.trainable_before,
            "gradient_checkpointing_as_asked": self.module.unet.is_gradient_checkpointing == self.checkpointing,
        }


def measure_training(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One set-up in a process of its own: `warmup` untimed and `steps` timed steps; their times and the memory
    figures (module docstring)."""
    torch.set_num_threads(spec["threads"])
    rss_imports = rss_mb()
    step = TrainingStep(spec, spec["setup"])
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    gc.collect()
    rss_built = rss_mb()
    peak_reset = reset_peak_rss()
    timed = []
    for index in range(spec["warmup"] + spec["steps"]):
        times = step(make_batch(spec["size"], generator), index)
        if index >= spec["warmup"]:
            timed.append(times)
    peak = max_rss_mb()
    return {"setup": spec["setup"], **measure.timing_record(timed, PHASES), "rss_after_imports_mb": rss_imports,
            "rss_after_build_mb": rss_built, "peak_rss_mb": peak, "train_memory_mb": peak - rss_built,
            "peak_reset": peak_reset, "trainable_params": sum(p.numel() for p in step.trainable),
            "checks": step.checks(), "base_fingerprint": step.base_fingerprint}


def measure_alternating(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every set-up in one process, stepping in turn on the same batches (the order rotated every step), so that a
    change in the machine's load falls on all alike."""
    torch.set_num_threads(spec["threads"])
    steps = {setup: TrainingStep(spec, setup) for setup in SETUPS}
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    timed: dict[str, list[dict[str, float]]] = {setup: [] for setup in SETUPS}
    for index in range(spec["warmup"] + spec["steps"]):
        batch = make_batch(spec["size"], generator)
        for setup in rotated(list(SETUPS), index):
            times = steps[setup](batch, index)
            if index >= spec["warmup"]:
                timed[setup].append(times)
    return {"setups": {setup: {**measure.timing_record(timed[setup], PHASES), "checks": steps[setup].checks(),
                               "base_fingerprint": steps[setup].base_fingerprint,
                               "trainable_params": sum(p.numel() for p in steps[setup].trainable)} for setup in SETUPS}}


WORKERS = {"sampling": measure_sampling, "train": measure_training, "alternating": measure_alternating}


def run_job(kind: str, spec: Mapping[str, Any], *, inline: bool) -> dict[str, Any]:
    what = f"{kind} {spec['setup']}" if "setup" in spec else kind
    return measure.run_job(__name__ if inline else "bench.mojito", kind, spec, inline=inline, what=what)


# -- one run: every job, then the result file --------------------------------------------------------------------------
def aggregate(sampling: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], alternating: Mapping[str, Any],
              size: Mapping[str, Any]) -> dict[str, Any]:
    """Figures, samples, ratios and checks from the sampling record, every own-process training run and the
    alternating run."""
    samples: dict[str, list[float]] = {}
    for mode, values in sampling["step_ms"].items():
        samples[f"{mode}_sampling_step_ms"] = list(values)
    figures: dict[str, float] = {"unet_params": sampling["unet_params"]}
    for setup, record in alternating["setups"].items():
        figures[f"{setup}_trainable_params"] = record["trainable_params"]
        for series in ("step_ms", *(f"{phase}_ms" for phase in PHASES)):
            samples[f"{setup}_{series}"] = list(record[series])
    for run in runs:
        setup = run["setup"]
        samples.setdefault(f"{setup}_own_process_step_ms", []).extend(run["step_ms"])
        for series in ("train_memory_mb", "peak_rss_mb", "rss_after_build_mb"):
            samples.setdefault(f"{setup}_{series}", []).append(run[series])
    figures.update({name: statistics.median(values) for name, values in samples.items()})
    none = figures["none_sampling_step_ms"]
    steered, plain = size["direction_steps"], size["steps"] - size["direction_steps"]
    for mode in ("gradient", "reweight"):
        # what a steered step costs, if the steps after K cost what a step without control does
        total = figures[f"{mode}_sampling_step_ms"] * size["steps"]
        figures[f"{mode}_steered_step_ms"] = (total - none * plain) / steered
    ratios = {f"{mode}_over_none_sampling_step_time": figures[f"{mode}_sampling_step_ms"] / none
              for mode in ("gradient", "reweight")}
    ratios.update({f"{mode}_over_none_steered_step_time": figures[f"{mode}_steered_step_ms"] / none
                   for mode in ("gradient", "reweight")})
    for setup in SETUPS:
        if setup == REFERENCE or SETUPS[setup][1] != SETUPS[REFERENCE][1]:
            continue
        ratios[f"{setup}_over_unet_step_time"] = figures[f"{setup}_step_ms"] / figures[f"{REFERENCE}_step_ms"]
        ratios[f"{setup}_over_unet_trainable_params"] = (figures[f"{setup}_trainable_params"]
                                                         / figures[f"{REFERENCE}_trainable_params"])
        for name, series in (("memory", "train_memory_mb"), ("peak_rss", "peak_rss_mb"),
                             ("step_time_own_processes", "own_process_step_ms")):
            ours, theirs = figures.get(f"{setup}_{series}", 0), figures.get(f"{REFERENCE}_{series}", 0)
            if ours > 0 and theirs > 0:  # a step can add less than the allocator's granularity at tiny sizes
                ratios[f"{setup}_over_unet_{name}"] = ours / theirs
    off, on = CHECKPOINTING_PAIR
    ratios["checkpointing_off_over_on_step_time"] = figures[f"{off}_step_ms"] / figures[f"{on}_step_ms"]
    if figures.get(f"{off}_train_memory_mb", 0) > 0 and figures.get(f"{on}_train_memory_mb", 0) > 0:
        ratios["checkpointing_off_over_on_memory"] = (figures[f"{off}_train_memory_mb"]
                                                      / figures[f"{on}_train_memory_mb"])

    records = [*runs, *alternating["setups"].values()]
    checks = {name: all(record["checks"][name] for record in records) for name in records[0]["checks"]}
    checks.update(sampling["checks"])
    checks["same_base_unet_on_every_side"] = len({record["base_fingerprint"] for record in records}) == 1
    checks["peak_rss_reset_after_build"] = all(run["peak_reset"] for run in runs)
    return {"figures": figures, "samples": samples, "ratios": ratios, "checks": checks}


def notes(result: Mapping[str, Any], size: Mapping[str, Any], quick: bool, load: Sequence[float]) -> str:
    figures, ratios = result["figures"], result["ratios"]
    lines = ["--quick: tiny sizes for the bench's test, not a measurement."] if quick else []
    lines.append(f"Machine: 2 CPU cores shared with other jobs (load average {load[0]:.1f} at the start, "
                 f"{load[1]:.1f} at the end); one torch thread; figures are medians of interleaved repeats.")
    for name, target in TARGETS.items():
        met = target_met(ratios[name], target)
        lines.append(f"{name} = {ratios[name]:.3g} (target {target}): {'met' if met else 'MISSED'}.")
    steps, steered = size["steps"], size["direction_steps"]
    lines.append(
        f"Sampling, ms per denoising step over a {steps}-step call (three UNet branches per step, direction control "
        f"in the first {steered}): none {figures['none_sampling_step_ms']:.0f}, gradient "
        f"{figures['gradient_sampling_step_ms']:.0f}, reweight {figures['reweight_sampling_step_ms']:.0f}. A steered "
        f"step (derived: the call's time less {steps - steered} steps at none's cost, over {steered}) costs "
        f"{ratios['gradient_over_none_steered_step_time']:.2f}x a plain one in gradient mode (one conditional forward "
        f"and its backward on top, recomputed under gradient checkpointing) and "
        f"{ratios['reweight_over_none_steered_step_time']:.2f}x in reweight mode.")
    parts = []
    for setup in SETUPS:
        memory = figures.get(f"{setup}_train_memory_mb")
        parts.append(f"{setup} {figures[f'{setup}_step_ms']:.0f} ms (forward {figures[f'{setup}_forward_ms']:.0f}, "
                     f"backward {figures[f'{setup}_backward_ms']:.0f}, AdamW {figures[f'{setup}_optimizer_ms']:.0f})"
                     + (f", {memory:.0f} MiB" if memory is not None else "")
                     + f", {figures[f'{setup}_trainable_params'] / 1e6:.3g}M trained")
    lines.append("Training, median step (stepping in turn in one process) and training memory (own processes): "
                 + "; ".join(parts) + ". Every set-up back-propagates through the whole UNet (the intensity input "
                 "enters the time embedding of every block, the motion modules and LoRA sit in every block): what "
                 "the smaller sets save is the gradients and AdamW moments of the weights they do not train.")
    if not all(result["checks"].values()):
        lines.append(f"Checks that failed: {', '.join(n for n, ok in result['checks'].items() if not ok)}.")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the bench's test (needs --out)")
    parser.add_argument("--out", type=Path, help="result file to write (default bench/results/mojito.json; with "
                                                 "--quick required, outside bench/results)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed sampling calls per mode, and processes per training set-up, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per process and set-up")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per process and set-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every measurement")
    parser.add_argument("--inline", action="store_true",
                        help="with --quick: run every measurement in this process (memory figures not separate)")
    args = parser.parse_args(argv)
    problems = [f"--{name} must be >= {low}, got {getattr(args, name)}"
                for name, low in (("rounds", MIN_SAMPLES), ("warmup", 0), ("steps", MIN_SAMPLES), ("threads", 1))
                if getattr(args, name) < low]
    problems += measure.output_problems(args, RESULTS, REPO)
    if problems:
        parser.error("; ".join(problems))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "full"]
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mojito-bench-") as tmp:
        base = write_tiny_text_to_video(Path(tmp) / "base", image_size=size["image_size"], max_frames=size["frames"],
                                        unet=dict(size["unet"]))
        common = {"base": str(base), "size": dict(size), "threads": args.threads, "seed": 0}
        sampling = run_job("sampling", {**common, "rounds": args.rounds}, inline=args.inline)
        print("sampling: " + ", ".join(f"{mode} {statistics.median(ms):.0f}" for mode, ms in
                                       sampling["step_ms"].items())
              + f" ms/step ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        train = {**common, "warmup": args.warmup, "steps": args.steps}
        runs = []
        for round_index in range(args.rounds):
            for setup in rotated(list(SETUPS), round_index):
                run = run_job("train", {**train, "setup": setup}, inline=args.inline)
                runs.append(run)
                print(f"round {round_index + 1}/{args.rounds} {setup}: {statistics.median(run['step_ms']):.0f} ms/step,"
                      f" training memory {run['train_memory_mb']:.0f} MiB ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr, flush=True)
        alternating = run_job("alternating", train, inline=args.inline)
    result = aggregate(sampling, runs, alternating, size)
    load = (load_start, os.getloadavg()[0])
    out = args.out if args.out is not None else RESULTS / "mojito.json"
    argv = sys.argv if argv is None else [str(Path(__file__)), *argv]
    write_result(
        out.stem, directory=out.parent, argv=argv, libraries=("diffusers", "peft"),
        figures=result["figures"], ratios=result["ratios"], targets=TARGETS, samples=result["samples"],
        checks=result["checks"], notes=notes(result, size, args.quick, load),
        settings={
            "size": "quick" if args.quick else "full",
            "machine_note": "2 CPU cores shared with other jobs (other sessions' tests and benches ran meanwhile)",
            "load_average_start": round(load[0], 2), "load_average_end": round(load[1], 2),
            "unet": "UNetMotionModel, write_tiny_text_to_video(image_size, max_frames=frames, unet=...) random "
                    "weights, pixel space (no VAE), DDPMScheduler; MojitoModule intensity_dim 256",
            "unet_overrides": {k: list(v) for k, v in size["unet"].items()}, "image_size": size["image_size"],
            "frames": size["frames"], "precision": "fp32", "device": "cpu", "torch_threads": args.threads,
            "sampling": {"prompt": PROMPT, "subject": SUBJECT, "level": LEVEL, "guidance": GUIDANCE,
                         "intensity_guidance": INTENSITY_GUIDANCE, "denoising_steps": size["steps"],
                         "unet_branches_per_step": 3, "trajectory": [list(p) for p in TRAJECTORY],
                         "box_size": BOX_SIZE, "rounds": args.rounds, "warmup_calls_steps": WARMUP_SAMPLING_STEPS,
                         "unet_gradient_checkpointing": True,
                         "direction": {mode: asdict(direction_settings(size, mode)) for mode in MODES}},
            "training": {"setups": {name: {"trainable": sets, "gradient_checkpointing": gc_on}
                                    for name, (sets, gc_on) in SETUPS.items()},
                         "reference": REFERENCE, "lora": LORA, "batch": size["batch"],
                         "step": "MojitoModule.loss (prompt encoding, noise, UNet forward, MSE; prompt and intensity "
                                 "dropout 0.1), backward, AdamW step (configure_optimizers), zero_grad",
                         "warmup_steps": args.warmup, "timed_steps": args.steps, "rounds": args.rounds,
                         "separate_processes": not args.inline,
                         "memory_basis": "train_memory_mb: peak RSS over the steps minus the RSS once model and "
                                         "optimizer exist (bench/measure.py, as bench/flexecontrol.py)"},
            "seconds": round(time.perf_counter() - started, 1)},
        device="cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())

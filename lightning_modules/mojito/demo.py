"""The Mojito demo (`make demo`): motion intensity (trained) and motion direction (training-free) on a tiny
text-to-video model, on CPU.

1. A tiny pixel-space text-to-video model (UNetMotionModel), pretrained by the project on synthetic-motion clips
   (cache.py; cached under <root>/cache after the first run), and synthetic-motion shards for the fit.
2. The Motion Intensity Modulator (and the motion modules) trained through launch/fit.py with
   configs/mojito/demo.yaml, as a user would run it. The config names <root>/cache/tiny-t2v/current and <root>/data
   (the default root), links this demo keeps pointed at what it prepared, so after `make demo` it runs as shipped.
3. Intensity: clips sampled for a few prompts at no level and at levels 1..5 (same noise for every level of a prompt
   and seed), each clip's mean optical flow measured with the shard writer's function and the subject's speed from its
   known colour's box; the table gives both per requested level and the Spearman correlation of each with the level.
4. Direction: the same prompts along a trajectory of boxes, without control and with the gradient and the reweight
   modes (same noise), the subject located by its known colour in every frame; the table gives the mean IoU with the
   target boxes and the centroid distance (image widths).
5. GIFs of one prompt at levels 1 and 5 and along the trajectory (4x enlarged), a frame strip with the target boxes,
   and summary.md / summary.json under <root>.

    python -m lightning_modules.mojito.demo [--root runs/demo] [--steps 400] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "mojito" / "demo.yaml"
IMAGE_SIZE, FRAMES = 16, 4
# (prompt, subject, colour): the subject's words are in the prompt; its colour finds it in a generated frame
PROMPTS = [("a red circle moving right", "red circle", "red"), ("a blue square moving down", "blue square", "blue"),
           ("a green triangle moving left", "green triangle", "green"),
           ("a yellow circle moving up", "yellow circle", "yellow")]
TRAJECTORY, BOX_SIZE = [(0.25, 0.25), (0.75, 0.75)], 0.4  # top left to bottom right, against every caption's direction
ENLARGE = 4  # GIF pixels per model pixel


def prepare(root: Path, seed: int, pretrain_steps: int, num_train: int) -> dict[str, Path]:
    """The base and the data under `root`, each cached, behind the stable links the demo config names."""
    from datamodules.files import atomic_symlink
    from datamodules.writers.common import ShardOptions
    from lightning_modules.mojito.cache import ensure_tiny_text_to_video
    from lightning_modules.mojito.shards import write_synthetic_motion_shards

    cache = root / "cache"
    entry = ensure_tiny_text_to_video(cache / "tiny-t2v", image_size=IMAGE_SIZE, frames=FRAMES, num_train=num_train,
                                      max_steps=pretrain_steps, seed=seed)
    base = atomic_symlink(cache / "tiny-t2v" / "current", entry.name)
    data = root / f"data-size{IMAGE_SIZE}-frames{FRAMES}-train{num_train}-seed{seed}"
    if not (data / "val" / "index.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        write_synthetic_motion_shards(data / "train", num=num_train, size=IMAGE_SIZE, frames=FRAMES,
                                      options=ShardOptions(seed=seed))
        write_synthetic_motion_shards(data / "val", num=32, size=IMAGE_SIZE, frames=FRAMES,
                                      options=ShardOptions(seed=seed + 1_000_003))
    data = atomic_symlink(root / "data", data.name)
    return {"base": base, "train": data / "train", "val": data / "val"}


def fit(root: Path, paths: dict[str, Path], steps: int) -> Path:
    runs = root / "runs"
    shutil.rmtree(runs / "mojito-demo", ignore_errors=True)
    command = [sys.executable, str(REPO / "launch" / "fit.py"), "--config", str(CONFIG), f"run.root={runs}",
               f"model.params.base.pretrained={paths['base']}", f"data.params.train={paths['train']}",
               f"data.params.val={paths['val']}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
    # one intra-op thread unless the user says otherwise: a tiny model's many small ops only wait for a second one
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the fit failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return runs / "mojito-demo" / "checkpoints" / "last.ckpt"


def subject_speed(video: torch.Tensor, rgb: tuple[int, int, int]) -> float | None:
    """The subject's speed in pixels per frame: the mean distance between the centres of its colour's box
    (evaluation.locate_by_colour) in consecutive frames where it was found; None where no two such frames follow each
    other. Beside the optical flow, which any change of the frame (flicker included) moves, this moves only with the
    subject's pixels."""
    from lightning_modules.mojito.evaluation import locate_by_colour

    boxes, found = locate_by_colour(video, rgb)
    centres = torch.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], 1) / 2 * IMAGE_SIZE
    steps = [float((b - a).norm()) for a, b, both in zip(centres, centres[1:], found[:-1] & found[1:]) if both]
    return float(np.mean(steps)) if steps else None


def intensity_table(module: Any, seeds: int) -> tuple[dict[str, Any], dict[Any, torch.Tensor]]:
    """Per requested level (None: no level), over the prompts and seeds: the mean measured flow and the mean speed of
    the subject (found by its colour; clips where it was not found in two consecutive frames left out and counted);
    the Spearman correlations of level and flow, and of level and speed, over every clip with a level (and a speed).
    Also the first prompt's first-seed clip per level."""
    from datamodules.synthetic_shapes import COLORS
    from lightning_modules.mojito.evaluation import intensity_fidelity, measured_flows

    prompts = [prompt for prompt, _, _ in PROMPTS]
    flows: dict[Any, list[float]] = {level: [] for level in (None, 1, 2, 3, 4, 5)}
    speeds: dict[Any, list[float | None]] = {level: [] for level in flows}
    examples = {}
    for seed in range(seeds):
        for level in flows:
            videos = module.generate_videos(prompts, levels=[level] * len(prompts), seed=seed)
            flows[level] += measured_flows(videos)
            speeds[level] += [subject_speed(video, COLORS[colour]) for video, (_, _, colour) in zip(videos, PROMPTS)]
            if seed == 0:
                examples[level] = videos[0]
    leveled = [(level, flow) for level, values in flows.items() if level is not None for flow in values]
    timed = [(level, speed) for level, values in speeds.items() if level is not None for speed in values
             if speed is not None]
    return {"flow_by_level": {str(level): float(np.mean(values)) for level, values in flows.items()},
            "spearman": intensity_fidelity([lv for lv, _ in leveled], [fl for _, fl in leveled]),
            "speed_by_level": {str(level): float(np.mean([v for v in values if v is not None]))
                               if any(v is not None for v in values) else None for level, values in speeds.items()},
            "speed_missing": sum(v is None for values in speeds.values() for v in values),
            "speed_spearman": intensity_fidelity([lv for lv, _ in timed], [sp for _, sp in timed])
            if len(timed) >= 2 else None}, examples


def direction_table(module: Any, seeds: int) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor]:
    """Per mode (none, gradient, reweight): mean IoU of the subject's box (found by colour) with the target boxes, and
    the mean centroid distance, over the prompts and seeds; the first prompt's first-seed clip per mode."""
    from dataclasses import replace

    from datamodules.synthetic_shapes import COLORS
    from lightning_modules.mojito.direction import boxes_from_trajectory
    from lightning_modules.mojito.evaluation import locate_by_colour, trajectory_fidelity

    target = boxes_from_trajectory(TRAJECTORY, BOX_SIZE, FRAMES)
    configured = module.direction
    results, examples = {}, {}
    for mode in ("none", "gradient", "reweight"):
        module.direction = replace(configured, mode=mode)
        scores = []
        for seed in range(seeds):
            videos = module.generate_videos([p for p, _, _ in PROMPTS], boxes=[target] * len(PROMPTS),
                                            subjects=[s for _, s, _ in PROMPTS], seed=seed)
            for video, (_, _, colour) in zip(videos, PROMPTS):
                found, present = locate_by_colour(video, COLORS[colour])
                scores.append(trajectory_fidelity(target, found, present))
            if seed == 0:
                examples[mode] = videos[0]
        results[mode] = {key: float(np.mean([s[key] for s in scores])) for key in ("iou", "centroid_distance")}
    module.direction = configured
    return results, examples, target


def write_examples(out: Path, intensity: dict[Any, torch.Tensor], direction: dict[str, torch.Tensor],
                   target: torch.Tensor) -> None:
    from datamodules.video import frame_strip, write_gif, write_png
    from lightning_modules.mojito.evaluation import as_uint8_video

    def enlarged(video: torch.Tensor) -> np.ndarray:
        return as_uint8_video(video).repeat(ENLARGE, axis=1).repeat(ENLARGE, axis=2)

    for level in (1, 5):
        write_gif(out / f"level_{level}.gif", enlarged(intensity[level]), fps=4)
    for mode, video in direction.items():
        write_gif(out / f"direction_{mode}.gif", enlarged(video), fps=4)
        write_png(out / f"direction_{mode}.png", frame_strip(enlarged(video), target))


def summary(intensity: dict[str, Any], direction: dict[str, Any], steps: int, seeds: int) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"Motion intensity after {steps} steps of training the intensity modulator and the motion modules, "
             f"{len(PROMPTS)} prompts x {seeds} seeds of {FRAMES}-frame {IMAGE_SIZE}-pixel clips at each requested "
             f"level (same noise at every level): mean optical flow, and the subject's speed (its colour's box centre "
             f"from frame to frame), both in pixels/frame:", "",
             "| requested level | mean flow | subject speed |", "|---|---|---|"]
    lines += [f"| {'none' if level == 'None' else level} | {flow:.3f} | {number(intensity['speed_by_level'][level])} |"
              for level, flow in intensity["flow_by_level"].items()]
    lines += ["", f"Spearman correlation of requested level and measured flow: {intensity['spearman']:.3f}; of level "
              f"and subject speed: {number(intensity['speed_spearman'])} ({intensity['speed_missing']} clips without "
              f"the subject in two consecutive frames left out)", "",
              f"Motion direction along boxes from {TRAJECTORY[0]} to {TRAJECTORY[-1]} (box {BOX_SIZE} of the frame), "
              f"the subject found by its colour:", "", "| direction control | trajectory IoU | centroid distance |",
              "|---|---|---|"]
    lines += [f"| {mode} | {scores['iou']:.3f} | {scores['centroid_distance']:.3f} |"
              for mode, scores in direction.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the intensity modulator")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="steps of the tiny base's pretraining")
    parser.add_argument("--num-train", type=int, default=1000,
                        help="synthetic-motion clips to pretrain the base on, and as many to train the modulator on")
    parser.add_argument("--seeds", type=int, default=3, help="seeds each measurement is averaged over")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps, args.pretrain_steps, args.seeds) < 1 or args.num_train < 16:
        print("--steps, --pretrain-steps and --seeds must be >= 1, --num-train >= 16", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # as the fit runs
    start = time.perf_counter()
    print("preparing the tiny text-to-video base and the data (cached after the first run) ...", flush=True)
    paths = prepare(args.root, args.seed, args.pretrain_steps, args.num_train)
    print(f"  ready after {time.perf_counter() - start:.0f} s", flush=True)
    print(f"training the intensity modulator ({args.steps} steps) with launch/fit.py ...", flush=True)
    checkpoint = fit(args.root, paths, args.steps)
    print(f"  trained after {time.perf_counter() - start:.0f} s", flush=True)
    from lightning_modules.mojito.inference import load_for_inference

    module = load_for_inference(checkpoint)
    print("sampling at intensity levels 1..5 and along a trajectory ...", flush=True)
    intensity, intensity_clips = intensity_table(module, args.seeds)
    direction, direction_clips, target = direction_table(module, args.seeds)
    videos = args.root / "videos"
    write_examples(videos, intensity_clips, direction_clips, target)
    text = summary(intensity, direction, args.steps, args.seeds)
    (args.root / "summary.md").write_text(text)
    (args.root / "summary.json").write_text(json.dumps({"intensity": intensity, "direction": direction}, indent=2)
                                            + "\n")
    print("\n" + text + f"\n(total {time.perf_counter() - start:.0f} s; GIFs in {videos}; the run in "
          f"{args.root / 'runs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

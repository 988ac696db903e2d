"""The FlexEControl demo (`make demo-flexecontrol`): ControlNet vs Uni-ControlNet vs FlexEControl on synthetic shapes,
on CPU.

1. A tiny pixel-space text-to-image model, pretrained by the project on captioned synthetic shapes
   (lightning_modules/diffusion/cache.py; cached under <root>/cache after the first run).
2. Synthetic-control shards (make_shards.py synthetic-control: canny edges, segmentation mask, depth-like map) of
   32-pixel shapes, for training and a held-out set.
3. One fit per variant through launch/fit.py with configs/flexecontrol/demo.yaml, as a user would run it, for the same
   steps: ControlNet on canny alone (one ControlNet takes one condition), Uni-ControlNet and FlexEControl on canny,
   segmentation and depth together. The config names <root>/cache/tiny-t2i/current and <root>/data (the default
   root), links this demo keeps pointed at what it prepared, so after `make demo-flexecontrol` it runs as shipped.
4. On the held-out set, each trained model samples with its conditions and without any (same seeds): canny F1 and SSIM
   between the input edges and the generated image's edges, segmentation mIoU of the shape (the generated image
   segmented by its border colour) against the input mask; its trainable parameters; its training step time (median
   of timed steps in this process, the same batch for all). The table is printed and written to <root>/summary.md.

    python -m lightning_modules.flexecontrol.demo [--root runs/demo-flexecontrol] [--steps 300]
                                                  [--variants controlnet uni_controlnet flexecontrol]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "flexecontrol" / "demo.yaml"
NAMES = {"controlnet": "ControlNet", "uni_controlnet": "Uni-ControlNet", "flexecontrol": "FlexEControl"}
ALL_TYPES = {"canny": 1, "seg": 1, "depth": 1}
IMAGE_SIZE = 32


def condition_channels(variant: str) -> dict[str, int]:
    return {"canny": 1} if variant == "controlnet" else dict(ALL_TYPES)


def prepare(root: Path, seed: int, pretrain_steps: int, num_train: int, num_eval: int) -> dict[str, Path]:
    """The base and the data under `root`, each cached, behind the stable links the demo config names."""
    from datamodules.files import atomic_symlink
    from datamodules.writers.common import ShardOptions
    from lightning_modules.diffusion.cache import ensure_tiny_text_to_image
    from lightning_modules.flexecontrol.shards import write_synthetic_control_shards

    cache = root / "cache"
    entry = ensure_tiny_text_to_image(cache / "tiny-t2i", image_size=IMAGE_SIZE, max_steps=pretrain_steps, seed=seed)
    base = atomic_symlink(cache / "tiny-t2i" / "current", entry.name)
    data = root / f"data-size{IMAGE_SIZE}-train{num_train}-eval{num_eval}-seed{seed}"
    if not (data / "val" / "index.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        write_synthetic_control_shards(data / "train", num=num_train, size=IMAGE_SIZE,
                                       options=ShardOptions(seed=seed))
        write_synthetic_control_shards(data / "val", num=num_eval, size=IMAGE_SIZE,
                                       options=ShardOptions(seed=seed + 1_000_003))  # other shapes
    data = atomic_symlink(root / "data", data.name)
    return {"base": base, "train": data / "train", "val": data / "val"}


def fit_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a fit's process: `environ` with this checkout's packages first on PYTHONPATH, so the fit
    trains with the code that evaluates it here (launch/fit.py as a script would otherwise import an installed copy
    of the project, possibly another checkout's), and one intra-op thread unless OMP_NUM_THREADS says otherwise: this
    small model's many tiny parallel ops wait for a descheduled second thread whenever another process is busy
    (measured on 2 cores beside a busy process: 12 s a step with two threads, 0.7 s with one)."""
    python_path = os.pathsep.join([str(REPO), *filter(None, [environ.get("PYTHONPATH")])])
    return {**environ, "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": python_path}


def fit(root: Path, paths: dict[str, Path], variant: str, steps: int) -> Path:
    runs = root / "runs"
    shutil.rmtree(runs / variant, ignore_errors=True)
    dropped = [f"~model.params.condition_channels.{name}" for name in ALL_TYPES if name not in condition_channels(variant)]
    if "seg" not in condition_channels(variant):  # the shape word's region is read from the seg maps
        dropped.append("~data.params.token_regions")
    command = [sys.executable, str(REPO / "launch" / "fit.py"), "--config", str(CONFIG), f"run.root={runs}",
               f"run.name={variant}", f"model.params.variant={variant}", *dropped,
               f"model.params.base.pretrained={paths['base']}", f"data.params.train={paths['train']}",
               f"data.params.val={paths['val']}", f"trainer.max_steps={steps}",
               f"trainer.val_check_interval={steps}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=fit_environment(os.environ))
    if result.returncode != 0:
        raise RuntimeError(f"the {variant} fit failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return runs / variant / "checkpoints" / "last.ckpt"


def held_out_batch(paths: dict[str, Path], num: int) -> dict[str, Any]:
    from lightning_modules.flexecontrol.data import ControlData

    data = ControlData(val=str(paths["val"]), condition_channels=ALL_TYPES, resolution=IMAGE_SIZE, batch_size=num,
                       num_workers=0, verify="size")
    data.setup("validate")
    return next(iter(data.val_dataloader()))


def step_time_ms(module: Any, batch: dict[str, Any], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of one training step (forward, backward, AdamW) on `batch`."""
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-6)
    samples = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        optimizer.zero_grad()
        module.losses(batch, torch.Generator().manual_seed(i), train=True)["loss"].backward()
        optimizer.step()
        if i >= warmup:
            samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples)


def evaluate(variant: str, checkpoint: Path, batch: dict[str, Any], timing_batch: dict[str, Any],
             steps: int, seed: int) -> dict[str, Any]:
    from lightning_modules.flexecontrol.evaluation import evaluate_controllability
    from lightning_modules.flexecontrol.inference import load_for_inference

    module = load_for_inference(checkpoint)
    types = condition_channels(variant)
    own = {k: v for k, v in batch.items() if not k.startswith(("cond.", "present.")) or k.split(".", 1)[1] in types}
    metrics = evaluate_controllability(module, own, steps=steps, guidance=3.0, seed=seed, seg_model="border_colour",
                                       compare_without_control=True)
    timed = {k: v for k, v in timing_batch.items()
             if not k.startswith(("cond.", "present.")) or k.split(".", 1)[1] in types}
    module.train()
    return {"metrics": metrics, "trainable_parameters": sum(p.numel() for p in module.trainable_parameters()),
            "step_ms": step_time_ms(module, timed)}


def table(results: dict[str, dict]) -> str:
    def metric(record: dict, name: str) -> str:
        value, without = record["metrics"].get(name), record["metrics"].get(f"{name}_no_control")
        return "-" if value is None else f"{value:.3f} ({without:.3f})"

    lines = ["| method | conditions | canny F1 | edge SSIM | seg mIoU | trainable parameters | step (ms) |",
             "|---|---|---|---|---|---|---|"]
    for variant, record in results.items():
        lines.append(f"| {NAMES[variant]} | {', '.join(condition_channels(variant))} | {metric(record, 'canny_f1')} | "
                     f"{metric(record, 'edge_ssim')} | {metric(record, 'seg_miou')} | "
                     f"{record['trainable_parameters']:,} | {record['step_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "demo-flexecontrol")
    parser.add_argument("--variants", nargs="+", choices=list(NAMES), default=list(NAMES))
    parser.add_argument("--steps", type=int, default=300, help="training steps of each variant")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="steps of the tiny base's pretraining")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=32, help="held-out samples the table is measured on")
    parser.add_argument("--sample-steps", type=int, default=20, help="denoising steps when sampling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps, args.pretrain_steps, args.num_eval, args.sample_steps) < 1 or args.num_train < 16:
        print("--steps, --pretrain-steps, --num-eval and --sample-steps must be >= 1, --num-train >= 16",
              file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # as the fits run (see fit)
    start = time.perf_counter()
    print("preparing the tiny text-to-image base and the data (cached after the first run) ...", flush=True)
    paths = prepare(args.root, args.seed, args.pretrain_steps, args.num_train, args.num_eval)
    print(f"  ready after {time.perf_counter() - start:.0f} s", flush=True)
    batch = held_out_batch(paths, args.num_eval)
    timing_batch = {k: (v[:16] if hasattr(v, "__getitem__") else v) for k, v in batch.items()}
    results = {}
    for variant in args.variants:
        print(f"fitting {NAMES[variant]} ({args.steps} steps) ...", flush=True)
        checkpoint = fit(args.root, paths, variant, args.steps)
        results[variant] = evaluate(variant, checkpoint, batch, timing_batch, args.sample_steps, args.seed)
    summary = table(results)
    text = (f"Control of a tiny text-to-image model on {args.num_eval} held-out {IMAGE_SIZE}-pixel synthetic shapes "
            f"after {args.steps} training steps of each method (batch 16); each metric with the method's conditions, "
            f"and in brackets without any condition (the base model alone):\n\n{summary}")
    (args.root / "summary.md").write_text(text)
    (args.root / "summary.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print("\n" + text + f"\n(total {time.perf_counter() - start:.0f} s; runs in {args.root / 'runs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sample images from a trained controllable text-to-image model: `python launch/sample.py (--checkpoint CKPT |
--export DIR) --prompt TEXT [--condition TYPE=MAP.png ...] [--strength TYPE=S ...] --out DIR [--config FILE]
[--steps N] [--guidance G] [--scheduler NAME] [--seed S] [--num-images N] [--resolution R] [--device cpu|cuda]
[key=value ...]`.

The model: a Lightning checkpoint (its hyper-parameters are the truth) or an export written by launch/export.py. The
optional config (with key=value overrides, as for fit.py) says where things are on this machine: its
`model.params.base` replaces the base the checkpoint or export names, `data.params.resolution` is the image size and
`data.params.max_inputs_per_type` the number of inputs a condition type has (its data class's default when not set;
3 without a config). Which method's code rebuilds the model comes from the checkpoint's `model_target`
(callbacks/model_target.py), the export's `worldbridge_export.json`, or else the config's `model.target`: the
package of that class has a module `inference` with `load_for_inference(checkpoint, base=None, map_location=...)`
and `load_export(export_dir, base=None, map_location=...)` (launch/export.py's convention), whose module has
`condition_channels` ({type: channels}) and `generate(prompts, maps, present, *, resolution, strengths, steps,
guidance, scheduler, generator, negative_prompt)` (lightning_modules/flexecontrol/module.py).

Conditions: `--condition TYPE=FILE`, once per input map; several of one type fill that type's input slots in the
order given. A map is read as grayscale for a 1-channel type and as RGB for a 3-channel one, scaled to [0, 1], and
must already be the model's resolution (nothing is resized). `--strength TYPE=S` scales a given type's effect.

Writes `out/sample_000.png`, ... and `out/grid.png` (the conditions, then the samples, in one row), all at once: the
images are written in a temporary directory renamed to `out`. Every input is checked before anything is generated;
a bad one ends with one line and exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError, first_line
from launch import cli
from launch.known_warnings import silence_harmless_warnings

PROG = "sample.py"
EXPORT_METADATA = "worldbridge_export.json"  # in every export (launch/export.py), naming at least its model_target
DEFAULT_INPUTS_PER_TYPE = 3
SAMPLE_NAME = "sample_{:03d}.png"
GRID_NAME = "grid.png"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B")  # a 16-bit grayscale PNG (depth maps often are)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a Lightning checkpoint of a run (e.g. checkpoints/last.ckpt)")
    model.add_argument("--export", help="an export directory written by launch/export.py")
    parser.add_argument("--config", help="the run's config: where the base is, the resolution, inputs per type")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument("--negative-prompt", default="", help="the prompt guidance steers away from (default empty)")
    parser.add_argument("--condition", action="append", default=[], metavar="TYPE=FILE",
                        help="a condition map (PNG) of a type, e.g. canny=edges.png; repeat for more")
    parser.add_argument("--strength", action="append", default=[], metavar="TYPE=S",
                        help="a factor on a given type's effect, e.g. canny=0.8 (default 1)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--scheduler", help="a diffusers scheduler class, e.g. DDIMScheduler (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--num-images", type=int, default=1, help="samples to draw (default 1)")
    parser.add_argument("--resolution", type=int, help="image size (default: the config's data.params.resolution)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when there is one")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config (OmegaConf dotlist)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class ConditionInput:
    type: str
    path: Path
    size: tuple[int, int]  # width, height


def parse_pairs(values: Sequence[str], option: str, example: str) -> list[tuple[str, str]]:
    """`TYPE=VALUE` pairs of a repeated option; UsageError lines for malformed ones."""
    pairs, problems = [], []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            problems.append(f"{PROG}: {option} {value!r}: expected TYPE=VALUE, e.g. {option} {example}")
        else:
            pairs.append((name.strip(), rest.strip()))
    if problems:
        raise UsageError(problems)
    return pairs


def parse_strengths(values: Sequence[str]) -> dict[str, float]:
    strengths, problems = {}, []
    for name, text in parse_pairs(values, "--strength", "canny=0.8"):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            problems.append(f"{PROG}: --strength {name}={text}: the strength must be a number")
        else:
            strengths[name] = value
    if problems:
        raise UsageError(problems)
    return strengths


def read_config(args: argparse.Namespace) -> dict[str, Any]:
    """What the sampler takes from the config: model target and base, resolution, inputs per type."""
    if args.config is None:
        if args.overrides:
            raise UsageError(f"{PROG}: key=value overrides ({args.overrides[0]}) need --config")
        return {}
    from omegaconf import OmegaConf

    from launch.config import load_config, resolve_target

    cfg = OmegaConf.to_container(load_config(args.config, args.overrides).cfg, resolve=True)
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    params = data.get("params") or {}
    found: dict[str, Any] = {"model_target": model.get("target"), "base": (model.get("params") or {}).get("base"),
                             "resolution": params.get("resolution"), "inputs_per_type": params.get("max_inputs_per_type")}
    if found["inputs_per_type"] is None and data.get("target"):
        issues: list = []
        data_class = resolve_target(data["target"], "data.target", args.config, issues)
        if issues:
            raise UsageError([str(issue) for issue in issues])
        parameter = inspect.signature(data_class).parameters.get("max_inputs_per_type")
        if parameter is not None and isinstance(parameter.default, int):
            found["inputs_per_type"] = parameter.default  # the data class's default: what the run trained with
    return found


def export_metadata(export_dir: Path) -> dict[str, Any]:
    import json

    path = export_dir / EXPORT_METADATA
    if not export_dir.is_dir():
        raise UsageError(f"{PROG}: --export {export_dir}: no such directory")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{PROG}: --export {export_dir}: no readable {EXPORT_METADATA} (an export written by "
                         f"launch/export.py): {first_line(error)}") from error
    return metadata if isinstance(metadata, dict) else {}


def output_problem(out: Path) -> str | None:
    from datamodules.files import new_directory_problem

    problem = new_directory_problem(out)
    return f"{PROG}: --out {problem}" if problem else None


def open_conditions(pairs: list[tuple[str, str]], resolution: int) -> tuple[list[ConditionInput], list[str]]:
    """Each map opened (and decoded, so a broken file is found now) and its size checked."""
    from PIL import Image, UnidentifiedImageError

    inputs, problems = [], []
    for name, file in pairs:
        path = Path(file)
        try:
            with Image.open(path) as image:
                image.load()
                size = image.size
        except FileNotFoundError:
            problems.append(f"{PROG}: --condition {name}={file}: no such file")
            continue
        except (OSError, UnidentifiedImageError, ValueError) as error:
            problems.append(f"{PROG}: --condition {name}={file}: not a readable image ({first_line(error)})")
            continue
        if size != (resolution, resolution):
            problems.append(f"{PROG}: --condition {name}={file}: expected a {resolution}x{resolution} map (the model's "
                            f"resolution; nothing is resized), got {size[0]}x{size[1]}")
        inputs.append(ConditionInput(name, path, size))
    return inputs, problems


def read_map(path: Path, channels: int) -> Any:
    """A map as a float tensor [channels, H, W] in [0, 1]: grayscale for one channel, RGB for three."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        if channels == 1 and image.mode in SIXTEEN_BIT_MODES:
            array = np.asarray(image, dtype=np.float32)[None] / 65535.0
        else:
            converted = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
            array = converted[None] if channels == 1 else converted.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def condition_tensors(inputs: list[ConditionInput], channels: dict[str, int], slots: int, batch: int,
                      resolution: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """`maps` {type: [batch, slots, C, R, R]} and `present` {type: bool [batch, slots]} of the given types."""
    import torch

    maps, present = {}, {}
    for name in dict.fromkeys(i.type for i in inputs):
        stack = torch.zeros(slots, channels[name], resolution, resolution)
        mask = torch.zeros(slots, dtype=torch.bool)
        for k, item in enumerate(i for i in inputs if i.type == name):
            stack[k], mask[k] = read_map(item.path, channels[name]), True
        maps[name] = stack.expand(batch, *stack.shape).clone()
        present[name] = mask.expand(batch, slots).clone()
    return maps, present


def to_uint8(images: Any) -> Any:
    """[B, 3, H, W] in [-1, 1] to uint8 arrays [B, H, W, 3]."""
    import torch

    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def grid_row(inputs: list[ConditionInput], samples: Any) -> Any:
    """One row: each condition map (as RGB), then each sample."""
    import numpy as np
    from PIL import Image

    tiles = []
    for item in inputs:
        with Image.open(item.path) as image:
            if image.mode in SIXTEEN_BIT_MODES:
                gray = (np.asarray(image, dtype=np.float32) / 257.0).round().astype(np.uint8)
                tiles.append(np.repeat(gray[..., None], 3, axis=2))
            else:
                tiles.append(np.asarray(image.convert("RGB")))
    tiles += list(samples)
    return np.concatenate(tiles, axis=1)


def write_outputs(out: Path, samples: Any, grid: Any) -> None:
    """Every image in a temporary sibling of `out`, then one rename: `out` holds all of them or does not exist."""
    from PIL import Image

    from datamodules.files import write_directory

    def write(tmp: Path) -> None:
        for i, sample in enumerate(samples):
            Image.fromarray(sample).save(tmp / SAMPLE_NAME.format(i))
        Image.fromarray(grid).save(tmp / GRID_NAME)

    write_directory(out, write)


@dataclass
class Plan:
    """A sampling run whose every input has been checked; nothing loaded or written yet."""

    out: Path
    target: str  # the model's class (model_target)
    base: Any  # the config's model.params.base, or None: the checkpoint's or export's own
    inputs: list[ConditionInput]
    strengths: dict[str, float]
    slots: int  # inputs per condition type
    resolution: int
    device: str


def plan(args: argparse.Namespace) -> Plan:
    """Check the command line, the config, the model's file and the maps; UsageError with every problem found."""
    out = Path(args.out)
    condition_pairs = parse_pairs(args.condition, "--condition", "canny=edges.png")
    strengths = parse_strengths(args.strength)
    config = read_config(args)

    # after the checks of the command line alone, which need none of them (a typo is reported in a second)
    import torch

    from launch.export import read_model_target
    from lightning_modules.diffusion.sampling import scheduler_class_problem

    problems = []
    if (problem := output_problem(out)) is not None:
        problems.append(problem)
    problems += [f"{PROG}: --{name} must be >= 1, got {value}" for name, value in
                 (("steps", args.steps), ("num-images", args.num_images)) if value < 1]
    if args.scheduler is not None and (problem := scheduler_class_problem(args.scheduler)) is not None:
        problems.append(f"{PROG}: --scheduler: {problem}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        problems.append(f"{PROG}: --device cuda: this machine has no CUDA device (use --device cpu)")
    given = list(dict.fromkeys(name for name, _ in condition_pairs))
    problems += [f"{PROG}: --strength {name}: no --condition {name}=... is given (strengths apply to given types: "
                 f"{', '.join(given) or 'none'})" for name in strengths if name not in given]
    slots = config.get("inputs_per_type") or DEFAULT_INPUTS_PER_TYPE
    counts = {name: sum(1 for n, _ in condition_pairs if n == name) for name in given}
    problems += [f"{PROG}: --condition {name}: {count} maps, but a type has {slots} input slots "
                 f"(data.params.max_inputs_per_type)" for name, count in counts.items() if count > slots]

    target, metadata = None, {}
    try:
        if args.checkpoint is not None:
            target = read_model_target(Path(args.checkpoint), PROG)
        else:
            metadata = export_metadata(Path(args.export))
            target = metadata.get("model_target") if isinstance(metadata.get("model_target"), str) else None
        target = target or config.get("model_target")
        if not target:
            problems.append(f"{PROG}: {args.checkpoint or args.export}: names no model_target, and no --config "
                            f"gives model.target: which model is it?")
    except UsageError as error:
        problems += error.lines
    resolution = args.resolution or config.get("resolution") or metadata.get("resolution")
    inputs: list[ConditionInput] = []
    if args.resolution is not None and args.resolution < 1:
        problems.append(f"{PROG}: --resolution must be >= 1, got {args.resolution}")
    elif not isinstance(resolution, int) or resolution < 1:
        problems.append(f"{PROG}: the resolution is unknown: give --resolution, or a --config with "
                        f"data.params.resolution")
    else:
        inputs, found = open_conditions(condition_pairs, resolution)
        problems += found
    if problems:
        raise UsageError(problems)
    return Plan(out, target, config.get("base"), inputs, strengths, slots, resolution, device)


def load_model(args: argparse.Namespace, checked: Plan) -> Any:
    """The model, by its method's inference module; UsageError for a checkpoint, export or base the user can fix,
    and for condition types it was not built for."""
    from launch.export import hide_loading_progress_bars, method_inference

    inference = method_inference(checked.target, ["load_for_inference", "load_export"], PROG)
    hide_loading_progress_bars()
    try:
        if args.checkpoint is not None:
            module = inference.load_for_inference(args.checkpoint, base=checked.base, map_location=checked.device)
        else:
            module = inference.load_export(args.export, base=checked.base, map_location=checked.device)
    except ValueError as error:  # the convention: one line about an input the user can fix
        raise UsageError(f"{PROG}: {first_line(error)}") from error
    channels = dict(module.condition_channels)
    unknown = [name for name in dict.fromkeys(i.type for i in checked.inputs) if name not in channels]
    if unknown:
        raise UsageError([f"{PROG}: --condition {name}: the model was not built for condition type {name!r} (it has "
                          f"{', '.join(channels)})" for name in unknown])
    return module


def run(args: argparse.Namespace) -> int:
    checked = plan(args)
    module = load_model(args, checked)
    import torch

    maps, present = condition_tensors(checked.inputs, dict(module.condition_channels), checked.slots,
                                      args.num_images, checked.resolution)
    images = module.generate([args.prompt] * args.num_images, maps, present, resolution=checked.resolution,
                             strengths=checked.strengths or None, steps=args.steps, guidance=args.guidance,
                             scheduler=args.scheduler, generator=torch.Generator().manual_seed(args.seed),
                             negative_prompt=args.negative_prompt)
    samples = to_uint8(images)
    write_outputs(checked.out, samples, grid_row(checked.inputs, samples))
    print(f"wrote {len(samples)} sample(s) and {GRID_NAME} to {checked.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    silence_harmless_warnings()
    return cli.main(lambda: run(parse_args(argv)), PROG)


if __name__ == "__main__":
    sys.exit(main())

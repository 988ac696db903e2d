"""Sample images or videos from a trained model: `python launch/sample.py (--checkpoint CKPT | --export DIR) --prompt
TEXT --out DIR [--config FILE] [--negative-prompt TEXT] [--steps N] [--guidance G] [--scheduler NAME] [--seed S]
[--device cpu|cuda] [options of the model's kind] [key=value ...]`.

Which method's code rebuilds the model comes from the checkpoint's `model_target` (callbacks/model_target.py), the
export's `worldbridge_export.json`, or else the config's `model.target`: the package of that class has a module
`inference` with `load_for_inference(checkpoint, base=None, map_location=...)` and `OUTPUT`, what the model makes,
"images" or "videos" (launch/export.py's convention). The optional config (with key=value overrides, as for fit.py)
says where things are on this machine: its `model.params.base` replaces the base the checkpoint or export names. An
option of the other kind of model is refused.

Images (a controllable text-to-image model, e.g. FlexEControl: `generate(prompts, maps, present, *, resolution,
strengths, steps, guidance, scheduler, generator, negative_prompt)`, lightning_modules/flexecontrol/module.py):
`[--condition TYPE=MAP.png ...] [--strength TYPE=S ...] [--num-images N] [--resolution R]`. The model: a Lightning
checkpoint (its hyper-parameters are the truth) or an export written by launch/export.py (the inference module's
`load_export(export_dir, base=None, map_location=...)`, whose module has `condition_channels`, {type: channels}).
`--condition TYPE=FILE`, once per input map; several of one type fill that type's input slots in the order given
(the config's `data.params.max_inputs_per_type`, else its data class's default; 3 without a config). A map is read
as grayscale for a 1-channel type and as RGB for a 3-channel one, scaled to [0, 1], and must already be the model's
resolution (--resolution, else the config's `data.params.resolution`; nothing is resized). `--strength TYPE=S` scales
a given type's effect. Steps 30 and guidance 7.5 by default. Writes `out/sample_000.png`, ... and `out/grid.png`
(the conditions, then the samples, in one row).

Videos (a text-to-video model, e.g. Mojito, from its checkpoint; launch/video_sampling.py):
`[--intensity 1..5] [--boxes boxes.json | --trajectory "0.1,0.5 0.9,0.5" [--box-size S|W,H]] [--subject WORDS]
[--direction-mode gradient|reweight|none] [--direction-steps K] [--direction-iterations M] [--direction-eta ETA]
[--direction-strength S] [--direction-layers PATTERN ...] [--frames F] [--intensity-guidance S] [--fps 8]
[--num-videos N]`. --intensity needs a model with an intensity input. Direction control steers the subject (its
words in the prompt) into one box [x0, y0, x1, y1] in [0, 1] per frame, from a JSON list (or {"boxes": [...]}) or
from a trajectory of box centres; the --direction-* flags override the checkpoint's `direction` settings, and its
mode "none" becomes gradient when boxes are given (`--direction-mode none`: no control, the boxes still drawn).
Frames, steps and guidance default to the model's `sampling` settings. Writes per video `out/sample_000.mp4`,
`sample_000.gif` and `sample_000.png` (its frames side by side, each with its target box when boxes are given).
E.g. `python launch/sample.py --config configs/mojito/demo.yaml --checkpoint CKPT --prompt "a red ball rolling on
grass" --intensity 4 --trajectory "0.1,0.5 0.9,0.5" --box-size 0.2 --subject "red ball" --out samples`.

Everything is written at once: in a temporary directory renamed to `out`. Every input is checked before anything is
generated, what the command line alone shows before anything is read; a bad one ends with one line and exit code 2,
and nothing is written.
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
from launch import cli, video_sampling
from launch.known_warnings import silence_harmless_warnings

PROG = "sample.py"
EXPORT_METADATA = "worldbridge_export.json"  # in every export (launch/export.py), naming at least its model_target
DEFAULT_INPUTS_PER_TYPE = 3
IMAGE_STEPS, IMAGE_GUIDANCE = 30, 7.5  # an image model's defaults; a video model's are its sampling settings
SAMPLE_NAME = "sample_{:03d}.png"
GRID_NAME = "grid.png"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B")  # a 16-bit grayscale PNG (depth maps often are)
KINDS = {"images": "an image model", "videos": "a text-to-video model"}  # by the inference module's OUTPUT
# the options only an image model takes (argparse dest -> flag); a video model's are video_sampling.OPTIONS
IMAGE_OPTIONS = {"export": "--export", "condition": "--condition", "strength": "--strength",
                 "num_images": "--num-images", "resolution": "--resolution"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a Lightning checkpoint of a run (e.g. checkpoints/last.ckpt)")
    model.add_argument("--export", help="an image model's export directory, written by launch/export.py")
    parser.add_argument("--config", help="the run's config: where the base is (images: the resolution, the inputs "
                                         "per type)")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument("--negative-prompt", default="", help="the prompt guidance steers away from (default empty)")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: {IMAGE_STEPS} for an image model, a "
                                                  f"video model's sampling.steps)")
    parser.add_argument("--guidance", type=float, help=f"classifier-free guidance scale (default: {IMAGE_GUIDANCE} "
                                                       f"for an image model, a video model's sampling.guidance)")
    parser.add_argument("--scheduler", help="a diffusers scheduler class, e.g. DDIMScheduler (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when there is one")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    images = parser.add_argument_group("image models")
    images.add_argument("--condition", action="append", default=[], metavar="TYPE=FILE",
                        help="a condition map (PNG) of a type, e.g. canny=edges.png; repeat for more")
    images.add_argument("--strength", action="append", default=[], metavar="TYPE=S",
                        help="a factor on a given type's effect, e.g. canny=0.8 (default 1)")
    images.add_argument("--num-images", type=int, help="samples to draw (default 1)")
    images.add_argument("--resolution", type=int, help="image size (default: the config's data.params.resolution)")
    video_sampling.add_arguments(parser.add_argument_group("text-to-video models"))
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
                             "resolution": params.get("resolution"),
                             "inputs_per_type": params.get("max_inputs_per_type")}
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


# -- what both flows share -------------------------------------------------------------------------------------------
@dataclass
class Source:
    """The model a run samples, checked: where it is and which flow it takes; nothing loaded yet."""

    name: str  # the --checkpoint or --export as given
    target: str  # the model's class (model_target)
    inference: Any  # the method's inference module
    kind: str  # its OUTPUT: "images" or "videos"
    hparams: dict[str, Any]  # the checkpoint's hyper-parameters ({} for an export)
    metadata: dict[str, Any]  # the export's worldbridge_export.json ({} for a checkpoint)
    config: dict[str, Any]  # read_config's
    out: Path
    device: str


def command_line(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """The checks of the command line alone, both kinds' options, which need nothing read (a typo is reported in a
    second); the condition pairs and strengths."""
    problems, pairs, strengths = [], [], {}
    try:
        pairs = parse_pairs(args.condition, "--condition", "canny=edges.png")
    except UsageError as error:
        problems += error.lines
    try:
        strengths = parse_strengths(args.strength)
    except UsageError as error:
        problems += error.lines
    problems += [f"{PROG}: {line}" for line in video_sampling.command_line_problems(args)]
    if problems:
        raise UsageError(problems)
    return pairs, strengths


def read_source(args: argparse.Namespace) -> tuple[Source, list[str]]:
    """The config, --out, the shared options and the model's file, its class and its kind (OUTPUT); UsageError when
    the kind cannot be known, else the source and the problems found so far (the flow's checks add theirs)."""
    config = read_config(args)
    import torch

    from launch.export import method_inference, model_target_of, read_checkpoint_header
    from lightning_modules.diffusion.sampling import scheduler_class_problem

    out = Path(args.out)
    problems = []
    if (problem := output_problem(out)) is not None:
        problems.append(problem)
    if args.steps is not None and args.steps < 1:
        problems.append(f"{PROG}: --steps must be >= 1, got {args.steps}")
    if args.scheduler is not None and (problem := scheduler_class_problem(args.scheduler)) is not None:
        problems.append(f"{PROG}: --scheduler: {problem}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        problems.append(f"{PROG}: --device cuda: this machine has no CUDA device (use --device cpu)")

    name = args.checkpoint if args.checkpoint is not None else args.export
    target, hparams, metadata = None, {}, {}
    try:
        if args.checkpoint is not None:
            header = read_checkpoint_header(Path(args.checkpoint), PROG)
            target = model_target_of(header)
            saved = header.get("hyper_parameters")
            hparams = dict(saved) if isinstance(saved, dict) else {}
        else:
            metadata = export_metadata(Path(args.export))
            target = metadata.get("model_target") if isinstance(metadata.get("model_target"), str) else None
        target = target or config.get("model_target")
        if not target:
            problems.append(f"{PROG}: {name}: names no model_target, and no --config gives model.target: which "
                            f"model is it?")
    except UsageError as error:
        problems += error.lines
    inference = kind = None
    if target:
        try:
            inference = method_inference(target, [], PROG)
            kind = getattr(inference, "OUTPUT", None)
            if kind not in KINDS:
                problems.append(f"{PROG}: {inference.__name__}.OUTPUT is {kind!r}: it must say what the model makes, "
                                f"{' or '.join(map(repr, KINDS))}")
            else:
                loader = "load_export" if args.export is not None and kind == "images" else "load_for_inference"
                method_inference(target, [loader], PROG)
        except UsageError as error:
            problems += error.lines
    if kind not in KINDS:
        raise UsageError(problems)
    return Source(name, target, inference, kind, hparams, metadata, config, out, device), problems


def other_kind_problems(args: argparse.Namespace, source: Source) -> list[str]:
    """One line per option of the other kind of model."""
    foreign = IMAGE_OPTIONS if source.kind == "videos" else video_sampling.OPTIONS
    given = [(dest, option) for dest, option in foreign.items() if getattr(args, dest) not in (None, [])]
    if source.kind == "images":
        return [f"{PROG}: {option} applies to text-to-video models; {source.name} is {KINDS['images']}"
                for _, option in given]
    return [f"{PROG}: --export {args.export}: an export (launch/export.py) is an image-model feature, and "
            f"{source.target} is a text-to-video model: sample its --checkpoint" if dest == "export" else
            f"{PROG}: {option} applies to image models; {source.name} is {KINDS['videos']}" for dest, option in given]


def load_module(args: argparse.Namespace, source: Source) -> Any:
    """The model, by its method's inference module; UsageError for a checkpoint, export or base the user can fix."""
    from launch.export import hide_loading_progress_bars

    hide_loading_progress_bars()
    base = source.config.get("base")
    try:
        if args.checkpoint is not None:
            return source.inference.load_for_inference(args.checkpoint, base=base, map_location=source.device)
        return source.inference.load_export(args.export, base=base, map_location=source.device)
    except ValueError as error:  # the convention: one line about an input the user can fix
        raise UsageError(f"{PROG}: {first_line(error)}") from error


# -- images ----------------------------------------------------------------------------------------------------------
@dataclass
class ImagePlan:
    """An image sampling run whose every input has been checked; nothing loaded or written yet."""

    inputs: list[ConditionInput]
    strengths: dict[str, float]
    slots: int  # inputs per condition type
    resolution: int
    count: int


def plan_images(args: argparse.Namespace, source: Source, condition_pairs: list[tuple[str, str]],
                strengths: dict[str, float], problems: list[str]) -> ImagePlan:
    """The conditions, strengths and resolution checked; UsageError with these and the earlier `problems`."""
    if args.num_images is not None and args.num_images < 1:
        problems.append(f"{PROG}: --num-images must be >= 1, got {args.num_images}")
    given = list(dict.fromkeys(name for name, _ in condition_pairs))
    problems += [f"{PROG}: --strength {name}: no --condition {name}=... is given (strengths apply to given types: "
                 f"{', '.join(given) or 'none'})" for name in strengths if name not in given]
    slots = source.config.get("inputs_per_type") or DEFAULT_INPUTS_PER_TYPE
    counts = {name: sum(1 for n, _ in condition_pairs if n == name) for name in given}
    problems += [f"{PROG}: --condition {name}: {count} maps, but a type has {slots} input slots "
                 f"(data.params.max_inputs_per_type)" for name, count in counts.items() if count > slots]
    resolution = args.resolution or source.config.get("resolution") or source.metadata.get("resolution")
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
    return ImagePlan(inputs, strengths, slots, resolution, 1 if args.num_images is None else args.num_images)


def run_images(args: argparse.Namespace, source: Source, condition_pairs: list[tuple[str, str]],
               strengths: dict[str, float], problems: list[str]) -> int:
    checked = plan_images(args, source, condition_pairs, strengths, problems)
    module = load_model_for_conditions(args, source, checked)
    import torch

    maps, present = condition_tensors(checked.inputs, dict(module.condition_channels), checked.slots,
                                      checked.count, checked.resolution)
    images = module.generate([args.prompt] * checked.count, maps, present, resolution=checked.resolution,
                             strengths=checked.strengths or None,
                             steps=IMAGE_STEPS if args.steps is None else args.steps,
                             guidance=IMAGE_GUIDANCE if args.guidance is None else args.guidance,
                             scheduler=args.scheduler, generator=torch.Generator().manual_seed(args.seed),
                             negative_prompt=args.negative_prompt)
    samples = to_uint8(images)
    write_outputs(source.out, samples, grid_row(checked.inputs, samples))
    print(f"wrote {len(samples)} sample(s) and {GRID_NAME} to {source.out}")
    return 0


def load_model_for_conditions(args: argparse.Namespace, source: Source, checked: ImagePlan) -> Any:
    """The image model; UsageError for condition types it was not built for."""
    module = load_module(args, source)
    channels = dict(module.condition_channels)
    unknown = [name for name in dict.fromkeys(i.type for i in checked.inputs) if name not in channels]
    if unknown:
        raise UsageError([f"{PROG}: --condition {name}: the model was not built for condition type {name!r} (it has "
                          f"{', '.join(channels)})" for name in unknown])
    return module


# -- videos ----------------------------------------------------------------------------------------------------------
def run_videos(args: argparse.Namespace, source: Source, problems: list[str]) -> int:
    request, found = video_sampling.plan(args, source.hparams, source.name)
    problems += [f"{PROG}: {line}" for line in found]
    if problems:
        raise UsageError(problems)
    module = load_module(args, source)
    found = video_sampling.loaded_problems(module, request, source.name)
    if found:
        raise UsageError([f"{PROG}: {line}" for line in found])
    videos = video_sampling.generate(module, request)
    video_sampling.write_videos(source.out, videos, request.boxes, request.fps)
    print(f"wrote {len(videos)} video(s) (mp4, gif and png strip each) to {source.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    condition_pairs, strengths = command_line(args)
    source, problems = read_source(args)
    problems += other_kind_problems(args, source)
    if source.kind == "videos":
        return run_videos(args, source, problems)
    return run_images(args, source, condition_pairs, strengths, problems)


def main(argv: Sequence[str] | None = None) -> int:
    silence_harmless_warnings()
    return cli.main(lambda: run(parse_args(argv)), PROG)


if __name__ == "__main__":
    sys.exit(main())

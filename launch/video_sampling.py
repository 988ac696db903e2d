"""launch/sample.py's text-to-video flow (sample.py's docstring is the user's manual): its options, their checks, the
generation and the files written.

sample.py reads the config and the checkpoint, finds from the method's inference module that the model makes videos
(`OUTPUT = "videos"`, lightning_modules/mojito/inference.py) and loads it; here, in that order:
- `command_line_problems`: what the options alone show (a level outside 1..5, a malformed --box-size), before
  anything is read;
- `plan`: the options against the checkpoint's hyper-parameters, before the model loads: which options need which
  others, the frames (--frames, else the model's `sampling.frames`), the target boxes (a --boxes file or a
  --trajectory, lightning_modules/mojito/direction.py), the direction settings (the checkpoint's `direction` with
  the --direction-* flags over it, checked by DirectionControl.problems), an intensity level for a model without
  an intensity input;
- `loaded_problems`: what needs the loaded model: the subject's tokens in the prompt, the direction layers, the
  frames its motion modules hold;
- `generate` and `write_videos`: per video `sample_000.mp4` (PyAV), `sample_000.gif` and `sample_000.png` (the frames
  side by side, the target boxes drawn), all in one directory renamed into place.

Problems come back as lines without the program's name (sample.py puts it in front), every one found at a stage.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datamodules.errors import ParamError, UsageError
from datamodules.video import MOTION_LEVELS

DEFAULT_FPS = 8
FILE_NAMES = ("sample_{:03d}.mp4", "sample_{:03d}.gif", "sample_{:03d}.png")  # per video: clip, loop, strip
# argparse dest -> the DirectionControl field the --direction-* flag overrides
DIRECTION_FIELDS = {"direction_mode": "mode", "direction_steps": "steps", "direction_iterations": "iterations",
                    "direction_eta": "eta", "direction_strength": "strength", "direction_layers": "layers"}
# argparse dest -> the SamplingSettings field it overrides and whose check it gets here (sample.py checks --steps and
# --scheduler for both kinds of model)
SETTING_FIELDS = {"frames": "frames", "guidance": "guidance", "intensity_guidance": "intensity_guidance"}
TARGET_HINT = "give --boxes FILE or --trajectory 'x,y x,y ...'"


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# the options only a text-to-video model takes (dest -> flag): sample.py refuses them for an image model
OPTIONS = {dest: flag(dest) for dest in ("intensity", "boxes", "trajectory", "box_size", "subject",
                                         *DIRECTION_FIELDS, "frames", "intensity_guidance", "fps", "num_videos")}


def add_arguments(group: Any) -> None:
    """The text-to-video options, on sample.py's parser (an argument group). Every default is None: sample.py tells
    a given option from an absent one, and an absent one is the model's setting."""
    group.add_argument("--intensity", type=int, metavar="LEVEL",
                       help=f"the motion intensity, 1 (least) .. {MOTION_LEVELS} (most); a model with an intensity "
                            f"input (default: none)")
    boxes = group.add_mutually_exclusive_group()
    boxes.add_argument("--boxes", metavar="FILE",
                       help='the subject\'s target boxes: a JSON list (or {"boxes": [...]}) of one [x0, y0, x1, y1] '
                            'in [0, 1] per frame')
    boxes.add_argument("--trajectory", metavar="'x,y x,y ...'",
                       help="the subject's box centres in [0, 1] along a path, e.g. '0.1,0.5 0.9,0.5' (one box per "
                            "frame, at constant speed along it)")
    group.add_argument("--box-size", metavar="S|W,H",
                       help="the trajectory's box: one fraction of the frame (square) or width,height (default: the "
                            "motion evaluator's, 0.25)")
    group.add_argument("--subject", metavar="WORDS",
                       help="the words of the prompt the boxes hold, e.g. 'red ball' (needed with --boxes or "
                            "--trajectory)")
    group.add_argument("--direction-mode", metavar="gradient|reweight|none",
                       help="direction control towards the boxes (default: the checkpoint's direction.mode, gradient "
                            "where that is none); none samples without it, the boxes still drawn")
    group.add_argument("--direction-steps", type=int, metavar="K", help="the first K denoising steps are steered")
    group.add_argument("--direction-iterations", type=int, metavar="M",
                       help="gradient mode: at most M gradient steps on the latents per steered step")
    group.add_argument("--direction-eta", type=float, metavar="ETA", help="gradient mode: the first step's size")
    group.add_argument("--direction-strength", type=float, metavar="S",
                       help="reweight mode: the attention logits' shift inside (+S) and outside (-S) the boxes")
    group.add_argument("--direction-layers", nargs="+", metavar="PATTERN",
                       help="fnmatch patterns of the spatial cross-attention layers steered, e.g. "
                            "'*.attentions.*.attn2'")
    group.add_argument("--frames", type=int, help="frames per video (default: the model's sampling.frames)")
    group.add_argument("--intensity-guidance", type=float, metavar="S",
                       help="the intensity's guidance scale, with --intensity (default: the model's "
                            "sampling.intensity_guidance)")
    group.add_argument("--fps", type=int, help=f"frames per second of the mp4 and gif (default {DEFAULT_FPS})")
    group.add_argument("--num-videos", type=int, metavar="N", help="videos to draw, each from its own noise "
                                                                   "(default 1)")


def parse_box_size(text: str) -> tuple[float, float]:
    """'0.2' (square) or '0.3,0.2' (width, height), fractions of the frame in (0, 1]; a UsageError naming the flag."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and 0.0 < v <= 1.0 for v in values):
        raise UsageError(f"--box-size {text}: give one fraction of the frame in (0, 1] for a square box, or "
                         f"width,height, e.g. 0.2 or 0.3,0.2")
    return values[0], values[-1]


def command_line_problems(args: argparse.Namespace) -> list[str]:
    """What the options alone show, before anything is read."""
    problems = []
    if args.intensity is not None and not 1 <= args.intensity <= MOTION_LEVELS:
        problems.append(f"--intensity {args.intensity}: a motion intensity level is 1 (least) .. {MOTION_LEVELS} "
                        f"(most)")
    problems += [f"{flag(dest)} must be >= 1, got {value}" for dest in ("fps", "num_videos")
                 if (value := getattr(args, dest)) is not None and value < 1]
    if args.box_size is not None:
        try:
            parse_box_size(args.box_size)
        except UsageError as error:
            problems += error.lines
    return problems


@dataclass
class VideoRequest:
    """A checked text-to-video sampling run: what `generate` is asked; nothing loaded yet."""

    prompt: str
    count: int
    level: int | None
    boxes: Any  # float tensor [F, 4] of the subject's target boxes, or None
    subject: str | None
    control: Any  # the DirectionControl with the flags over the checkpoint's, or None without boxes
    frames: int
    settings: dict[str, Any]  # the SamplingSettings fields the command line gives (MojitoModule.generate's overrides)
    fps: int
    seed: int
    overridden: set[str]  # DirectionControl fields the flags give (a problem names the flag, else the checkpoint)


def dependency_problems(args: argparse.Namespace) -> list[str]:
    """Options given without the one that gives them meaning (each would be silently ignored)."""
    problems = []
    steering = args.boxes is not None or args.trajectory is not None
    if args.box_size is not None and args.trajectory is None:
        problems.append("--box-size applies with --trajectory (a --boxes file gives whole boxes)")
    if steering and args.subject is None:
        problems.append(f"{'--boxes' if args.boxes is not None else '--trajectory'} needs --subject: the words of the "
                        f"prompt for the thing the boxes hold")
    if args.subject is not None and not steering:
        problems.append(f"--subject needs target boxes: {TARGET_HINT}")
    direction = [flag(dest) for dest in DIRECTION_FIELDS if getattr(args, dest) is not None]
    if direction and not steering:
        problems.append(f"{', '.join(direction)}: direction control needs target boxes: {TARGET_HINT} (and "
                        f"--subject)")
    if args.intensity_guidance is not None and args.intensity is None:
        problems.append("--intensity-guidance applies with --intensity (a level to guide towards)")
    return problems


def _settings(cls: type, saved: Any, what: str, problems: list[str]) -> Any:
    """cls(**saved) from the checkpoint's hyper-parameters (None: the defaults), or the defaults and a problem."""
    try:
        return cls(**(saved or {}))
    except TypeError as error:  # a checkpoint of another version of the module
        problems.append(f"{what}: {error}")
        return cls()


def plan(args: argparse.Namespace, hparams: dict[str, Any], name: str) -> tuple[VideoRequest | None, list[str]]:
    """The options against the checkpoint `name`'s hyper-parameters (its `sampling`, `direction` and
    `intensity_dim`, as MojitoModule saved them), before the model loads: the request, or None and the problems."""
    from lightning_modules.mojito.direction import DirectionControl, boxes_from_trajectory, parse_trajectory, read_boxes
    from lightning_modules.mojito.evaluation import DEFAULT_BOX_SIZE
    from lightning_modules.mojito.module import SamplingSettings

    problems = dependency_problems(args)
    if args.intensity is not None and "intensity_dim" in hparams and hparams["intensity_dim"] is None:
        problems.append(f"--intensity: {name} has no intensity input (its intensity_dim is null): sample it without "
                        f"--intensity")

    saved = _settings(SamplingSettings, hparams.get("sampling"), f"{name}: sampling", problems)
    given = {SETTING_FIELDS[dest]: getattr(args, dest) for dest in SETTING_FIELDS if getattr(args, dest) is not None}
    sampling = SamplingSettings(**{**asdict(saved), **given})
    flags = {field: flag(dest) for dest, field in SETTING_FIELDS.items()}
    bad_settings = {field: message for field, message in sampling.problems() if field in given}
    problems += [f"{flags[field]}: {message}" for field, message in bad_settings.items()]

    overridden = {field: getattr(args, dest) for dest, field in DIRECTION_FIELDS.items()
                  if getattr(args, dest) is not None}
    boxes = control = None
    if args.boxes is not None or args.trajectory is not None:
        control = _settings(DirectionControl, hparams.get("direction"), f"{name}: direction", problems)
        control = DirectionControl(**{**asdict(control), **overridden})
        if "mode" not in overridden and control.mode == "none":
            control.mode = "gradient"  # boxes were given to steer towards; --direction-mode none samples without
        problems += [direction_line(field, message, set(overridden), name) for field, message in control.problems()]
        if "frames" not in bad_settings:
            try:
                if args.boxes is not None:
                    boxes = read_boxes(args.boxes, sampling.frames)
                else:
                    size = parse_box_size(args.box_size) if args.box_size is not None else DEFAULT_BOX_SIZE
                    boxes = boxes_from_trajectory(parse_trajectory(args.trajectory), size, sampling.frames)
            except UsageError as error:
                problems += error.lines
    if problems:
        return None, problems
    settings = {"steps": args.steps, "frames": args.frames, "guidance": args.guidance,
                "intensity_guidance": args.intensity_guidance, "scheduler": args.scheduler,
                "negative_prompt": args.negative_prompt or None}  # "": the model's own negative prompt
    return VideoRequest(prompt=args.prompt, count=1 if args.num_videos is None else args.num_videos,
                        level=args.intensity, boxes=boxes, subject=args.subject, control=control,
                        frames=sampling.frames, settings={k: v for k, v in settings.items() if v is not None},
                        fps=DEFAULT_FPS if args.fps is None else args.fps, seed=args.seed,
                        overridden=set(overridden)), []


def direction_line(field: str, message: str, overridden: set[str], name: str) -> str:
    """A direction setting's problem, naming the flag that gave it, else the checkpoint's setting."""
    flags = {value: flag(dest) for dest, value in DIRECTION_FIELDS.items()}
    return f"{flags[field]}: {message}" if field in overridden else f"{name}: direction.{field}: {message}"


def frame_limit(unet: Any) -> int | None:
    """The most frames a video UNet takes: a UNetMotionModel's motion modules have positional embeddings for
    motion_max_seq_length frames (more fail deep inside the UNet); UNet3DConditionModel has no such limit."""
    limit = unet.config.get("motion_max_seq_length")
    return limit if isinstance(limit, int) else None


def loaded_problems(module: Any, request: VideoRequest, name: str) -> list[str]:
    """What needs the loaded model (a MojitoModule): the subject's tokens in the prompt, the direction layers in its
    UNet, the frames its motion modules hold."""
    from lightning_modules.mojito.direction import direction_layers, subject_token_indices

    problems = []
    if request.subject is not None:
        try:
            subject_token_indices(module.tokenizer, request.prompt, request.subject)
        except UsageError as error:
            problems += error.lines
    if request.control is not None and request.control.mode != "none":
        try:
            direction_layers(module.unet, request.control.layers)
        except ParamError as error:
            problems += [direction_line("layers", message, request.overridden, name) for _, message in error.problems]
    limit = frame_limit(module.unet)
    if limit is not None and request.frames > limit:
        given = "--frames" if "frames" in request.settings else f"{name}: sampling.frames"
        problems.append(f"{given} {request.frames}: the model's motion modules take at most {limit} frames "
                        f"(motion_max_seq_length)")
    return problems


def generate(module: Any, request: VideoRequest) -> list[Any]:
    """The request's videos, each uint8 [F, H, W, 3], each from its own noise of the one seeded generator."""
    import torch

    from lightning_modules.mojito.evaluation import as_uint8_video

    videos = module.generate([request.prompt] * request.count, levels=[request.level] * request.count,
                             boxes=request.boxes, subject=request.subject, direction=request.control,
                             generator=torch.Generator().manual_seed(request.seed), **request.settings)
    return [as_uint8_video((video.float() + 1) / 2) for video in videos]


def write_videos(out: Path, videos: list[Any], boxes: Any, fps: int) -> Path:
    """Per video its mp4, gif and PNG strip (boxes outlined when given) in a temporary sibling of `out`, then one
    rename: `out` holds all of them or does not exist."""
    from datamodules.files import write_directory
    from datamodules.video import frame_strip, write_gif, write_png, write_video

    mp4, gif, png = FILE_NAMES

    def write(directory: Path) -> None:
        for i, frames in enumerate(videos):
            write_video(directory / mp4.format(i), frames, fps)
            write_gif(directory / gif.format(i), frames, fps)
            write_png(directory / png.format(i), frame_strip(frames, boxes))

    return write_directory(out, write)

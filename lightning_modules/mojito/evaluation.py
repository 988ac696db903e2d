"""How well generated videos follow Mojito's motion controls (DESIGN.md, "Mojito", Metrics), and a callback that
measures it while training.

- Intensity fidelity (`intensity_fidelity`): Spearman rank correlation (torchmetrics) between the requested levels
  1..5 and the measured mean optical flow of the generated clips (datamodules/video.py `mean_flow`, the function the
  shard writer annotates clips with), so "level 5 moves more than level 1" is measured the way training data was
  labelled.
- Trajectory fidelity (`trajectory_fidelity`): per frame, IoU and centroid distance (normalised coordinates) between
  the target box and where the subject is found, averaged over frames. The subject is found by its known colour on
  synthetic data (`locate_by_colour`), otherwise by a transformers zero-shot detector (OWL-ViT / OWLv2) from a local
  directory (`locate_by_detector`). A frame where it is not found counts as IoU 0 and distance sqrt(2), the image
  diagonal (the largest distance two points of the unit square can have): losing the subject never scores better
  than finding it far away.
- CLIP text-frame similarity: the shared scorer (lightning_modules/clip_similarity.py `clip_frame_similarity`).

`evaluate_motion` runs a fixed prompt set through the module's `generate_videos`: every prompt at every level 1..5,
once per seed (one call per seed and level, so the same prompt starts from the same noise at every level), and every
prompt with a trajectory without and with direction control (one call each per seed, the same noise). Its metrics:
`intensity_spearman`, `flow_level_<k>` (mean flow at level k), `trajectory_iou` and `centroid_distance` (with
control) and `trajectory_iou_none` and `centroid_distance_none` (the same prompts without), `clip_similarity` (the
intensity clips against their prompts, with a CLIP). `MotionEvaluator` logs them as `motion/<metric>` at every k-th
validation, computed on rank 0 (callbacks/rank_zero.py).

A prompt set entry (from a config): `{prompt, subject, colour, trajectory, box_size}`; only `prompt` is required. A
trajectory ("x,y x,y ...", box centres in [0, 1], or a list of [x, y]) needs the subject's words (in the prompt) and
a way to find the subject: its `colour` (a datamodules/synthetic_shapes.COLORS name or [r, g, b]) or the
evaluator's detector. The trajectory becomes per-frame boxes of `box_size` (width, or [width, height]; default
0.25) centred on it at constant speed along the path, shifted (not shrunk) into the image
(direction.boxes_from_trajectory, the boxes sampling steers to).
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.rank_zero import rank_zero_metrics
from datamodules.errors import UsageError, count_problems, did_you_mean, raise_param_problems
from datamodules.synthetic_shapes import COLORS
from datamodules.video import MOTION_LEVELS, mean_flow
from lightning_modules.mojito.direction import boxes_from_trajectory
from lightning_modules.clip_similarity import (CLIP_WHAT, Device, clip_frame_similarity, load_model_and_processor,
                                               local_model_dir)

METRIC_PREFIX = "motion"
UNCONTROLLED = "_none"
LEVELS = tuple(range(1, MOTION_LEVELS + 1))
MISSING_DISTANCE = math.sqrt(2.0)  # the unit square's diagonal: the distance of a frame where the subject is lost
DETECTOR_WHAT = "an OWL-ViT or OWLv2 detector with its processor"
DETECTOR_TYPES = ("owlvit", "owlv2")
DEFAULT_BOX_SIZE = 0.25
ENTRY_KEYS = ("prompt", "subject", "colour", "trajectory", "box_size")


# ------------------------------------------------------------------------------------------------------- formats
def as_uint8_video(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] of a video given as generate_videos makes it ([F, 3, H, W] floats in [0, 1]) or already as
    uint8 [F, H, W, 3]."""
    if isinstance(video, torch.Tensor):
        if video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(f"a video tensor must be [F, 3, H, W], got shape {tuple(video.shape)}")
        if video.dtype != torch.uint8:
            video = (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return np.ascontiguousarray(video.permute(0, 2, 3, 1).cpu().numpy())
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"a video array must be uint8 [F, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    return video


# ---------------------------------------------------------------------------------------------------- intensity
def intensity_fidelity(levels: Sequence[int], flows: Sequence[float]) -> float:
    """Spearman rank correlation (torchmetrics, ties ranked by their mean) between requested levels and the measured
    mean flows of the clips made at them, in [-1, 1]. Flows (or levels) that are all equal have no ranking at all:
    0.0, no correlation, rather than the undefined 0/0."""
    from torchmetrics.functional import spearman_corrcoef

    if len(levels) != len(flows) or len(levels) < 2:
        raise ValueError(f"intensity_fidelity: needs as many flows as levels, at least 2; got {len(levels)} levels "
                         f"and {len(flows)} flows")
    x = torch.tensor([float(v) for v in levels], dtype=torch.float64)
    y = torch.tensor([float(v) for v in flows], dtype=torch.float64)
    if bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return 0.0
    return float(spearman_corrcoef(y, x))


def measured_flows(videos: torch.Tensor) -> list[float]:
    """mean_flow (datamodules/video.py) of each video of [B, F, 3, H, W] in [0, 1]."""
    return [mean_flow(as_uint8_video(video)) for video in videos]


# -------------------------------------------------------------------------------------------------- subject boxes
def locate_by_colour(video: torch.Tensor | np.ndarray, rgb: Sequence[int],
                     tolerance: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the bounding box (normalised x0, y0, x1, y1: from a pixel's left/top edge to the right/bottom edge
    of the last) of the pixels within `tolerance` of `rgb` in every channel, and whether there were any: boxes
    [F, 4] (zeros where not found) and found [F] bool."""
    frames = as_uint8_video(video)
    height, width = frames.shape[1:3]
    near = (np.abs(frames.astype(np.int16) - np.asarray(rgb, np.int16)) <= tolerance).all(axis=-1)
    boxes = torch.zeros(len(frames), 4)
    found = torch.zeros(len(frames), dtype=torch.bool)
    for t, mask in enumerate(near):
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[t] = torch.tensor([columns[0] / width, rows[0] / height, (columns[-1] + 1) / width,
                                     (rows[-1] + 1) / height])
            found[t] = True
    return boxes, found


@functools.lru_cache(maxsize=2)
def _load_detector(directory: str) -> tuple[Any, Any]:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    model, processor = load_model_and_processor(directory, AutoModelForZeroShotObjectDetection, AutoProcessor,
                                                DETECTOR_WHAT)
    if model.config.model_type not in DETECTOR_TYPES:
        raise UsageError(f"{directory}: a {model.config.model_type} detector; give {DETECTOR_WHAT} (its "
                         f"post-processing is the one supported)")
    return model, processor


def load_detector(model_path: str | os.PathLike) -> tuple[Any, Any]:
    """The zero-shot detector and its processor saved in a local directory, loaded once per process; UsageError
    naming the directory when they are not there."""
    return _load_detector(local_model_dir(model_path, DETECTOR_WHAT))


def locate_by_detector(video: torch.Tensor | np.ndarray, phrase: str, model_path: str | os.PathLike,
                       threshold: float = 0.1, device: Device = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the highest-scoring box of `phrase` by the OWL-ViT / OWLv2 detector in `model_path` (its
    processor's post-processing), normalised and clipped to the frame, and whether its score exceeds `threshold`:
    boxes [F, 4] (zeros where not found) and found [F] bool. OWLv2 pads a frame to a square at its bottom/right,
    so its boxes are scaled by the padded side; OWL-ViT stretches the frame to a square, so by the frame's size."""
    model, processor = load_detector(model_path)
    device = torch.device(device or "cpu")
    model = model.to(device)
    frames = as_uint8_video(video)
    height, width = frames.shape[1:3]
    side = max(height, width)
    size = (side, side) if model.config.model_type == "owlv2" else (height, width)
    inputs = processor(text=[[phrase]] * len(frames), images=list(frames), return_tensors="pt").to(device)
    with torch.no_grad():
        outputs = model(**inputs)
    detections = processor.post_process_grounded_object_detection(outputs, threshold=0.0,
                                                                   target_sizes=[size] * len(frames))
    boxes = torch.zeros(len(frames), 4)
    found = torch.zeros(len(frames), dtype=torch.bool)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    for t, detection in enumerate(detections):
        if not len(detection["scores"]):
            continue
        best = int(detection["scores"].argmax())
        boxes[t] = (detection["boxes"][best].float().cpu() / scale).clamp(0, 1)
        found[t] = float(detection["scores"][best]) > threshold  # as the processor's own threshold compares
    boxes[~found] = 0
    return boxes, found


# ---------------------------------------------------------------------------------------------------- trajectory
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[F]: IoU of boxes a[f] and b[f] (x0, y0, x1, y1 each); 0 where both are empty."""
    left, top = torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])
    right, bottom = torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])
    inter = (right - left).clamp_min(0) * (bottom - top).clamp_min(0)
    area = lambda box: (box[:, 2] - box[:, 0]).clamp_min(0) * (box[:, 3] - box[:, 1]).clamp_min(0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def trajectory_fidelity(target: torch.Tensor, found: torch.Tensor, found_mask: torch.Tensor) -> dict[str, float]:
    """Mean over frames of the IoU of target and found boxes ([F, 4] each, normalised) and of the distance between
    their centres; a frame where the subject was not found (found_mask [F] False) counts as IoU 0 and distance
    MISSING_DISTANCE (sqrt(2), the image diagonal)."""
    target, found = torch.as_tensor(target, dtype=torch.float32), torch.as_tensor(found, dtype=torch.float32)
    found_mask = torch.as_tensor(found_mask, dtype=torch.bool)
    if target.dim() != 2 or target.shape[1] != 4 or found.shape != target.shape or found_mask.shape != target.shape[:1]:
        raise ValueError(f"trajectory_fidelity: target and found must be [F, 4] and found_mask [F], got "
                         f"{tuple(target.shape)}, {tuple(found.shape)}, {tuple(found_mask.shape)}")
    if not len(target):
        raise ValueError("trajectory_fidelity: no frames")
    centre = lambda box: torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], 1)  # noqa: E731
    distance = (centre(target) - centre(found)).norm(dim=1)
    iou = torch.where(found_mask, box_iou(target, found), torch.zeros_like(distance))
    distance = torch.where(found_mask, distance, torch.full_like(distance, MISSING_DISTANCE))
    return {"iou": float(iou.mean()), "centroid_distance": float(distance.mean())}


# ---------------------------------------------------------------------------------------------------- prompt set
@dataclass(frozen=True)
class MotionPrompt:
    """One entry of the prompt set: `points` and `box_size` make the target boxes; `colour` (r, g, b) finds the
    subject on synthetic data."""

    prompt: str
    subject: str | None = None
    colour: tuple[int, int, int] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    box_size: tuple[float, float] = (DEFAULT_BOX_SIZE, DEFAULT_BOX_SIZE)


def _parse_points(value: Any) -> tuple[tuple[float, float], ...]:
    """ "x,y x,y" or [[x, y], ...] -> ((x, y), ...); ValueError saying what is wrong."""
    if isinstance(value, str):
        pieces = [piece.split(",") for piece in value.split()]
    elif isinstance(value, Sequence):
        pieces = list(value)
    else:
        raise ValueError(f"expected \"x,y x,y ...\" or a list of [x, y], got {type(value).__name__}")
    points = []
    for piece in pieces:
        try:
            x, y = (float(v) for v in piece)
        except (TypeError, ValueError):
            raise ValueError(f"{piece!r} is not a point x,y") from None
        if not (0 <= x <= 1 and 0 <= y <= 1):
            raise ValueError(f"point {x},{y} is outside [0, 1]")
        points.append((x, y))
    if not points:
        raise ValueError("no points; give at least one x,y")
    return tuple(points)


def _parse_entry(entry: Any, where: str, detector: bool) -> tuple[MotionPrompt | None, list[tuple[str, str]]]:
    if isinstance(entry, MotionPrompt):
        return entry, []
    if not isinstance(entry, Mapping):
        return None, [(where, f"expected a mapping with a prompt, got {type(entry).__name__}")]
    problems = [(f"{where}.{key}", f"unknown key{did_you_mean(str(key), ENTRY_KEYS)}") for key in entry
                if key not in ENTRY_KEYS]
    prompt, subject = entry.get("prompt"), entry.get("subject")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append((f"{where}.prompt", "give the prompt's text"))
        prompt = ""
    if subject is not None and (not isinstance(subject, str) or not re.search(
            rf"\b{re.escape(subject.strip().lower())}\b", prompt.lower()) or not subject.strip()):
        problems.append((f"{where}.subject", f"{subject!r} is not in the prompt {prompt!r}: give words of the prompt"))
    colour = entry.get("colour")
    if isinstance(colour, str):
        if colour not in COLORS:
            problems.append((f"{where}.colour", f"unknown colour {colour!r}{did_you_mean(colour, COLORS)} "
                                                f"(a name of {', '.join(COLORS)}, or [r, g, b])"))
        colour = COLORS.get(colour)
    elif colour is not None:
        if not (isinstance(colour, Sequence) and len(colour) == 3
                and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
            problems.append((f"{where}.colour", f"expected a colour name or [r, g, b] in 0..255, got {colour!r}"))
            colour = None
        else:
            colour = tuple(colour)
    points = None
    if entry.get("trajectory") is not None:
        try:
            points = _parse_points(entry["trajectory"])
        except ValueError as e:
            problems.append((f"{where}.trajectory", str(e)))
        if subject is None:
            problems.append((f"{where}.subject", "a trajectory needs the subject's words, which direction control "
                                                 "steers"))
        if entry.get("colour") is None and not detector:
            problems.append((f"{where}.colour", "a trajectory needs a way to find the subject: its colour, or the "
                                                "evaluator's detector"))
    size = entry.get("box_size", DEFAULT_BOX_SIZE)
    sizes = (size, size) if isinstance(size, (int, float)) else tuple(size) if isinstance(size, Sequence) else ()
    if len(sizes) != 2 or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in sizes):
        problems.append((f"{where}.box_size", f"expected a size in (0, 1] or [width, height], got {size!r}"))
        sizes = (DEFAULT_BOX_SIZE, DEFAULT_BOX_SIZE)
    if problems:
        return None, problems
    return MotionPrompt(prompt, subject, colour, points, (float(sizes[0]), float(sizes[1]))), []


def parse_prompt_set(entries: Any, detector: bool = False,
                     name: str = "prompts") -> tuple[list[MotionPrompt], list[tuple[str, str]]]:
    """The prompt set's entries (mappings as in a config, or MotionPrompts) and every problem with them, as
    (`prompts[i].key`, message); `detector`: whether a detector can find subjects that have no colour."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or not entries:
        return [], [(name, "give a non-empty list of {prompt, subject, colour, trajectory, box_size} entries")]
    parsed, problems = [], []
    for i, entry in enumerate(entries):
        prompt, found = _parse_entry(entry, f"{name}[{i}]", detector)
        problems += found
        if prompt is not None:
            parsed.append(prompt)
    return parsed, problems


# ---------------------------------------------------------------------------------------------------- evaluation
def _check_videos(videos: Any, count: int) -> torch.Tensor:
    if not isinstance(videos, torch.Tensor) or videos.dim() != 5 or videos.shape[0] != count or videos.shape[2] != 3:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"generate_videos must return videos [{count}, F, 3, H, W] in [0, 1], got {shape}")
    return videos.detach().float().cpu()


def _locate(video: torch.Tensor, entry: MotionPrompt, detector: str | os.PathLike | None, threshold: float,
            tolerance: int, device: Device) -> tuple[torch.Tensor, torch.Tensor]:
    if entry.colour is not None:
        return locate_by_colour(video, entry.colour, tolerance)
    return locate_by_detector(video, entry.subject, detector, threshold, device)


def evaluate_motion(module: Any, prompt_set: Sequence[Mapping[str, Any] | MotionPrompt], *, seeds: int = 2,
                    seed: int = 0, steps: int | None = None, clip_model: str | os.PathLike | None = None,
                    detector: str | os.PathLike | None = None, detector_threshold: float = 0.1,
                    colour_tolerance: int = 60, device: Device = None) -> dict[str, float]:
    """The motion metrics of `module` (anything with Mojito's `generate_videos`) on `prompt_set` (see the module
    docstring), with `seeds` seeds from `seed` and `steps` denoising steps (None: the module's default)."""
    entries, problems = parse_prompt_set(prompt_set, detector is not None)
    raise_param_problems(problems + count_problems({"seeds": seeds}, ["seeds"]))
    prompts = [entry.prompt for entry in entries]
    levels, flows, by_level = [], [], {level: [] for level in LEVELS}
    clip_videos, clip_prompts = [], []
    frames = None
    for s in range(seed, seed + seeds):
        for level in LEVELS:
            videos = _check_videos(module.generate_videos(prompts, levels=[level] * len(prompts), seed=s, steps=steps),
                                   len(prompts))
            frames = videos.shape[1]
            measured = measured_flows(videos)
            levels += [level] * len(measured)
            flows += measured
            by_level[level] += measured
            if clip_model is not None:
                clip_videos.append(videos)
                clip_prompts += prompts
    out = {"intensity_spearman": intensity_fidelity(levels, flows)}
    out.update({f"flow_level_{level}": float(np.mean(values)) for level, values in by_level.items()})
    steered = [entry for entry in entries if entry.points is not None]
    if steered:
        targets = [boxes_from_trajectory(entry.points, entry.box_size, frames) for entry in steered]
        scores: dict[str, list[dict[str, float]]] = {"": [], UNCONTROLLED: []}
        for s in range(seed, seed + seeds):
            for suffix, control in (("", True), (UNCONTROLLED, False)):
                videos = _check_videos(module.generate_videos(
                    [entry.prompt for entry in steered], levels=[None] * len(steered),
                    boxes=list(targets) if control else [None] * len(steered),
                    subjects=[entry.subject for entry in steered] if control else [None] * len(steered),
                    seed=s, steps=steps), len(steered))
                for video, entry, target in zip(videos, steered, targets):
                    if video.shape[0] != target.shape[0]:
                        raise ValueError(f"generate_videos made {video.shape[0]} frames for {target.shape[0]} boxes")
                    boxes, found = _locate(video, entry, detector, detector_threshold, colour_tolerance, device)
                    scores[suffix].append(trajectory_fidelity(target, boxes, found))
        for suffix, values in scores.items():
            out[f"trajectory_iou{suffix}"] = float(np.mean([v["iou"] for v in values]))
            out[f"centroid_distance{suffix}"] = float(np.mean([v["centroid_distance"] for v in values]))
    if clip_model is not None:
        out["clip_similarity"] = clip_frame_similarity(torch.cat(clip_videos), clip_prompts, clip_model, device)
    return out


# ------------------------------------------------------------------------------------------------------ callback
class MotionEvaluator(Callback):
    """`evaluate_motion` of the prompt set at every `every_n_val`-th validation (never in the sanity check), on rank 0,
    with the same seeds each time (two evaluations differ only by the weights); every rank logs `motion/<metric>`
    (rank 0 broadcasts them, callbacks/rank_zero.py).

    prompts: the prompt set (list of {prompt, subject, colour, trajectory, box_size}; the module docstring). seeds:
    seeds per prompt and level, from `seed`. steps: denoising steps (None: the module's default). clip_model: a
    local CLIP directory for `motion/clip_similarity`. detector: a local OWL-ViT / OWLv2 directory, which finds the
    subjects of entries without a colour (threshold: `detector_threshold`). colour_tolerance: per channel, how far a
    pixel may be from a subject's colour.
    """

    def __init__(self, prompts: list[dict[str, Any]], every_n_val: int = 1, seeds: int = 2, seed: int = 0,
                 steps: int | None = None, clip_model: str | None = None, detector: str | None = None,
                 detector_threshold: float = 0.1, colour_tolerance: int = 60):
        raise_param_problems(self.config_problems(
            {"prompts": prompts, "every_n_val": every_n_val, "seeds": seeds, "steps": steps, "clip_model": clip_model,
             "detector": detector, "detector_threshold": detector_threshold, "colour_tolerance": colour_tolerance}))
        self.prompts, self.every_n_val, self.seeds, self.seed, self.steps = prompts, every_n_val, seeds, seed, steps
        self.clip_model, self.detector = clip_model, detector
        self.detector_threshold, self.colour_tolerance = detector_threshold, colour_tolerance
        self.validations = 0  # full validations seen (saved in checkpoints: a resumed run keeps the rhythm)
        # Every rank logs the same, already complete values: Lightning's advice to sync them does not apply.
        warnings.filterwarnings("ignore", message=rf".*self\.log\('{re.escape(METRIC_PREFIX)}/")

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """(param, message) for values that cannot work: counts below 1, a threshold outside [0, 1], a prompt set
        entry that cannot be evaluated (parse_prompt_set), and with `check_files` model paths that are not local
        directories."""
        problems = count_problems(params, ("every_n_val", "seeds", "steps"))
        threshold = params.get("detector_threshold", 0.1)
        if isinstance(threshold, (int, float)) and not 0 <= threshold <= 1:
            problems.append(("detector_threshold", f"must be in [0, 1], got {threshold}"))
        tolerance = params.get("colour_tolerance", 60)
        if isinstance(tolerance, int) and not 0 <= tolerance <= 255:
            problems.append(("colour_tolerance", f"must be in 0..255, got {tolerance}"))
        if "prompts" in params:
            problems += parse_prompt_set(params["prompts"], params.get("detector") is not None)[1]
        for name, what in (("clip_model", CLIP_WHAT), ("detector", DETECTOR_WHAT)):
            value = params.get(name)
            if check_files and value is not None and not Path(str(value)).expanduser().is_dir():
                problems.append((name, f"no such directory: {value} (the local directory of {what})"))
        return problems

    @property
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, seeds=self.seeds)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "generate_videos", None)):
            raise TypeError(f"MotionEvaluator: {type(pl_module).__name__} has no generate_videos(prompts, *, levels, "
                            f"boxes, subjects, seed, steps) method (MojitoModule has); remove the MotionEvaluator")

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """evaluate_motion of the prompt set with this callback's settings, on the module's device."""
        return evaluate_motion(pl_module, self.prompts, seeds=self.seeds, seed=self.seed, steps=self.steps,
                               clip_model=self.clip_model, detector=self.detector,
                               detector_threshold=self.detector_threshold, colour_tolerance=self.colour_tolerance,
                               device=getattr(pl_module, "device", None))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_val:
            return
        def evaluate() -> dict[str, float]:
            with torch.no_grad():  # direction control's gradient mode enables gradients where it needs them
                return self.evaluate(pl_module)

        metrics = rank_zero_metrics(trainer, evaluate, "MotionEvaluator")
        for name, value in (metrics or {}).items():
            pl_module.log(f"{METRIC_PREFIX}/{name}", value, sync_dist=False)


__all__ = ["MotionEvaluator", "MotionPrompt", "box_iou", "evaluate_motion", "intensity_fidelity", "load_detector",
           "locate_by_colour", "locate_by_detector", "measured_flows", "parse_prompt_set",
           "trajectory_fidelity"]

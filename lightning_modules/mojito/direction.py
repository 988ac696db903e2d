"""Mojito's directional motion control (training-free, at sampling; DESIGN.md "Mojito"): the subject's words in the
prompt and one box per frame steer where the subject appears, through the text cross-attention of the UNet.

- Boxes: normalised (x0, y0, x1, y1) in [0, 1], one per frame, a float tensor [F, 4]: from a JSON file
  (`read_boxes`) or from a trajectory of box centres and a box size (`parse_trajectory`, `boxes_from_trajectory`);
  `check_boxes` is the one check both go through. `box_masks` puts them on a layer's grid.
- Energy (`direction_energy`): in each recorded layer (the core's AttentionStore, maps [N = B * F, K, h, w], frames
  sample-major), per frame, the fraction of the subject tokens' attention mass (summed over the K tokens) that
  falls inside that frame's box; E = sum over frames of (1 - fraction)^2, averaged over the layers; one value per
  sample, [B].
- Gradient mode (`GradientGuidance`, layout guidance): a step hook for the core's `denoise`; in the first `steps`
  denoising steps, up to `iterations` steps z <- z - eta_t * dE/dz on the latents before the normal step.
- Reweight mode (`reweight_attention`, no gradients): in the same layers the subject tokens' attention logits get
  +strength inside the box and -strength outside, through the core recorder's `logit_bias`.
- `DirectionControl`: the settings (a config section), `direction_control`: the one entry a sampling loop uses.

Layers: only spatial cross-attention attends to the text; a motion UNet's motion modules (UNetMotionModel's
`motion_modules`, UNet3DConditionModel's `temp_attentions` and `transformer_in`) are temporal self-attention, refused
by `direction_layers`. Under classifier-free guidance only the conditional rows are steered (see each function).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from datamodules.errors import (
    ParamError,
    UsageError,
    did_you_mean,
    raise_param_problems,
)
from lightning_modules.diffusion.attention import (
    AttentionStore,
    LogitBias,
    cross_attention_layers,
    layer_size,
    matching_layers,
    phrase_token_indices,
    record_cross_attention,
)
from lightning_modules.diffusion.sampling import ModelFn, StepHook

MODES = ("none", "gradient", "reweight")
ETA_SCHEDULES = ("constant", "linear", "cosine")
# every spatial transformer's text cross-attention; the dot before "attentions" leaves out UNet3DConditionModel's
# temp_attentions (temporal self-attention, which record_cross_attention would skip anyway)
DEFAULT_LAYERS = ("*.attentions.*.attn2",)
BOX_FORM = "[x0, y0, x1, y1] in [0, 1]"

Point = tuple[float, float]


# --- boxes ---------------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_boxes(boxes: Any, frames: int, source: str) -> torch.Tensor:
    """`boxes` (a list of [x0, y0, x1, y1] or a tensor [F, 4]) as a float tensor [F, 4], or a UsageError naming
    `source` (the file, or the trajectory) with one line per problem: not a list, a count other than `frames`, a box
    that is not four numbers, a coordinate outside [0, 1], x1 <= x0 or y1 <= y0."""
    if isinstance(boxes, (torch.Tensor, np.ndarray)):
        boxes = boxes.tolist()
    if not isinstance(boxes, (list, tuple)):
        raise UsageError(f"{source}: expected a list of boxes {BOX_FORM}, one per frame, got {type(boxes).__name__}")
    problems = []
    if len(boxes) != frames:
        problems.append(f"{source} has {len(boxes)} boxes; --frames is {frames}: give one box per frame")
    for i, box in enumerate(boxes):
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            problems.append(f"{source}: boxes[{i}] is {json.dumps(box)}: give four numbers {BOX_FORM}")
            continue
        x0, y0, x1, y1 = box
        if not all(0.0 <= v <= 1.0 for v in box):
            problems.append(f"{source}: boxes[{i}] {list(box)} has a coordinate outside [0, 1]: give fractions of "
                            f"the frame's width and height")
        if x1 <= x0 or y1 <= y0:
            problems.append(f"{source}: boxes[{i}] {list(box)} has x1 <= x0 or y1 <= y0: give the top-left corner "
                            f"first, then the bottom-right ({BOX_FORM})")
    if problems:
        raise UsageError(problems)
    return torch.tensor(boxes, dtype=torch.float32).reshape(frames, 4)


def read_boxes(path: str | Path, frames: int) -> torch.Tensor:
    """Per-frame boxes [F, 4] from a JSON file holding a list of F boxes [x0, y0, x1, y1], or {"boxes": [...]}; every
    problem a UsageError naming the file and the fix."""
    source = str(path)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{source}: no such file: give a JSON file of {frames} boxes {BOX_FORM}, one per frame")
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"{source}: cannot be read ({error.strerror}): give a readable JSON file of boxes") from None
    try:
        content = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{source}: not valid JSON ({error}): write a list of boxes {BOX_FORM} or "
                         f'{{"boxes": [...]}}') from None
    if isinstance(content, dict):
        if "boxes" not in content:
            keys = ", ".join(map(str, content)) or "none"
            raise UsageError(f'{source}: a JSON object without "boxes" (keys: {keys}): write '
                             f'{{"boxes": [[x0, y0, x1, y1], ...]}}')
        content = content["boxes"]
    return check_boxes(content, frames, source)


def parse_trajectory(text: str) -> list[Point]:
    """'0.1,0.5 0.9,0.5' (x,y box centres separated by spaces) as [(0.1, 0.5), (0.9, 0.5)]; a UsageError naming the
    malformed point."""
    points = []
    words = text.split()
    if not words:
        raise UsageError("--trajectory is empty: give box centres as 'x,y x,y ...', e.g. '0.1,0.5 0.9,0.5'")
    for i, word in enumerate(words):
        parts = word.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
        except ValueError:
            raise UsageError(f"--trajectory: point {i + 1} '{word}' is not x,y: give box centres as 'x,y x,y ...', "
                             f"e.g. '0.1,0.5 0.9,0.5'") from None
        points.append((x, y))
    return points


def _box_size(box_size: float | Sequence[float]) -> tuple[float, float]:
    size = (box_size, box_size) if _is_number(box_size) else tuple(box_size)
    if len(size) != 2 or not all(_is_number(v) and 0.0 < v <= 1.0 for v in size):
        raise UsageError(f"box size {box_size!r}: give a width and height (or one number for both) in (0, 1], "
                         f"fractions of the frame")
    return float(size[0]), float(size[1])


def boxes_from_trajectory(points: Sequence[Point], box_size: float | Sequence[float], frames: int) -> torch.Tensor:
    """Per-frame boxes [F, 4] of `box_size` (w, h; one number: square) centred on the path through `points` (box
    centres in [0, 1]; one point: a still box), clamped into the frame by shifting, not shrinking.

    The F centres are spaced evenly by arc length, the first on the first point and the last on the last: the subject
    moves at constant speed along the path, however the points were spaced (equal time per segment would make it
    speed up on long segments and crawl on short ones, which is rarely what a drawn path means; per-frame timing is
    what a boxes file is for)."""
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise UsageError(f"frames {frames!r}: give an integer >= 1")
    width, height = _box_size(box_size)
    if not points:
        raise UsageError("the trajectory has no points: give at least one box centre x,y")
    path = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    outside = [i for i, point in enumerate(path) if not ((0.0 <= point) & (point <= 1.0)).all()]
    if outside:
        raise UsageError(f"trajectory point {outside[0] + 1} ({path[outside[0]][0]:g},{path[outside[0]][1]:g}) is "
                         f"outside [0, 1]: give box centres as fractions of the frame's width and height")
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    path = np.concatenate([path[:1], path[1:][steps > 0]])  # repeated points add no length (np.interp needs a rise)
    along = np.concatenate([[0.0], np.cumsum(steps[steps > 0])])
    targets = np.linspace(0.0, along[-1], frames)
    centres = np.stack([np.interp(targets, along, path[:, 0]), np.interp(targets, along, path[:, 1])], axis=1)
    x0 = np.clip(centres[:, 0] - width / 2, 0.0, 1.0 - width)
    y0 = np.clip(centres[:, 1] - height / 2, 0.0, 1.0 - height)
    boxes = np.stack([x0, y0, np.minimum(x0 + width, 1.0), np.minimum(y0 + height, 1.0)], axis=1)
    return check_boxes(boxes.tolist(), frames, "the trajectory")


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F, height, width] float masks: 1 on the cells of a height x width grid over the frame whose centres lie inside
    that frame's box. A box holding no cell centre (smaller than a cell of a coarse layer) marks the cell under its
    centre, so every frame has a target at every resolution."""
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    inside_x, inside_y = (xs >= x0) & (xs <= x1), (ys >= y0) & (ys <= y1)  # [F, width], [F, height]
    masks = (inside_y[:, :, None] & inside_x[:, None, :]).to(boxes.dtype)
    empty = masks.flatten(1).sum(dim=1) == 0
    if bool(empty.any()):
        column = ((x0 + x1)[:, 0] / 2 * width).long().clamp(0, width - 1)
        row = ((y0 + y1)[:, 0] / 2 * height).long().clamp(0, height - 1)
        frames = torch.nonzero(empty)[:, 0]
        masks[frames, row[frames], column[frames]] = 1.0
    return masks


def subject_token_indices(tokenizer: Any, prompt: str, subject: str) -> list[int]:
    """Positions of the subject's tokens in the prompt's token sequence (the core's phrase_token_indices); a
    UsageError when the prompt does not hold them, or holds them past what the text encoder reads."""
    try:
        indices = phrase_token_indices(tokenizer, prompt, subject)
    except ValueError:
        raise UsageError(f"subject '{subject}' is not in the prompt '{prompt}': give words of the prompt") from None
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and indices[-1] >= limit:
        raise UsageError(f"subject '{subject}' comes after the text encoder's {limit} tokens in the prompt "
                         f"'{prompt}': shorten the prompt or name the subject earlier")
    return indices


# --- layers and energy ---------------------------------------------------------------------------------------------


def direction_layers(unet: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The text cross-attention layers `patterns` (fnmatch) name, in model order; a ParamError on `layers` for a
    pattern naming only attention that does not attend to the text (motion modules, self-attention) or nothing."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    cross = cross_attention_layers(unet)
    others = [name for name, module in unet.named_modules()
              if isinstance(module, Attention) and name not in cross]
    not_text = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in cross)
                and any(fnmatch.fnmatchcase(name, p) for name in others)]
    if not_text:
        hint = f"direction control reads the spatial cross-attention layers, e.g. '{DEFAULT_LAYERS[0]}'"
        raise ParamError([("layers", f"'{p}' names only attention that does not attend to the text (a motion "
                                     + f"module's temporal attention, or self-attention): {hint}") for p in not_text])
    try:
        return matching_layers(unet, patterns)
    except ValueError as error:
        raise ParamError([("layers", str(error))]) from None


def _device_of(module: nn.Module) -> torch.device:
    """Where a model's weights are: the biases and masks are made there once, not copied at every forward."""
    return next(module.parameters()).device


def _conditional_rows(maps: torch.Tensor, guided: bool) -> torch.Tensor:
    return maps[maps.shape[0] // 2:] if guided else maps


def inside_fraction(maps: torch.Tensor, boxes: torch.Tensor, *, guided: bool = False) -> torch.Tensor:
    """[B, F]: per sample and frame, the fraction of the tokens' attention mass (summed over the K tokens) inside the
    frame's box, from one layer's maps [N, K, h, w] (N = B * F, frames sample-major). `guided`: the maps come from a
    classifier-free-guidance forward ([uncond, cond] rows, N = 2 * B * F) and only the conditional half counts."""
    maps = _conditional_rows(maps, guided)
    frames = boxes.shape[0]
    if maps.ndim != 4 or maps.shape[0] % frames:
        raise ValueError(f"maps {tuple(maps.shape)} are not [B * {frames} frames, K, h, w]")
    mass = maps.sum(dim=1).reshape(-1, frames, *maps.shape[-2:])  # [B, F, h, w]
    masks = box_masks(boxes.to(device=mass.device, dtype=mass.dtype), *maps.shape[-2:])
    total = mass.flatten(2).sum(dim=-1)
    return (mass * masks).flatten(2).sum(dim=-1) / total.clamp_min(torch.finfo(mass.dtype).tiny)


def direction_energy(maps: Sequence[torch.Tensor], boxes: torch.Tensor, *, guided: bool = False) -> torch.Tensor:
    """[B]: E = sum over frames of (1 - inside fraction)^2 (`inside_fraction`), averaged over the layers' maps
    (each [N, K, h, w], at its own resolution; `AttentionStore.spatial` gives them). In [0, F]; 0 when all the mass is
    inside the boxes. Differentiable in the maps."""
    if not maps:
        raise ValueError("no attention maps: record at least one layer")
    energies = [(1.0 - inside_fraction(m.float(), boxes, guided=guided)).pow(2).sum(dim=1) for m in maps]
    return torch.stack(energies).mean(dim=0)


def layer_maps(store: AttentionStore, latent_size: int | Sequence[int]) -> list[torch.Tensor]:
    """The store's maps of every layer it records, each [N, K, h, w] at the layer's resolution."""
    return [store.spatial(layer, latent_size) for layer in store.layers]


# --- settings ------------------------------------------------------------------------------------------------------


@dataclass
class DirectionControl:
    """Directional motion control's settings (a config section; command-line flags override it).

    mode: "none", "gradient" (layout guidance on the latents) or "reweight" (attention logits shifted, no gradients).
    steps: the first K denoising steps are steered. iterations: at most M gradient steps on the latents per steered
    step. eta: the gradient step size at the first step, `eta_schedule` from there: "constant", "linear" (to 0 at
    step K) or "cosine" (likewise). normalize_gradient: each sample's gradient scaled to unit RMS before the step,
    so eta is in latent-noise units whatever the gradient's scale (raw gradients of the energy vary by orders of
    magnitude between models and steps). threshold: a sample stops iterating once its E is below it (E is in
    [0, frames]). layers: fnmatch patterns of the spatial cross-attention layers used. strength: the reweight
    mode's logit shift (+ inside, - outside the box; 2 moved the subject's mass inside from ~0.15 to ~0.65 in a
    random tiny UNet).

    Cost: one gradient iteration costs about 1.1 guided forwards (measured, tiny UNetMotionModel on a CPU), so
    gradient mode samples in about 1 + 1.1 * steps * iterations / N the time of N plain steps: the defaults, 10 x 1,
    in ~1.45x at 25 steps. The reweight mode costs nothing measurable (one forward 1.01x) and nothing after K."""

    mode: str = "none"
    steps: int = 10
    iterations: int = 1
    eta: float = 0.3
    eta_schedule: str = "linear"
    normalize_gradient: bool = True
    threshold: float = 0.0
    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    strength: float = 2.0

    def problems(self) -> list[tuple[str, str]]:
        """Every bad field at once, [(field, message)]."""
        found = []
        if self.mode not in MODES:
            found.append(("mode", f"'{self.mode}' is not one of {', '.join(MODES)}"
                                  + did_you_mean(str(self.mode), MODES)))
        if self.eta_schedule not in ETA_SCHEDULES:
            found.append(("eta_schedule", f"'{self.eta_schedule}' is not one of {', '.join(ETA_SCHEDULES)}"
                                          + did_you_mean(str(self.eta_schedule), ETA_SCHEDULES)))
        for name in ("steps", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                found.append((name, f"must be an integer >= 1, got {value!r}"))
        for name, low, open_low in (("eta", 0.0, True), ("strength", 0.0, True), ("threshold", 0.0, False)):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < low or (open_low and value == low):
                found.append((name, f"must be a number {'>' if open_low else '>='} {low:g}, got {value!r}"))
        if not isinstance(self.normalize_gradient, bool):
            found.append(("normalize_gradient", f"must be true or false, got {self.normalize_gradient!r}"))
        if isinstance(self.layers, str) or not isinstance(self.layers, Sequence) or not self.layers:
            found.append(("layers", (f"must be a non-empty list of layer-name patterns, e.g. "
                                     f"[{DEFAULT_LAYERS[0]!r}], got {self.layers!r}")))
        elif not all(isinstance(p, str) and p for p in self.layers):
            found.append(("layers", f"every pattern must be a non-empty string, got {list(self.layers)!r}"))
        return found

    def check(self) -> DirectionControl:
        raise_param_problems(self.problems())
        return self

    def eta_at(self, step: int) -> float:
        """The gradient step size at denoising step `step` (0 from step `steps` on)."""
        if step >= self.steps:
            return 0.0
        progress = step / self.steps
        if self.eta_schedule == "linear":
            return self.eta * (1.0 - progress)
        if self.eta_schedule == "cosine":
            return self.eta * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.eta


# --- gradient mode -------------------------------------------------------------------------------------------------


class GradientGuidance:
    """A step hook for the core's `denoise` (layout guidance): at denoising step i < control.steps, up to
    control.iterations times, E of the latents z (`direction_energy` of a forward `model_fn(scale_model_input(z, t),
    t, context)` recorded in the control's layers) and z <- z - eta_i * dE/dz; returns the moved latents.

    `model_fn` and `context` are what `denoise` is given, but `context` only the conditional one (the prompt's text
    states, plus whatever else model_fn passes the UNet, e.g. timestep_cond): under classifier-free guidance only
    the conditional forward is steered, so the unconditional half never enters E. `tokens` [B, K]: the subject's token
    indices per sample; `boxes` [F, 4] (F: frames per sample; the latents' sample-major frames). Runs inside denoise's
    no_grad loop (gradients are enabled here, with respect to the latents only: the UNet's parameters get no .grad),
    keeps no graph between steps, and puts the UNet's processors back after each step.
    `energies`: per steered step, the batch's mean E before each of its gradient steps (what the tests and the
    benchmark read)."""

    def __init__(self, control: DirectionControl, unet: nn.Module, *, tokens: torch.Tensor, boxes: torch.Tensor,
                 model_fn: ModelFn, context: Any, scheduler: Any):
        self.control = control.check()
        self.layers = direction_layers(unet, control.layers)
        self.unet, self.tokens, self.boxes = unet, tokens, boxes.to(_device_of(unet))
        self.model_fn, self.context, self.scheduler = model_fn, context, scheduler
        self.energies: list[list[float]] = []

    def _energy(self, store: AttentionStore, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.model_fn(self.scheduler.scale_model_input(latents, t), t, self.context)
        return direction_energy(layer_maps(store, tuple(latents.shape[-2:])), self.boxes)

    def _recording(self) -> Any:
        return record_cross_attention(self.unet, self.layers, self.tokens, frames=self.boxes.shape[0])

    def energy(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E [B] of `latents` at timestep `t` (differentiable where gradients are enabled)."""
        with self._recording() as store:
            return self._energy(store, latents, t)

    def __call__(self, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
        eta = self.control.eta_at(step)
        if eta <= 0.0:
            return None
        z, seen = latents.detach(), []
        with torch.enable_grad(), self._recording() as store:  # the backward inside: checkpointing recomputes here
            for _ in range(self.control.iterations):
                z.requires_grad_(True)
                energy = self._energy(store, z, t)
                seen.append(float(energy.detach().mean()))
                moving = energy.detach() >= self.control.threshold
                if not bool(moving.any()):
                    break
                (gradient,) = torch.autograd.grad(energy.sum(), z)  # samples are independent: each gets its own
                if self.control.normalize_gradient:
                    rms = gradient.flatten(1).pow(2).mean(dim=1).sqrt().clamp_min(1e-12)
                    gradient = gradient / rms.view(-1, *[1] * (z.ndim - 1))
                z = (z - eta * gradient * moving.view(-1, *[1] * (z.ndim - 1)).to(z.dtype)).detach()
                store.clear()
        self.energies.append(seen)
        return z


# --- reweight mode -------------------------------------------------------------------------------------------------


def box_logit_bias(boxes: torch.Tensor, batch: int, latent_size: int | Sequence[int], strength: float,
                   unconditional_first: bool = True) -> LogitBias:
    """A `logit_bias` for the core recorder: +strength where a row's frame has its box, -strength elsewhere, on the
    layer's grid. Rows come in blocks of B * F (sample-major frames): one block is the prompt's; with n >= 2 blocks
    the first is the empty prompt's (classifier-free guidance's unconditional half, diffusers' [uncond, cond] order)
    and is left alone, the others (the prompt's, under any further condition such as an intensity level) shifted;
    `unconditional_first=False` (a batch without the empty prompt's block) shifts every block."""
    frames, per_grid = boxes.shape[0], {}

    def bias(layer: str, rows: int, positions: int) -> torch.Tensor:
        grid = layer_size(latent_size, positions)
        if grid not in per_grid:
            per_frame = strength * (2.0 * box_masks(boxes, *grid) - 1.0)  # [F, h, w]
            per_grid[grid] = per_frame.flatten(1).repeat(batch, 1)[:, :, None]  # [B * F, positions, 1]
        prompt = per_grid[grid]
        blocks, rest = divmod(rows, prompt.shape[0])
        if rest or not blocks:
            raise ValueError(f"{layer}: the layer sees {rows} rows, not a multiple of the boxes' {batch} samples x "
                             f"{frames} frames")
        if blocks == 1 or not unconditional_first:
            return prompt.repeat(blocks, 1, 1)
        return torch.cat([torch.zeros_like(prompt), prompt.repeat(blocks - 1, 1, 1)])

    return bias


@contextmanager
def reweight_attention(unet: nn.Module, layers: Sequence[str], tokens: torch.Tensor, boxes: torch.Tensor, *,
                       latent_size: int | Sequence[int], strength: float,
                       unconditional_first: bool = True) -> Iterator[AttentionStore]:
    """Inside the block, forwards of `unet` shift the logits of `tokens` [B, K] by +strength inside each frame's box
    and -strength outside (`box_logit_bias`) in the text cross-attention `layers` name; `boxes` [F, 4] (F frames per
    sample); `latent_size` (H, W) of the latents; `unconditional_first` as for box_logit_bias. Yields the store
    recording the shifted maps; the processors come back on exit."""
    names = direction_layers(unet, layers)
    bias = box_logit_bias(boxes.to(_device_of(unet)), tokens.shape[0], latent_size, strength, unconditional_first)
    with record_cross_attention(unet, names, tokens, frames=boxes.shape[0], logit_bias=bias) as store:
        yield store


# --- the entry a sampling loop uses --------------------------------------------------------------------------------


@contextmanager
def direction_control(control: DirectionControl, unet: nn.Module, *, tokens: torch.Tensor, boxes: torch.Tensor,
                      latent_size: int | Sequence[int], model_fn: ModelFn, context: Any,
                      scheduler: Any, unconditional_first: bool = True) -> Iterator[StepHook | None]:
    """The step hook to give `denoise` for `control.mode` (None for "none"); `context`: the conditional context
    (GradientGuidance); `unconditional_first`: whether the model's batches open with the empty prompt's block
    (box_logit_bias). Reweight mode shifts the logits while the block runs and `denoise` is in its first
    control.steps steps; from step K on its hook restores the default processors (no cost after K); every processor
    is back on exit."""
    control.check()
    if control.mode == "none":
        yield None
    elif control.mode == "gradient":
        yield GradientGuidance(control, unet, tokens=tokens, boxes=boxes, model_fn=model_fn, context=context,
                               scheduler=scheduler)
    else:
        with ExitStack() as reweighting:
            reweighting.enter_context(reweight_attention(unet, control.layers, tokens, boxes, latent_size=latent_size,
                                                         strength=control.strength,
                                                         unconditional_first=unconditional_first))

            def release_after_k(step: int, t: torch.Tensor, latents: torch.Tensor) -> None:
                if step >= control.steps:
                    reweighting.close()

            yield release_after_k

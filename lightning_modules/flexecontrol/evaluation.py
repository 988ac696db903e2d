"""How well generated images follow their conditions (controllability), and a callback that measures it while training.

Metrics, each on a batch of images [N, 3, H, W] (uint8 in 0..255, or float in [0, 1]) and the reference it is judged
against, each a mean over the images:

- `canny_f1`: edges of the generated image (cv2.Canny of its gray image, as the shards' canny maps are made) against
  the input canny map, binarised; pixel precision, recall and F1 per image (`canny_scores` gives all three).
- `edge_ssim`: SSIM (torchmetrics) between the input edge map and the generated image's edge map.
- `clip_score`: torchmetrics' CLIPScore of image and prompt with a CLIP from a local directory (model + processor),
  the scorer methods share (lightning_modules/clip_similarity.py).
- `depth_rmse`: a transformers depth-estimation model (local directory) on the generated images; its prediction and
  the reference depth map, each normalised per image to [0, 1] with near = 1, compared by RMSE.
- `segmentation_miou`: a segmenter's label map of the generated image against the reference labels, IoU per label
  present in either map, averaged. `BorderColourSegmenter` serves synthetic shapes (one shape on a plain background:
  foreground = pixels far from the border's colour; reference 0 = background, > 0 = shape); `PipelineSegmenter` runs
  a transformers image-segmentation model, whose reference is its own labels of the target image.
- `fid`: torchmetrics' FrechetInceptionDistance with a feature module (`CLIPImageFeatures`: a CLIP's projected image
  embedding). FID is biased upwards the more, the fewer images it is computed from: with the few images of a validation
  subset it is only comparable between runs that use the same number of images, never with published FIDs.

`evaluate_controllability` generates a batch's images with the module's `generate` (fixed seed), with its conditions
and, to compare, with none, and returns every metric that applies. `ControllabilityEvaluator` runs it on rank 0 on a
fixed held-out subset of the validation data at every k-th validation, logs `control/<metric>` and
`control/<metric>_no_control`, and appends one line per evaluation to `<run dir>/control_metrics.jsonl`.

Models named by a path are loaded once per process (cached by path) and are never trained.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from callbacks.rank_zero import rank_zero_metrics
from datamodules.errors import count_problems, raise_param_problems
from lightning_modules.clip_similarity import CLIP_WHAT, Device, as_uint8_images, clip_score, load_clip, local_model_dir
from lightning_modules.flexecontrol import shards

MODEL_PARAMS = {"clip_model": CLIP_WHAT,
                "depth_model": "a transformers depth-estimation model",
                "seg_model": "a transformers image-segmentation model",
                "fid_features": CLIP_WHAT}
BORDER_COLOUR = "border_colour"  # seg_model naming the built-in segmenter of synthetic shapes, not a model directory
METRIC_PREFIX = "control"
NO_CONTROL = "_no_control"
METRICS_FILE = "control_metrics.jsonl"


# ------------------------------------------------------------------------------------------------ image formats
def as_unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """Single-channel maps [N, H, W] as floats in [0, 1] from [N, H, W] or [N, C, H, W] (uint8 / 255; several channels
    merged by maximum)."""
    if maps.dim() == 4:
        maps = maps.amax(dim=1)
    if maps.dim() != 3:
        raise ValueError(f"maps must be [N, H, W] or [N, C, H, W], got shape {tuple(maps.shape)}")
    return maps.float() / 255.0 if maps.dtype == torch.uint8 else maps.detach().float()


def _check_pair(images: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what}: images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] != reference.shape[0] or images.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"{what}: {reference.shape[0]} maps of size {tuple(reference.shape[-2:])} for "
                         f"{images.shape[0]} images of size {tuple(images.shape[-2:])}; give one map per image, "
                         f"of its size")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: no images")


# -------------------------------------------------------------------------------------------------------- edges
def canny_edges(images: torch.Tensor, low: float = 100, high: float = 200) -> torch.Tensor:
    """bool [N, H, W]: cv2.Canny(gray, low, high) of each image (gray by cv2's RGB weights)."""
    import cv2

    rgb = as_uint8_images(images).permute(0, 2, 3, 1).cpu().numpy()
    edges = [cv2.Canny(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY), low, high) > 0 for image in rgb]
    return torch.from_numpy(np.stack(edges))


def _within(edges: torch.Tensor, tolerance: int) -> torch.Tensor:
    """bool [N, H*W]: pixels at most `tolerance` pixels (in x and y) from an edge pixel of `edges` [N, H, W]."""
    if tolerance == 0:
        return edges.flatten(1)
    near = F.max_pool2d(edges.float()[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)
    return near[:, 0].bool().flatten(1)


def edge_scores(predicted: torch.Tensor, reference: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """[N, 3]: pixel precision, recall and F1 of binary maps `predicted` against `reference` (both [N, H, W]). With a
    `tolerance`, a predicted edge pixel is correct within that many pixels of a reference edge and a reference pixel
    found within as many of a predicted one (edge benchmarks' matching tolerance: at a small size a one-pixel shift
    is not a miss). An empty map's precision (predicted) or recall (reference) is 1 when the other map is empty too,
    else 0: two empty maps score F1 1, one empty map F1 0."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    p, r = predicted.bool().flatten(1), reference.bool().flatten(1)
    n_p, n_r = p.sum(1).double(), r.sum(1).double()
    shape = predicted.shape
    precise = (p & _within(reference.bool().reshape(shape), tolerance)).sum(1).double()
    found = (r & _within(predicted.bool().reshape(shape), tolerance)).sum(1).double()
    both_empty = (n_p == 0) & (n_r == 0)
    precision = torch.where(n_p > 0, precise / n_p.clamp_min(1), both_empty.double())
    recall = torch.where(n_r > 0, found / n_r.clamp_min(1), both_empty.double())
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-12), torch.zeros_like(total))
    return torch.stack([precision, recall, f1], dim=1)


def canny_scores(generated: torch.Tensor, reference_edges: torch.Tensor, low: float = 100,
                 high: float = 200, tolerance: int = 0) -> dict[str, float]:
    """Mean pixel precision, recall and F1 of the generated images' Canny edges against the input edge maps
    (binarised at half their range), matched within `tolerance` pixels (edge_scores)."""
    _check_pair(generated, reference_edges, "canny")
    scores = edge_scores(canny_edges(generated, low, high), as_unit_maps(reference_edges).cpu() > 0.5,
                         tolerance).mean(0)
    return {"precision": float(scores[0]), "recall": float(scores[1]), "f1": float(scores[2])}


def canny_f1(generated: torch.Tensor, reference_edges: torch.Tensor, low: float = 100, high: float = 200,
             tolerance: int = 0) -> float:
    """Mean per-image F1 of the generated images' Canny edges against the input edge maps (`canny_scores`)."""
    return canny_scores(generated, reference_edges, low, high, tolerance)["f1"]


def ssim_kernel_size(height: int, width: int, largest: int = 11) -> int:
    """The SSIM window: torchmetrics' 11, or the largest odd size that fits a smaller image."""
    side = min(largest, height, width)
    return side if side % 2 else side - 1


def edge_ssim(generated: torch.Tensor, reference_edges: torch.Tensor, low: float = 100, high: float = 200) -> float:
    """SSIM (torchmetrics, data range 1) between the input edge maps and the generated images' Canny edge maps."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    _check_pair(generated, reference_edges, "edge_ssim")
    predicted = canny_edges(generated, low, high).float()[:, None]
    reference = as_unit_maps(reference_edges).cpu()[:, None]
    h, w = reference.shape[-2:]
    if min(h, w) < 3:
        raise ValueError(f"edge_ssim: images of {h}x{w} pixels are too small for SSIM (at least 3x3)")
    metric = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=ssim_kernel_size(h, w))
    return float(metric(predicted, reference))


# --------------------------------------------------------------------------------------------------------- CLIP
class CLIPImageFeatures(nn.Module):
    """A CLIP's projected image embeddings [N, D] of uint8 images [N, 3, H, W] (resized to the model's input size,
    normalised as its processor does): FID's `feature=` module. `num_features` = D tells torchmetrics its width."""

    def __init__(self, model_path: str | os.PathLike):
        super().__init__()
        clip, processor = load_clip(model_path)
        self.clip = clip
        self.image_size = int(clip.config.vision_config.image_size)
        self.num_features = int(clip.config.projection_dim)
        image_processor = processor.image_processor
        self.register_buffer("mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = as_uint8_images(images).float() / 255.0
        pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
        return self.clip.get_image_features((pixels - self.mean) / self.std)


def fid(real: torch.Tensor, generated: torch.Tensor, feature_extractor: nn.Module) -> float:
    """torchmetrics' FrechetInceptionDistance between two image sets (at least 2 images each) in the features of
    `feature_extractor` (uint8 [N, 3, H, W] -> [N, D]; e.g. CLIPImageFeatures). With few images the value is biased
    upwards by the covariance estimate: compare only FIDs computed from the same number of images."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.shape[0] < 2 or generated.shape[0] < 2:
        raise ValueError(f"fid: needs at least 2 images in each set, got {real.shape[0]} real and "
                         f"{generated.shape[0]} generated")
    device = next(iter(feature_extractor.parameters()), torch.empty(0)).device
    metric = FrechetInceptionDistance(feature=feature_extractor, normalize=False).to(device)
    metric.update(as_uint8_images(real).to(device), real=True)
    metric.update(as_uint8_images(generated).to(device), real=False)
    return float(metric.compute())


# -------------------------------------------------------------------------------------------------------- depth
@functools.lru_cache(maxsize=4)
def _load_pipeline(task: str, directory: str) -> Any:
    return shards.load_pipeline(task, Path(directory), "model")


def load_pipeline(task: str, model_path: str | os.PathLike) -> Any:
    """A transformers pipeline for `task` from a local model directory, loaded once per process as make_shards loads
    the models that make condition maps (shards.py: on the GPU when there is one, tried on a blank image first);
    UsageError naming the directory when it holds no such model."""
    return _load_pipeline(task, local_model_dir(model_path, f"a transformers {task} model and its image processor"))


def _pil_images(images: torch.Tensor) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(image) for image in as_uint8_images(images).permute(0, 2, 3, 1).cpu().numpy()]


def normalise_per_image(maps: torch.Tensor) -> torch.Tensor:
    """[N, H, W] min-max normalised per map to [0, 1]; a constant map becomes 0."""
    flat = maps.double().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    spread = high - low
    normalised = torch.where(spread > 0, (flat - low) / spread.clamp_min(1e-12), torch.zeros_like(flat))
    return normalised.view_as(maps)


def estimate_nearness(images: torch.Tensor, model_path: str | os.PathLike, batch_size: int = 8) -> torch.Tensor:
    """[N, H, W] in [0, 1]: the depth model's prediction for each image at the image's size, normalised per image,
    near = 1 (metric depth models' output is inverted first, as the shards' depth maps are made)."""
    pipe = load_pipeline("depth-estimation", model_path)
    size = tuple(images.shape[-2:])
    maps = []
    for result in pipe(_pil_images(images), batch_size=batch_size):
        predicted = result["predicted_depth"].detach().float().cpu()
        predicted = predicted.reshape(-1, *predicted.shape[-2:])[:1]
        if tuple(predicted.shape[-2:]) != size:
            predicted = F.interpolate(predicted[None], size=size, mode="bilinear", align_corners=False)[0]
        maps.append(predicted[0])
    stacked = torch.stack(maps)
    return normalise_per_image(-stacked if shards.depth_is_metric(pipe.model.config) else stacked)


def depth_rmse(generated: torch.Tensor, reference_depth: torch.Tensor, model_path: str | os.PathLike,
               batch_size: int = 8) -> float:
    """Mean per-image RMSE between the depth model's estimate of each generated image and its reference depth map
    (near = bright), both normalised per image to [0, 1]."""
    _check_pair(generated, reference_depth, "depth_rmse")
    estimated = estimate_nearness(generated, model_path, batch_size)
    reference = normalise_per_image(as_unit_maps(reference_depth).cpu())
    return float((estimated - reference).square().flatten(1).mean(1).sqrt().mean())


# ------------------------------------------------------------------------------------------------- segmentation
class Segmenter(Protocol):
    """Label maps of images: `segmenter(images [N, 3, H, W]) -> int64 [N, H, W]`. `binary`: its labels are
    background 0 / foreground 1, so a reference label map is binarised (> 0) before it is compared."""

    binary: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class BorderColourSegmenter:
    """Foreground = pixels whose colour differs from the image's border colour (the per-channel median of its
    outermost pixels) by more than `threshold` (0..255) in some channel: the segmenter of synthetic-control data,
    which draws one shape on a plain background."""

    binary = True

    def __init__(self, threshold: int = 48):
        if not 0 < threshold < 255:
            raise ValueError(f"threshold must be in (0, 255), got {threshold}")
        self.threshold = threshold

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = as_uint8_images(images).cpu().int()
        border = torch.cat([pixels[:, :, 0, :], pixels[:, :, -1, :], pixels[:, :, :, 0], pixels[:, :, :, -1]], dim=2)
        colour = border.median(dim=2).values[:, :, None, None]
        return ((pixels - colour).abs().amax(dim=1) > self.threshold).long()


class PipelineSegmenter:
    """A transformers image-segmentation model (local directory) as a Segmenter: label id = the model's id of a
    segment's label + 1 (0 where no segment lies), a later segment painted over an earlier one."""

    binary = False

    def __init__(self, model_path: str | os.PathLike, batch_size: int = 8):
        self.pipe = load_pipeline("image-segmentation", model_path)
        self.batch_size = batch_size
        self.ids = {str(label): int(i) + 1 for i, label in self.pipe.model.config.id2label.items()}

    def label_id(self, label: str) -> int:
        # a label outside id2label (some post-processors rename) gets the next free id, the same one each time
        return self.ids.setdefault(label, max(self.ids.values(), default=0) + 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        maps = []
        for segments in self.pipe(_pil_images(images), batch_size=self.batch_size):
            labels = torch.zeros(size, dtype=torch.long)
            for segment in segments:
                mask = torch.from_numpy(np.asarray(segment["mask"].convert("L")) > 0)
                if tuple(mask.shape) != size:
                    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0
                labels[mask] = self.label_id(str(segment["label"]))
            maps.append(labels)
        return torch.stack(maps)


def mean_iou(predicted: torch.Tensor, reference: torch.Tensor) -> float:
    """Per image, the mean over the labels present in either map of |P_c & R_c| / |P_c | R_c|; mean over images."""
    scores = []
    for p, r in zip(predicted.long(), reference.long(), strict=True):
        labels = torch.unique(torch.cat([p.flatten(), r.flatten()]))
        ious = [float(((p == c) & (r == c)).sum()) / float(((p == c) | (r == c)).sum()) for c in labels.tolist()]
        scores.append(sum(ious) / len(ious))
    return float(np.mean(scores))


def as_label_maps(labels: torch.Tensor) -> torch.Tensor:
    """int64 [N, H, W] from [N, H, W] or [N, 1, H, W] label maps; float maps are taken as 8-bit ids / 255 (the
    data's condition maps)."""
    if labels.dim() == 4:
        labels = labels[:, 0]
    if labels.is_floating_point():
        labels = (labels * 255).round()
    return labels.long().cpu()


def segmentation_miou(generated: torch.Tensor, reference_labels: torch.Tensor,
                      segmenter: Segmenter | str | os.PathLike) -> float:
    """mIoU (`mean_iou`) of the segmenter's labels of the generated images against `reference_labels`; a path is a
    transformers image-segmentation model (PipelineSegmenter). A binary segmenter's reference is binarised (> 0):
    background / foreground."""
    if isinstance(segmenter, (str, os.PathLike)):
        segmenter = PipelineSegmenter(segmenter)
    _check_pair(generated, reference_labels, "segmentation_miou")
    reference = as_label_maps(reference_labels)
    if segmenter.binary:
        reference = (reference > 0).long()
    return mean_iou(segmenter(generated).cpu(), reference)


# ---------------------------------------------------------------------------------------------------- evaluation
def merged_condition(maps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W]: a type's present inputs ([B, K, C, H, W] with present [B, K]) merged by maximum (0 where none)."""
    return (maps * present.to(maps.dtype)[:, :, None, None, None]).amax(dim=1)


def concat_batches(batches: Sequence[Mapping[str, Any]], limit: int | None = None) -> dict[str, Any]:
    """Batches (dicts of tensors and lists, one entry per sample) joined into one, of at most `limit` samples, on the
    CPU."""
    if not batches:
        raise ValueError("no batches to evaluate")
    joined: dict[str, Any] = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        if isinstance(values[0], torch.Tensor):
            joined[key] = torch.cat([v.detach().cpu() for v in values])[:limit]
        elif isinstance(values[0], (list, tuple)):
            joined[key] = [item for v in values for item in v][:limit]
        else:  # a value for the whole batch, not per sample
            joined[key] = values[0]
    return joined


def _generate(module: Any, batch: Mapping[str, Any], with_control: bool, *, steps: int, guidance: float, seed: int,
              batch_size: int) -> torch.Tensor:
    """The module's images [N, 3, H, W] in [0, 1] on the CPU, in chunks of `batch_size` from one generator seeded
    `seed` (so the same seed gives the same noise with and without control); without control, the base model
    alone."""
    maps, present = module.condition_inputs(batch) if with_control else ({}, {})
    prompts = list(batch["caption"])
    resolution = int(batch["pixel_values"].shape[-1])
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, len(prompts), batch_size):
        part = slice(start, start + batch_size)
        images.append(module.generate(prompts[part], {k: v[part] for k, v in maps.items()},
                                      {k: v[part] for k, v in present.items()}, resolution=resolution, steps=steps,
                                      guidance=guidance, generator=generator, control=with_control).float().cpu())
    return ((torch.cat(images) + 1) / 2).clamp(0, 1)


def _image_metrics(images: torch.Tensor, batch: Mapping[str, Any], references: dict[str, tuple[torch.Tensor, Any]],
                   judges: dict[str, Any], device: Device, canny_tolerance: int = 0) -> dict[str, float]:
    """Every metric that applies to these generated images (see evaluate_controllability)."""
    out: dict[str, float] = {}
    if "canny" in references:
        edges, keep = references["canny"]
        scores = canny_scores(images[keep], edges, tolerance=canny_tolerance)
        out.update(canny_f1=scores["f1"], canny_precision=scores["precision"], canny_recall=scores["recall"],
                   edge_ssim=edge_ssim(images[keep], edges))
    if "depth" in references and judges["depth"] is not None:
        depth, keep = references["depth"]
        out["depth_rmse"] = depth_rmse(images[keep], depth, judges["depth"])
    if "seg" in references:
        labels, keep = references["seg"]
        out["seg_miou"] = segmentation_miou(images[keep], labels, judges["seg"])
    if judges["clip"] is not None:
        out["clip_score"] = clip_score(images, batch["caption"], judges["clip"], device)
    if judges["fid"] is not None and images.shape[0] >= 2:
        out["fid"] = fid(references["target"][0], images, judges["fid"])
    return out


def evaluate_controllability(module: Any, batch_or_samples: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                             steps: int = 20, guidance: float = 3.0, seed: int = 0,
                             clip_model: str | os.PathLike | None = None, depth_model: str | os.PathLike | None = None,
                             seg_model: str | os.PathLike | Segmenter | None = None,
                             fid_features: str | os.PathLike | nn.Module | None = None,
                             compare_without_control: bool = True, batch_size: int = 8,
                             canny_tolerance: int = 0) -> dict[str, float]:
    """Controllability of `module` (a FlexEControlModule, or anything with `condition_channels`, `condition_inputs`,
    `generate` and `device`) on a control batch (ControlData's fields) or a list of them.

    Generates every sample's image from its caption under its conditions (seed `seed`, `steps` steps, CFG
    `guidance`) and, with `compare_without_control`, from its caption alone with the same noise; returns per image
    set (keys `<metric>` and `<metric>_no_control`): for a canny type, `canny_f1`, `canny_precision`, `canny_recall`,
    `edge_ssim`; for a depth type with `depth_model`, `depth_rmse`; for a seg type with `seg_model`, `seg_miou`
    (`seg_model="border_colour"`: BorderColourSegmenter against the seg maps, for synthetic shapes; a model
    directory: the reference is its labels of the target image); with `clip_model`,
    `clip_score`; with `fid_features` (a CLIP directory, or a feature module), `fid` against the target images (at
    least 2 samples). A condition metric is over the samples that have that condition; the references are the
    batch's maps of the type, several inputs of one type merged by maximum."""
    batch = dict(batch_or_samples) if isinstance(batch_or_samples, Mapping) else concat_batches(batch_or_samples)
    device = getattr(module, "device", None)
    maps, present = module.condition_inputs(batch)
    target = ((batch["pixel_values"].float().cpu() + 1) / 2).clamp(0, 1)
    references: dict[str, tuple[torch.Tensor, Any]] = {"target": (target, slice(None))}
    judges: dict[str, Any] = {"depth": depth_model, "clip": clip_model, "seg": None, "fid": fid_features}
    if isinstance(fid_features, (str, os.PathLike)):
        judges["fid"] = CLIPImageFeatures(fid_features).to(device or "cpu")
    for name in ("canny", "depth", "seg"):
        keep = present[name].bool().any(dim=1).cpu() if name in maps else None
        if name not in module.condition_channels or keep is None or not bool(keep.any()):
            continue
        if name == "seg" and seg_model is None:
            continue  # which segmenter fits the images is the user's call: real images need a model
        reference = merged_condition(maps[name].float(), present[name]).cpu()[keep]
        if name == "seg":
            if isinstance(seg_model, str) and seg_model == BORDER_COLOUR:
                judges["seg"] = BorderColourSegmenter()
            elif isinstance(seg_model, (str, os.PathLike)):
                judges["seg"] = PipelineSegmenter(seg_model)
            else:
                judges["seg"] = seg_model
            if not judges["seg"].binary:  # a model's own label space: its labels of the target image
                reference = judges["seg"](target[keep])
        references[name] = (reference, keep)
    settings = {"steps": steps, "guidance": guidance, "seed": seed, "batch_size": batch_size}
    out = _image_metrics(_generate(module, batch, True, **settings), batch, references, judges, device,
                         canny_tolerance)
    if compare_without_control:
        plain = _image_metrics(_generate(module, batch, False, **settings), batch, references, judges, device,
                               canny_tolerance)
        out.update({f"{name}{NO_CONTROL}": value for name, value in plain.items()})
    return out


# ------------------------------------------------------------------------------------------------------ callback
class ControllabilityEvaluator(Callback):
    """`evaluate_controllability` at every `every_n_val`-th validation (never in the sanity check), on rank 0, on a
    fixed held-out subset: the first `subset_size` samples rank 0's validation loader gives in the first validation
    (kept on the CPU; a resumed run takes the same ones again, as the validation data is not shuffled). The same
    `seed` at every evaluation, so two evaluations differ only by the weights. Every rank logs the same values
    (`control/<metric>`, `control/<metric>_no_control`: rank 0 broadcasts them, so a monitored metric agrees across
    ranks); rank 0 appends `{"step", "epoch", "num_samples", "subset": [keys], "metrics"}` to
    `<default_root_dir>/control_metrics.jsonl`.

    clip_model, depth_model, seg_model, fid_features: local model directories (see evaluate_controllability);
    seg_model "border_colour" is the segmenter of synthetic shapes (BorderColourSegmenter). batch_size: images per
    generate call. canny_tolerance: pixels within which an edge counts as matched (edge_scores).
    """

    def __init__(self, subset_size: int = 16, every_n_val: int = 1, steps: int = 20, guidance: float = 3.0,
                 seed: int = 0, clip_model: str | None = None, depth_model: str | None = None,
                 seg_model: str | None = None, fid_features: str | None = None, compare_without_control: bool = True,
                 batch_size: int = 8, canny_tolerance: int = 0):
        raise_param_problems(self.config_problems(
            {"subset_size": subset_size, "every_n_val": every_n_val, "steps": steps, "guidance": guidance,
             "batch_size": batch_size, "clip_model": clip_model, "depth_model": depth_model, "seg_model": seg_model,
             "fid_features": fid_features, "canny_tolerance": canny_tolerance}))
        self.canny_tolerance = canny_tolerance
        self.subset_size, self.every_n_val, self.steps, self.guidance = subset_size, every_n_val, steps, guidance
        self.seed, self.batch_size, self.compare_without_control = seed, batch_size, compare_without_control
        self.clip_model, self.depth_model, self.seg_model, self.fid_features = (clip_model, depth_model, seg_model,
                                                                                fid_features)
        self.validations = 0  # full validations seen (saved in checkpoints: a resumed run keeps the rhythm)
        self._parts: list[dict[str, Any]] = []
        self._subset: dict[str, Any] | None = None
        # Every rank logs the same, already complete values: Lightning's advice to sync them does not apply.
        warnings.filterwarnings("ignore", message=rf".*self\.log\('{re.escape(METRIC_PREFIX)}/")

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """(param, message) for values that cannot work: counts below 1, a negative guidance, and with `check_files`
        model paths that are not local directories."""
        problems = count_problems(params, ("subset_size", "every_n_val", "steps", "batch_size"))
        tolerance = params.get("canny_tolerance", 0)
        if isinstance(tolerance, int) and tolerance < 0:
            problems.append(("canny_tolerance", f"must be >= 0, got {tolerance}"))
        guidance = params.get("guidance", 1.0)
        if isinstance(guidance, (int, float)) and guidance < 0:
            problems.append(("guidance", f"must be >= 0, got {guidance}"))
        for name, what in MODEL_PARAMS.items():
            value = params.get(name)
            if name == "seg_model" and value == BORDER_COLOUR:
                continue
            if check_files and value is not None and not Path(str(value)).expanduser().is_dir():
                problems.append((name, f"no such directory: {value} (the local directory of {what})"))
        return problems

    @property
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, subset_size=self.subset_size)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    @property
    def subset(self) -> dict[str, Any] | None:
        """The held-out samples as one batch (None until the first validation has ended)."""
        return self._subset

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        missing = [name for name in ("generate", "condition_inputs") if not callable(getattr(pl_module, name, None))]
        if missing or not isinstance(getattr(pl_module, "condition_channels", None), dict):
            raise TypeError(f"ControllabilityEvaluator: {type(pl_module).__name__} is not a control model (it needs "
                             f"generate(), condition_inputs() and condition_channels, as FlexEControlModule has)")
        types = pl_module.condition_channels
        if self.depth_model is not None and "depth" not in types:
            rank_zero_warn(f"ControllabilityEvaluator: depth_model is given but the model has no depth condition "
                           f"(types: {', '.join(types)}); depth RMSE is not computed")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._subset is not None or dataloader_idx:
            return
        have = sum(len(part["caption"]) for part in self._parts)
        if have < self.subset_size:
            self._parts.append(concat_batches([batch], self.subset_size - have))

    def _freeze_subset(self) -> None:
        if self._subset is None and self._parts:
            self._subset = concat_batches(self._parts, self.subset_size)
            self._parts = []
            if len(self._subset["caption"]) < self.subset_size:
                rank_zero_warn(f"ControllabilityEvaluator: the first validation gave {len(self._subset['caption'])} "
                               f"samples, fewer than subset_size={self.subset_size}; evaluating on those")

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """evaluate_controllability of the subset with this callback's settings."""
        return evaluate_controllability(
            pl_module, self._subset, steps=self.steps, guidance=self.guidance, seed=self.seed,
            clip_model=self.clip_model, depth_model=self.depth_model, seg_model=self.seg_model,
            fid_features=self.fid_features, compare_without_control=self.compare_without_control,
            batch_size=self.batch_size, canny_tolerance=self.canny_tolerance)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._freeze_subset()
        self.validations += 1
        if self.validations % self.every_n_val:
            return
        def evaluate() -> dict[str, float]:
            if self._subset is None:
                raise RuntimeError("ControllabilityEvaluator: the validation loader gave no samples to evaluate on")
            return self.evaluate(pl_module)

        metrics = rank_zero_metrics(trainer, evaluate, "ControllabilityEvaluator")
        if metrics is None:
            return
        if trainer.is_global_zero:
            self.write(trainer, metrics)
        for name, value in metrics.items():
            pl_module.log(f"{METRIC_PREFIX}/{name}", value, sync_dist=False)

    def write(self, trainer: L.Trainer, metrics: dict[str, float]) -> Path:
        """Append this evaluation's line to `<default_root_dir>/control_metrics.jsonl`."""
        path = Path(trainer.default_root_dir) / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = self._subset.get("__key__") if self._subset is not None else None
        line = {"step": trainer.global_step, "epoch": trainer.current_epoch,
                "num_samples": len(self._subset["caption"]), "subset": list(keys) if keys is not None else None,
                "metrics": metrics}
        with open(path, "a", encoding="utf-8") as f:  # one short line per evaluation, flushed before the next step
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return path


__all__ = ["BorderColourSegmenter", "CLIPImageFeatures", "ControllabilityEvaluator", "PipelineSegmenter",
           "canny_edges", "canny_f1", "canny_scores", "clip_score", "depth_rmse", "edge_scores", "edge_ssim",
           "evaluate_controllability", "fid", "mean_iou", "segmentation_miou"]

"""Text-image similarity with a CLIP from a local directory, as the methods' evaluations score their samples:
torchmetrics' CLIPScore of images and prompts (`clip_score`), and its mean over the frames of videos
(`clip_frame_similarity`).

The CLIP is a transformers CLIPModel saved with its CLIPProcessor (model.save_pretrained and
CLIPProcessor.save_pretrained into one directory), loaded once per process (cached by path) and never trained. A
missing or incomplete directory is a UsageError naming it. `local_model_dir` and `load_model_and_processor` are the
same checks for any model an evaluation loads from a path.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from datamodules.errors import UsageError, first_line

Device = str | torch.device | None
CLIP_WHAT = "a CLIP model with its processor"


def as_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] uint8: uint8 as it is, floats taken as [0, 1]; one channel becomes three."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 3, H, W] (or [N, 1, H, W]), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _pooled(output: Any) -> torch.Tensor:
    """transformers 4.x returns the projected features, 5.x an output object holding them as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ProjectedCLIP(nn.Module):
    """A transformers CLIPModel whose get_image_features / get_text_features return the projected embeddings as
    tensors, as torchmetrics' CLIPScore expects of them (transformers 5 returns output objects)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.clip.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _pooled(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def local_model_dir(path: str | os.PathLike, what: str) -> str:
    """The resolved local directory `path`; UsageError naming it when it is not a directory (`what` was saved
    there: e.g. "a CLIP model with its processor")."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UsageError(f"{path}: not a local directory (give the directory {what} was saved to)")
    return str(directory.resolve())


def load_model_and_processor(directory: str, model_class: Any, processor_class: Any, what: str,
                             processor_name: str = "processor") -> tuple[nn.Module, Any]:
    """`model_class.from_pretrained(directory)` (in eval mode, without gradients) and
    `processor_class.from_pretrained(directory)`; UsageError naming the directory and `what` should be there when
    either fails."""
    try:
        model = model_class.from_pretrained(directory).eval().requires_grad_(False)
        processor = processor_class.from_pretrained(directory)
    except Exception as e:  # noqa: BLE001 - a directory without the files fails in many ways; all mean the same
        raise UsageError(f"{directory}: not {what} ({first_line(e)}); save both there "
                         f"(model.save_pretrained and {processor_name}.save_pretrained)") from e
    return model, processor


@functools.lru_cache(maxsize=4)
def _load_clip(directory: str) -> tuple[ProjectedCLIP, Any]:
    from transformers import CLIPModel, CLIPProcessor

    model, processor = load_model_and_processor(directory, CLIPModel, CLIPProcessor, CLIP_WHAT, "CLIPProcessor")
    return ProjectedCLIP(model), processor


def load_clip(model_path: str | os.PathLike) -> tuple[ProjectedCLIP, Any]:
    """The CLIP model (as ProjectedCLIP) and its CLIPProcessor saved in a local directory, loaded once per process;
    UsageError naming the directory when they are not both there."""
    return _load_clip(local_model_dir(model_path, CLIP_WHAT))


def clip_score(images: torch.Tensor, prompts: Sequence[str], model_path: str | os.PathLike,
               device: Device = None) -> float:
    """torchmetrics' CLIPScore (mean over images of max(100 cos(image, prompt), 0)) with the CLIP in `model_path`, run
    on `device` (default: the CPU)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(prompts) != images.shape[0]:
        raise ValueError(f"clip_score: {len(prompts)} prompts for {images.shape[0]} images")
    parts = load_clip(model_path)
    device = torch.device(device or "cpu")
    metric = CLIPScore(model_name_or_path=lambda: parts).to(device)  # its state where its scores are computed
    return float(metric(as_uint8_images(images).to(device), list(prompts)))


def clip_frame_similarity(videos: torch.Tensor, prompts: Sequence[str], model_path: str | os.PathLike,
                          device: Device = None) -> float:
    """The mean over every frame of every video ([B, F, 3, H, W], uint8 or floats in [0, 1]) of its clip_score
    against its video's prompt: each video's mean over its frames, averaged over the videos (all have F frames)."""
    if videos.dim() != 5:
        raise ValueError(f"clip_frame_similarity: videos must be [B, F, 3, H, W], got shape {tuple(videos.shape)}")
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"clip_frame_similarity: {len(prompts)} prompts for {videos.shape[0]} videos")
    frames = videos.shape[1]
    return clip_score(videos.flatten(0, 1), [prompt for prompt in prompts for _ in range(frames)], model_path, device)

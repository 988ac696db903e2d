"""Multiple choice by CLIP similarity: the option whose text is nearest the video's frames (DESIGN.md, Benchmarks).

A video's feature is the mean of its frames' normalised CLIP image features (CLIP preprocessing: shorter side
resized to the encoder's input size, centre crop, CLIP mean/std), normalised again; each option is the text
`template.format(question=..., option=...)`, and the response is the letter of the option with the highest cosine
similarity.

The CLIP is any transformers CLIP checkpoint (HF id or local directory with its tokenizer), optionally with a prompt
learner that encodes the option texts instead of the plain text encoder (its meta-net conditioned on the video
feature). This module knows no method: it knows a prompt learner only as an object with `class_names`, `set_classes`,
`n_ctx`, `meta_net` and `forward(image_features, rows_per_image=R)`. `ClipScorer.from_module` wraps an in-memory
CLIP and prompt learner (a LightningModule's `benchmark_responder()`) without taking them over; a method that can
score from its own checkpoints subclasses ClipScorer in its folder (lightning_modules/cpl/inference.py `CPLScorer`).

Every question is scored on its own (its video's frames in fixed chunks, its option texts in one pass), so an
answer never depends on which other questions share a call -- sharded and single-process evaluations agree.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.benchmarks.questions import Question
from datamodules.errors import raise_param_problems
from datamodules.param_types import ModelSource
from datamodules.transforms import center_crop, normalize, resize_shorter
from lightning_modules.frozen_clip import FrozenCLIP
from lightning_modules.responders import DEFAULT_OPTION_TEMPLATE, fitted_option_texts, template_problems

DEFAULT_TEMPLATE = DEFAULT_OPTION_TEMPLATE


def _first_parameter(module: nn.Module) -> torch.Tensor:
    return next(iter(module.parameters()))


def default_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class ClipScorer:
    """Responder (lightning_modules/responders.py): `respond(questions, frames)` -> option letters, e.g. ["B", "a"].

    pretrained: HF id or local directory of a CLIP (model + tokenizer).
    template: each option's text; {question} and {option} are filled in. When a text is longer than the text
        encoder's positions, leading words of the question are dropped (never the option, which is what differs).
    batch_size: frames per image-encoder pass (a video's frames are split into fixed chunks).
    device: where the model runs (default: cuda if available, else cpu).
    """

    needs_frames = True

    def __init__(self, pretrained: Annotated[str, ModelSource()], template: str = DEFAULT_TEMPLATE, batch_size: int = 8,
                 device: str | None = None):
        raise_param_problems(self.config_problems({"pretrained": pretrained, "template": template,
                                                   "batch_size": batch_size}))
        self._configure(FrozenCLIP(pretrained=pretrained).to(default_device(device)), None, template, batch_size)

    @classmethod
    def from_module(cls, clip: nn.Module, prompts: nn.Module | None = None, template: str = DEFAULT_TEMPLATE,
                    batch_size: int = 8) -> "ClipScorer":
        """Score with an in-memory CLIP (lightning_modules.frozen_clip.FrozenCLIP) and, optionally, a prompt
        learner; both stay where they are (device, mode) and the prompt learner's classes are restored after
        every call."""
        scorer = cls.__new__(cls)
        scorer._configure(clip, prompts, template, batch_size)
        return scorer

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """(param, message) for every value that cannot work, without loading anything (launch/evaluate.py)."""
        problems = []
        if "pretrained" in params and not params["pretrained"]:
            problems.append(("pretrained", "give a CLIP: a Hub id or a local directory with its tokenizer"))
        problems += template_problems(params.get("template", DEFAULT_TEMPLATE))
        if params.get("batch_size", 1) < 1:
            problems.append(("batch_size", f"must be >= 1, got {params['batch_size']}"))
        return problems

    def _configure(self, clip: nn.Module, prompts: nn.Module | None, template: str, batch_size: int) -> None:
        raise_param_problems(ClipScorer.config_problems({"template": template, "batch_size": batch_size},
                                                        check_files=False))
        self.clip, self.prompts, self.template, self.batch_size = clip, prompts, template, batch_size
        # positions a prompt learner adds around the text: its context vectors and the closing period
        self._reserved = 0 if prompts is None else prompts.n_ctx + len(clip.token_ids("."))

    # -- texts --------------------------------------------------------------------------------------------------
    def option_texts(self, question: Question) -> list[str]:
        """The texts scored for a question's options, in option order, fitted to the text encoder's length."""
        budget = self.clip.max_length - 2 - self._reserved  # start and end tokens
        return fitted_option_texts(question, self.template, lambda text: len(self.clip.token_ids(text)) <= budget)

    # -- features -----------------------------------------------------------------------------------------------
    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> CLIP inputs [T, 3, S, S] (resize shorter side, centre crop, CLIP mean/std)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got shape {frames.shape}")
        size = self.clip.image_size
        images = torch.tensor(np.asarray(frames, dtype=np.uint8)).permute(0, 3, 1, 2)
        return normalize(center_crop(resize_shorter(images, size), size))

    def video_feature(self, frames: np.ndarray) -> torch.Tensor:
        """[D]: the normalised mean of the frames' normalised image features."""
        weight = _first_parameter(self.clip)
        pixels = self.pixels(frames)
        features = torch.cat([self.clip.encode_image(chunk.to(weight.device, weight.dtype)).float()
                              for chunk in pixels.split(self.batch_size)])
        return F.normalize(F.normalize(features, dim=-1).mean(0), dim=0)

    def text_features(self, texts: list[str], video: torch.Tensor) -> torch.Tensor:
        """[options, D] features of a question's option texts (prompts set by the caller's `_prompting`)."""
        if self.prompts is None:
            return self.clip.encode_texts(texts).float()
        self.prompts.set_classes(texts, unique=False)  # options may repeat a text (MMWorld)
        if self.prompts.meta_net is None:
            return self.prompts().float()
        return self.prompts(video.unsqueeze(0), rows_per_image=len(texts))[0].float()

    @contextmanager
    def _prompting(self) -> Iterator[None]:
        """Inside, the prompt learner is re-prompted per question; afterwards it holds its classes again (a training
        module's validation and training steps rely on them)."""
        if self.prompts is None:
            yield
            return
        previous = list(self.prompts.class_names)
        try:
            yield
        finally:
            self.prompts.set_classes(previous, unique=False)

    # -- answers ------------------------------------------------------------------------------------------------
    def option_scores(self, questions: Sequence[Question], frames: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Per question, {letter: cosine similarity of the option's text to the video}."""
        if len(questions) != len(frames):
            raise ValueError(f"{len(questions)} questions but {len(frames)} frame arrays")
        scores = []
        videos: dict[int, torch.Tensor] = {}  # questions of one video often share its frame array
        # inference_mode(False): tensors made here (the restored prompts) stay usable by training afterwards
        with torch.inference_mode(False), torch.no_grad(), self._prompting():
            for question, array in zip(questions, frames):
                if id(array) not in videos:
                    videos[id(array)] = self.video_feature(array)
                video = videos[id(array)]
                text = F.normalize(self.text_features(self.option_texts(question), video), dim=-1)
                similarity = (text @ video.to(text.device)).tolist()
                scores.append(dict(zip(question.options, similarity)))
        return scores

    def respond(self, questions: Sequence[Question], frames: Sequence[np.ndarray]) -> list[str]:
        """The letter of each question's most similar option (the first of equals)."""
        return [max(s, key=s.get) for s in self.option_scores(questions, frames)]

"""The CLIP multiple-choice scorer: nearest option by similarity, question trimming (CPL's scorer of its
checkpoints: tests/cpl/test_scorer.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel

from datamodules.errors import ParamError
from datamodules.transforms import CLIP_MEAN, CLIP_STD
from lightning_modules.clip_scorer import ClipScorer


def reference_scores(clip_dir: Path, texts: list[str], frames: np.ndarray) -> torch.Tensor:
    """Cosine similarities computed with transformers alone (PIL-free CLIP preprocessing written out here)."""
    model, tokenizer = CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)
    size = model.config.vision_config.image_size
    images = torch.tensor(frames).permute(0, 3, 1, 2).float()
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    images = F.interpolate(images, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True,
                           align_corners=False).round().clamp(0, 255)
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    images = images[..., top:top + size, left:left + size] / 255
    pixels = (images - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        image = image if isinstance(image, torch.Tensor) else image.pooler_output
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
    video = F.normalize(F.normalize(image, dim=-1).mean(0), dim=0)
    return F.normalize(text, dim=-1) @ video


def test_picks_the_option_nearest_the_video(clip_bench):
    scorer = ClipScorer(pretrained=str(clip_bench["clip"]), template="{option}", device="cpu")
    questions, frames = clip_bench["questions"], clip_bench["frames"]
    scores = scorer.option_scores(questions, frames)
    answers = scorer.respond(questions, frames)
    for q, f, score, answer in zip(questions, frames, scores, answers):
        expected = reference_scores(clip_bench["clip"], list(q.options.values()), f)
        assert torch.allclose(torch.tensor(list(score.values())), expected, atol=1e-4)
        assert answer == list(q.options)[int(expected.argmax())]
    assert len(set(answers)) > 1  # not one letter for everything


def test_a_known_nearest_option_wins(clip_bench, monkeypatch):
    """Text features built so that 'down' lies along the video feature: every question offering it answers it."""
    scorer = ClipScorer(pretrained=str(clip_bench["clip"]), device="cpu")
    dim = 16
    monkeypatch.setattr(scorer.clip, "encode_image", lambda pixels: torch.ones(pixels.shape[0], dim))

    def encode_texts(texts: list[str]) -> torch.Tensor:
        others = torch.eye(dim)[torch.arange(len(texts))] - 0.5  # pointing away from the video feature
        return torch.stack([torch.ones(dim) if t.endswith(" down") else r for t, r in zip(texts, others)])

    monkeypatch.setattr(scorer.clip, "encode_texts", encode_texts)
    asked = [q for q in clip_bench["questions"] if "down" in q.options.values()]
    frames = [clip_bench["frames"][clip_bench["questions"].index(q)] for q in asked]
    assert asked and scorer.respond(asked, frames) == [
        next(k for k, v in q.options.items() if v == "down") for q in asked]


def test_long_questions_lose_leading_words_never_the_option(clip_bench):
    scorer = ClipScorer(pretrained=str(clip_bench["clip"]), device="cpu")
    q = clip_bench["questions"][0]
    short = scorer.option_texts(q)
    assert short == [f"{q.question} {option}" for option in q.options.values()]
    long = replace(q, question="in this video of a red circle on a background " * 6 + q.question)
    texts = scorer.option_texts(long)
    budget = scorer.clip.max_length - 2
    for text, option in zip(texts, long.options.values()):
        assert text.endswith(f" {option}") and len(scorer.clip.token_ids(text)) <= budget
        assert long.question.endswith(text[: -len(option) - 1])  # the end of the question is kept
    # no more is dropped than needed: one more leading word would not fit
    words = long.question.split()
    previous = words[-len(texts[0].split()[:-1]) - 1]
    assert any(len(scorer.clip.token_ids(f"{previous} {text}")) > budget for text in texts)


def test_refuses_what_it_cannot_score(clip_bench):
    with pytest.raises(ParamError) as refused:
        ClipScorer(pretrained="", template="{question}", batch_size=0)
    assert [name for name, _ in refused.value.problems] == ["pretrained", "template", "batch_size"]
    with pytest.raises(ParamError, match="template: .*only"):
        ClipScorer(pretrained=str(clip_bench["clip"]), template="{option} {answer}")

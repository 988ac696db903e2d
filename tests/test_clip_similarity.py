"""The shared CLIP text-image similarity (lightning_modules/clip_similarity.py): clip_frame_similarity is the mean of
clip_score over every frame; bad shapes and a missing CLIP directory are refused."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import UsageError
from lightning_modules.clip_similarity import clip_frame_similarity, clip_score

SIZE = 16
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from lightning_modules.clip_pretrain.random_clip import write_scoring_clip

    return write_scoring_clip(tmp_path_factory.mktemp("clip-similarity") / "clip", image_size=SIZE)


def test_frame_similarity_is_the_mean_clip_score_over_frames(clip_dir):
    videos = torch.rand(2, 3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    per_frame = [clip_score(videos[b, t:t + 1], PROMPTS[b:b + 1], clip_dir) for b in range(2) for t in range(3)]
    assert min(per_frame) > 0 and max(per_frame) > min(per_frame)
    assert clip_frame_similarity(videos, PROMPTS, clip_dir) == pytest.approx(sum(per_frame) / 6, rel=1e-4)
    uint8 = (videos * 255).round().to(torch.uint8)
    assert clip_frame_similarity(uint8, PROMPTS, clip_dir) == pytest.approx(sum(per_frame) / 6, rel=1e-4)


def test_bad_videos_prompts_and_paths_are_refused(clip_dir, tmp_path):
    videos = torch.rand(2, 3, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        clip_frame_similarity(videos[0], PROMPTS, clip_dir)
    with pytest.raises(ValueError, match="1 prompts for 2 videos"):
        clip_frame_similarity(videos, PROMPTS[:1], clip_dir)
    with pytest.raises(UsageError, match="no-clip: not a local directory"):
        clip_frame_similarity(videos, PROMPTS, tmp_path / "no-clip")

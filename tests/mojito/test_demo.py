"""The Mojito demo's pieces: its preparation (cached base, data, the links configs/mojito/demo.yaml names) and that the
shipped config runs as shipped on them; its tables on a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.synthetic_shapes import COLORS
from lightning_modules.mojito import demo
from lightning_modules.diffusion.cache import REPORT
from lightning_modules.mojito.cache import tiny_text_to_video_path
from tests.conftest import REPO, run_fit

CONFIG = REPO / "configs" / "mojito" / "demo.yaml"
PRETRAIN_STEPS = 2  # the fit below only has to run on the base (what it learns is the full demo's business)


def test_the_shipped_config_runs_as_shipped_on_what_the_demo_prepared(tmp_path):
    root = tmp_path / "runs" / "demo"  # the demo's default root, seen from tmp_path as from the repository root
    paths = demo.prepare(root, seed=0, pretrain_steps=PRETRAIN_STEPS, num_train=32)
    cfg = yaml.safe_load(CONFIG.read_text())
    named = [cfg["model"]["params"]["base"]["pretrained"], cfg["data"]["params"]["train"], cfg["data"]["params"]["val"]]
    assert named == [str(Path(p).relative_to(tmp_path)) for p in (paths["base"], paths["train"], paths["val"])]
    entry = tiny_text_to_video_path(root / "cache" / "tiny-t2v", image_size=demo.IMAGE_SIZE, frames=demo.FRAMES,
                                    num_train=32, max_steps=PRETRAIN_STEPS, seed=0)
    assert paths["base"].resolve() == entry.resolve()
    assert json.loads((entry / REPORT).read_text())["steps"] == PRETRAIN_STEPS
    result = run_fit("--config", str(CONFIG), "trainer.max_steps=2", "trainer.val_check_interval=2", cwd=tmp_path,
                     timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "runs" / "mojito-demo" / "checkpoints" / "last.ckpt").is_file()
    # prepared again with the same settings: nothing is trained or written again
    before = os.stat(entry / REPORT).st_mtime_ns
    again = demo.prepare(root, seed=0, pretrain_steps=PRETRAIN_STEPS, num_train=32)
    assert again == paths and os.stat(entry / REPORT).st_mtime_ns == before


def test_subject_speed_follows_the_subjects_colour_only():
    red = COLORS["red"]
    video = torch.zeros(4, 3, demo.IMAGE_SIZE, demo.IMAGE_SIZE)
    for t in range(4):  # a 3-pixel red square moving 2 pixels right per frame; a blue one flickering beside it
        video[t, :, 2:5, 1 + 2 * t:4 + 2 * t] = torch.tensor([220, 30, 30]).view(3, 1, 1) / 255
        video[t, :, 10:13, 10:13] = torch.tensor([30, 60, 220] if t % 2 else [245, 245, 245]).view(3, 1, 1) / 255
    assert demo.subject_speed(video, red) == pytest.approx(2.0)
    video[1:3] = 0  # found in frames 0 and 3 only: no two consecutive frames
    assert demo.subject_speed(video, red) is None

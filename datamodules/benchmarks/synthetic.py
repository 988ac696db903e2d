"""A tiny VLM4D-format benchmark on synthetic videos, for tests and demos without the real data.

Each video (datamodules/video.py write_video) shows one coloured shape of the project's palette
(datamodules/synthetic_shapes.py, drawn as the synthetic shard kinds draw it) moving left, right, up or down across a
gray background. Questions mirror the released files (ShijieZhou-UCLA/VLM4D, data/*.json): "What
direction is the red circle moving?" with the directions as choices, and false-positive questions about a shape
that is not in the video ("What direction is the blue square moving?", answer "no blue square there"), so both
synthetic categories (directional, fp) exist. A real_mc-style file asks the same about the same videos with ids on
both sides of 922, so the real split has exo- and ego-centric questions too. Everything is seeded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.benchmarks.questions import HF_PATH_MARK, VLM4D_EXO_MAX_ID
from datamodules.synthetic_shapes import COLORS, DIRECTIONS, SHAPES, moving_shape_clip
from datamodules.video import write_video

VIDEO_URL = "https://huggingface.co/datasets/shijiezhou/VLM4D/" + HF_PATH_MARK
BACKGROUND = "gray"
FPS = 8


def crossing_clip(shape: str, color: str, direction: str, frames: int, size: int) -> np.ndarray:
    """uint8 [frames, size, size, 3]: the shape crossing the frame's middle in `direction`, from one edge to the
    other (start and end inside the frame)."""
    radius = max(size / 8, 1.5)
    near, far = radius + 1, size - radius - 1  # the centre's first and last position along the way
    middle = size / 2
    start = {"right": (near, middle), "left": (size - near, middle),
             "down": (middle, near), "up": (middle, size - near)}[direction]
    video, _ = moving_shape_clip(shape=shape, color=color, background=BACKGROUND, direction=direction, start=start,
                                 speed=(far - near) / max(frames - 1, 1), radius=radius, frames=frames, size=size)
    return video


def _choices(texts: list[str], rng: random.Random) -> dict[str, str]:
    shuffled = list(texts)
    rng.shuffle(shuffled)
    return {letter: text for letter, text in zip("ABCD", shuffled)}


def _entry(number: int, video: str, question: str, choices: dict[str, str], answer: str) -> dict[str, Any]:
    return {"id": f"validation_{number}", "video": VIDEO_URL + video, "question_type": "multiple-choice",
            "question": question, "choices": choices, "answer": answer}


def write_synthetic_vlm4d(out: Path, *, videos: int = 12, frames: int = 8, size: int = 32, seed: int = 0,
                          real: bool = True) -> dict[str, Any]:
    """Videos under out/videos/videos_synthetic/, out/synthetic_mc.json and (with `real`) out/real_mc.json.

    Every video gets a directional question; every third video also a false-positive question. Returns
    {"video_root": str, "questions": {split: str path}, "videos": [relative paths]} -- the arguments a
    benchmark evaluation takes.
    """
    if videos < 1 or frames < 2 or size < 8 or size % 2:
        raise ValueError(f"need videos >= 1, frames >= 2 and an even size >= 8 (got {videos}, {frames}, {size})")
    out = Path(out)
    rng = random.Random(seed)
    root = out / "videos"
    synthetic, real_entries, written = [], [], []
    objects = [(c, s) for c in COLORS for s in SHAPES]
    for index in range(videos):
        color, shape = objects[rng.randrange(len(objects))]
        direction = list(DIRECTIONS)[index % len(DIRECTIONS)]  # every direction equally often
        relative = f"videos_synthetic/synthetic_{index:03d}.mp4"
        write_video(root / relative, crossing_clip(shape, color, direction, frames, size), FPS)
        written.append(relative)
        asked = f"What direction is the {color} {shape} moving?"
        synthetic.append(_entry(len(synthetic) + 1, relative, asked, _choices(list(DIRECTIONS), rng), direction))
        if index % 3 == 0:
            absent_color, absent_shape = next((c, s) for c, s in rng.sample(objects, len(objects))
                                              if c != color and s != shape)
            absent = f"no {absent_color} {absent_shape} there"
            synthetic.append(_entry(len(synthetic) + 1, relative,
                                    f"What direction is the {absent_color} {absent_shape} moving?",
                                    _choices(["left", "right", "not moving", absent], rng), absent))
        # real-style ids: the first half exo-centric (<= 922), the second half ego-centric (> 922)
        number = VLM4D_EXO_MAX_ID - videos // 2 + 1 + index
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
        real_entries.append(_entry(number, relative, f"Which direction did the {color} {shape} move?",
                                   _choices([direction, opposite, "not moving", f"no {shape} there"], rng),
                                   direction))
    paths = {"synthetic": out / "synthetic_mc.json"}
    paths["synthetic"].write_text(json.dumps(synthetic, indent=1) + "\n")
    if real:
        paths["real"] = out / "real_mc.json"
        paths["real"].write_text(json.dumps(real_entries, indent=1) + "\n")
    return {"video_root": str(root), "questions": {k: str(v) for k, v in paths.items()}, "videos": written}

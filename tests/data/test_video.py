"""datamodules/video.py: decoding PyAV-written clips, the mp4 writer, resize/crop, optical flow and intensity levels;
and the synthetic shapes they are drawn with (datamodules/synthetic_shapes.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from datamodules.synthetic_shapes import BACKGROUNDS, COLORS, moving_shape_clip, paint_shape
from datamodules.video import (BOX_COLOUR, MOTION_LEVELS, STRIP_GAP, VideoDecodeError, decode_frames, frame_count,
                               frame_strip, mean_flow, motion_level, motion_quantiles, open_video, resize_crop,
                               write_gif, write_png, write_video)


def ramp(frames: int = 6, h: int = 16, w: int = 24) -> np.ndarray:
    """Frame t is uniformly grey 30 + 40 t: every decoded frame says which one it is."""
    return np.stack([np.full((h, w, 3), 30 + 40 * t, np.uint8) for t in range(frames)])


def block_clip(speed: int, frames: int = 6, size: int = 32) -> np.ndarray:
    clip = np.full((frames, size, size, 3), 40, np.uint8)
    for t in range(frames):
        clip[t, 10:20, 4 + speed * t:14 + speed * t] = 220
    return clip


def frame_values(frames: list[np.ndarray]) -> list[int]:
    return [round((float(f.mean()) - 30) / 40) for f in frames]


# ------------------------------------------------------------------------------------------------------- decoding
def test_decode_counts_and_returns_the_frames_written(tmp_path):
    path = write_video(tmp_path / "ramp.mp4", ramp(), fps=8)
    frames, count = decode_frames(path)
    assert count == 6 and frame_values(frames) == [0, 1, 2, 3, 4, 5]
    assert frames[0].shape == (16, 24, 3) and frames[0].dtype == np.uint8
    assert np.abs(np.stack(frames).astype(int) - ramp().astype(int)).max() <= 3  # near-lossless writer
    frames, count = decode_frames(str(path), [4, 1, 1])
    assert frame_values(frames) == [1, 4] and count == 5  # each once, in order; decoding stopped after frame 4
    frames, count = decode_frames(path, [2, 9])
    assert frame_values(frames) == [2] and count == 6  # the video is shorter than the largest index
    assert decode_frames(path, ()) == ([], 6)  # counts every frame, converts none
    in_memory, count = decode_frames(path.read_bytes())
    assert count == 6 and all(np.array_equal(a, b) for a, b in zip(in_memory, decode_frames(path)[0]))
    with open_video(path) as container:
        assert frame_count(container) == 6


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such video file"):
        decode_frames(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoDecodeError, match="bad.mp4: cannot open as a video") as caught:
        decode_frames(bad)
    assert type(caught.value.__cause__).__name__ == "InvalidDataError"
    with pytest.raises(VideoDecodeError, match="cannot open as a video"):
        decode_frames(b"garbage bytes")


# ----------------------------------------------------------------------------------------------- resize and crop
def pyav_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize("size", [8, 16, 32])
def test_tiny_clips_read_back_as_mp4_and_gif(tmp_path, size):
    clip = ramp(frames=5, h=size, w=size)
    mp4 = pyav_frames(write_video(tmp_path / "c.mp4", clip, fps=8))
    gif = pyav_frames(write_gif(tmp_path / "c.gif", clip, fps=8))
    for frames in (mp4, gif):
        assert len(frames) == 5 and frames[0].shape == (size, size, 3)
        assert frame_values(frames) == [0, 1, 2, 3, 4]
    assert np.array_equal(np.stack(gif), clip)  # grey levels are in the GIF palette exactly
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_gif_loops_and_plays_as_long_as_its_clip(tmp_path):
    from PIL import Image

    with Image.open(write_gif(tmp_path / "ramp.gif", ramp(frames=4, h=8, w=8), fps=5)) as im:
        assert im.n_frames == 4 and im.info["loop"] == 0 and im.info["duration"] == 200
    with Image.open(write_gif(tmp_path / "still.gif", np.full((4, 8, 8, 3), 90, np.uint8), fps=5)) as im:
        assert im.n_frames == 1 and im.info["duration"] == 800  # identical frames: stored once, delays summed


def test_odd_sizes_are_padded_to_even_in_the_mp4(tmp_path):
    clip = np.zeros((3, 9, 7, 3), np.uint8)
    clip[:, 8], clip[:, :, 6] = (200, 200, 200), (90, 90, 90)  # the last row and column, which are repeated
    frames = np.stack(pyav_frames(write_video(tmp_path / "odd.mp4", clip, fps=8))).astype(int)
    assert frames.shape == (3, 10, 8, 3)
    assert np.abs(frames[:, 9, :6] - 200).max() <= 12 and np.abs(frames[:, :8, 7] - 90).max() <= 12
    assert np.abs(frames[:, :8, :6]).max() <= 12


@pytest.mark.parametrize("bad", [np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8),
                                 np.zeros((2, 8, 8, 3), np.float32)])
def test_writers_refuse_what_is_not_a_clip(tmp_path, bad):
    for write in (write_video, write_gif):
        with pytest.raises(ValueError, match="uint8 \\[T, H, W, 3\\]"):
            write(tmp_path / "x", bad, fps=8)
    assert list(tmp_path.iterdir()) == []


def test_the_strip_puts_frames_side_by_side_with_their_boxes_outlined(tmp_path):
    clip = ramp(frames=3, h=8, w=10)
    boxes = [[0.0, 0.0, 1.0, 1.0], [0.2, 0.25, 0.5, 0.75], [0.95, 0.9, 1.0, 1.0]]
    strip = frame_strip(clip, boxes)
    assert strip.shape == (8, 3 * 10 + 2 * STRIP_GAP, 3) and strip.dtype == np.uint8
    assert np.all(strip[:, 10:10 + STRIP_GAP] == 255)  # the gap
    second = strip[:, 10 + STRIP_GAP:20 + STRIP_GAP]
    outline = np.zeros((8, 10), bool)  # x 2..4 (0.2*10 .. ceil(0.5*10)-1), y 2..5 (0.25*8 .. ceil(0.75*8)-1)
    outline[2:6, 2] = outline[2:6, 4] = outline[2, 2:5] = outline[5, 2:5] = True
    assert np.all(second[outline] == BOX_COLOUR)
    assert np.array_equal(second[~outline], clip[1][~outline])  # inside and outside untouched
    first = strip[:, :10]
    assert np.all(first[0] == BOX_COLOUR) and np.all(first[:, 9] == BOX_COLOUR)
    assert np.array_equal(first[1:7, 1:9], clip[0][1:7, 1:9])
    assert np.all(strip[7, 20 + 2 * STRIP_GAP + 9] == BOX_COLOUR)  # a box at the corner still outlines a pixel
    assert np.array_equal(frame_strip(clip), np.concatenate(
        [clip[0], np.full((8, 2, 3), 255, np.uint8), clip[1], np.full((8, 2, 3), 255, np.uint8), clip[2]], axis=1))
    with pytest.raises(ValueError, match="2 boxes for 3 frames"):
        frame_strip(clip, boxes[:2])
    from PIL import Image

    with Image.open(write_png(tmp_path / "strip.png", strip)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), strip)


def test_resize_crop_maps_source_pixels_into_the_crop():
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[12:36, 28:36] = 255  # a bar in the middle
    image, scale, ox, oy = resize_crop(frame, 32)
    assert image.shape == (32, 32, 3) and image.flags["C_CONTIGUOUS"]
    assert scale == pytest.approx(32 / 48) and (ox, oy) == (5.0, 0.0)  # 64 * 2/3 = 43 wide, 11 cropped
    x0, y0, x1, y1 = 28 * scale - ox, 12 * scale - oy, 36 * scale - ox, 36 * scale - oy
    assert image[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1].min() > 200
    assert image[:, :int(x0) - 1].max() == 0 and image[:, int(x1) + 2:].max() == 0


# -------------------------------------------------------------------------------------------------- optical flow
def test_mean_flow_is_zero_for_a_still_clip_and_grows_with_speed():
    still, slow, fast = mean_flow(block_clip(0)), mean_flow(block_clip(1)), mean_flow(block_clip(3))
    assert still == pytest.approx(0.0, abs=1e-3)
    assert 0.02 < slow < fast
    assert mean_flow(block_clip(3)[:1]) == 0.0  # one frame: no pair to compare


def test_mean_flow_of_a_decoded_clip_matches_its_frames(tmp_path):
    path = write_video(tmp_path / "moving.mp4", block_clip(2), fps=8)
    frames, _ = decode_frames(path)
    assert mean_flow(np.stack(frames)) == pytest.approx(mean_flow(block_clip(2)), rel=0.2)


# ---------------------------------------------------------------------------------------------- intensity levels
def test_quantiles_cut_a_dataset_into_equal_levels():
    motions = [float(m) for m in range(100)]
    qs = motion_quantiles(motions)
    assert len(qs) == MOTION_LEVELS - 1 and qs == sorted(qs) and qs == [19.8, 39.6, 59.4, 79.2]
    levels = [motion_level(m, qs) for m in motions]
    assert [levels.count(level) for level in range(1, MOTION_LEVELS + 1)] == [20, 20, 20, 20, 20]
    assert motion_quantiles([2.5]) == [2.5] * 4
    with pytest.raises(ValueError, match="no motion values"):
        motion_quantiles([])


def test_motion_level_edges():
    qs = [1.0, 2.0, 3.0, 4.0]
    assert motion_level(0.0, qs) == 1 and motion_level(-1.0, qs) == 1
    assert motion_level(1.0, qs) == 1  # on a cut point: the lower level
    assert motion_level(1.000001, qs) == 2 and motion_level(3.5, qs) == 4
    assert motion_level(4.0, qs) == 4 and motion_level(4.5, qs) == MOTION_LEVELS and motion_level(math.inf, qs) == 5
    assert motion_level(7.0, [2.0, 2.0, 2.0, 2.0]) == 5 and motion_level(2.0, [2.0, 2.0, 2.0, 2.0]) == 1
    with pytest.raises(ValueError, match="4 non-decreasing cut points"):
        motion_level(1.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        motion_level(1.0, [1.0, 3.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="NaN"):
        motion_level(float("nan"), qs)


# ---------------------------------------------------------------------------------------------- synthetic shapes
def test_moving_shape_clip_draws_the_palette_along_its_boxes():
    clip, boxes = moving_shape_clip(shape="square", color="green", background="navy", direction="down",
                                    start=(10.0, 8.0), speed=2.5, radius=3.0, frames=4, size=24)
    assert clip.shape == (4, 24, 24, 3) and clip.dtype == np.uint8
    assert boxes == [[7.0, 5.0 + 2.5 * t, 13.0, 11.0 + 2.5 * t] for t in range(4)]
    for frame, (x0, y0, x1, y1) in zip(clip, boxes):
        assert tuple(frame[int((y0 + y1) / 2), int((x0 + x1) / 2)]) == COLORS["green"]
        assert tuple(frame[0, 0]) == BACKGROUNDS["navy"]
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        paint_shape(None, "star", 1.0, 1.0, 1.0, 0)


def test_benchmark_videos_use_the_shard_palette(tmp_path):
    from datamodules.benchmarks.synthetic import write_synthetic_vlm4d

    written = write_synthetic_vlm4d(tmp_path, videos=8, frames=4, size=32, seed=3, real=False)
    questions = json.loads(Path(written["questions"]["synthetic"]).read_text())
    color_of = {q["video"].rsplit("/", 1)[-1]: q["question"].split()[4] for q in questions
                if q["answer"] in ("left", "right", "up", "down")}  # "What direction is the red circle moving?"
    # green and yellow are where the benchmark's own palette differed (by 30 and 20 in RGB): they must be drawn here
    assert {"green", "yellow"} <= set(color_of.values())
    for video in written["videos"]:
        frames, count = decode_frames(tmp_path / "videos" / video)
        assert count == 4
        color = COLORS[color_of[video.rsplit("/", 1)[-1]]]
        assert (np.abs(frames[1].astype(int) - color).sum(-1) <= 12).sum() >= 8  # a triangle of radius 4: ~16

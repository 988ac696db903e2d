"""The generic video logger (callbacks/video_logger.py) on a toy LightningModule that offers video_rows, in a real
Trainer: files on the validation schedule, readable by PyAV, and TensorBoard's video summaries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.image_logger import GAP
from callbacks.video_logger import TENSORBOARD_TAG, VideoLogger, check_video_rows, video_grid
from datamodules.errors import ParamError
from tests.test_image_logger import SIDE, Colours, fit
from tests.test_image_logger import Toy as ImageToy

FRAMES = 3


class Toy(ImageToy):
    """video_rows: "levels" (sample i is flat grey i/8, brightening by 0.1 a frame) and "noise / seed"."""

    def __init__(self):
        super().__init__()
        self.names = []

    def video_rows(self, batch, generator):
        self.names.append(list(batch["name"]))
        n = batch["colour"].shape[0]
        grey = batch["colour"][:, 0, None] + 0.1 * torch.arange(FRAMES)[None]
        return {"levels": grey[:, :, None, None, None].expand(n, FRAMES, 3, SIDE, SIDE).clamp(0, 1),
                "noise / seed": torch.rand(n, FRAMES, 3, SIDE, SIDE, generator=generator)}


class NoRows(Toy):
    video_rows = None


def read(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_videos_follow_the_schedule_and_read_back_with_their_frames(tmp_path):
    module = Toy()
    fit(tmp_path, module, VideoLogger(every_n_val=2, max_videos=3, seed=5, fps=4), steps=4)
    root = tmp_path / "videos"
    assert sorted(p.name for p in root.iterdir()) == ["step_2", "step_4"]  # never the sanity check
    assert sorted(p.name for p in (root / "step_2").iterdir()) == ["levels.gif", "levels.mp4", "noise___seed.gif",
                                                                 "noise___seed.mp4"]
    assert module.names == [["s0", "s1", "s2"]] * 2  # the first batch's first max_videos samples
    width, height = GAP + 3 * (SIDE + GAP), GAP + SIDE + GAP
    for suffix in ("mp4", "gif"):
        clip = read(root / "step_2" / f"levels.{suffix}").astype(int)
        assert clip.shape == (FRAMES, height, width, 3)
        for column in range(3):  # sample i: grey i/8 + 0.1 t
            left = GAP + column * (SIDE + GAP)
            cell = clip[:, GAP:GAP + SIDE, left:left + SIDE]
            expected = np.round(np.clip(column / 8 + 0.1 * np.arange(FRAMES), 0, 1) * 255)
            assert np.abs(cell.mean(axis=(1, 2, 3)) - expected).max() <= 6  # MPEG-4 blurs into the white gaps
        assert np.abs(clip[:, 0] - 255).max() <= 8  # the white gap above
    noise = (torch.rand(3, FRAMES, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5)) * 255).round()
    gif = read(root / "step_4" / "noise___seed.gif")
    assert np.abs(gif[1, GAP:GAP + SIDE, GAP:GAP + SIDE].astype(int)
                  - noise[0, 1].permute(1, 2, 0).numpy()).max() <= 40  # GIF's 256-colour palette
    assert np.array_equal(gif, read(root / "step_2" / "noise___seed.gif"))  # same samples, same seed


def test_rows_go_to_tensorboard_as_gif_videos(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    fit(tmp_path, Toy(), VideoLogger(max_videos=2, upscale=2), steps=2)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={IMAGES: 0})
    events.Reload()
    assert set(events.Tags()[IMAGES]) == {f"{TENSORBOARD_TAG}/levels", f"{TENSORBOARD_TAG}/noise / seed"}
    videos = events.Images(f"{TENSORBOARD_TAG}/levels")
    assert [video.step for video in videos] == [1, 2]
    assert (videos[0].height, videos[0].width) == (2 * (GAP + SIDE + GAP), 2 * (GAP + 2 * (SIDE + GAP)))
    assert videos[0].encoded_image_string.startswith(b"GIF89a")
    assert read(tmp_path / "videos" / "step_1" / "levels.mp4").shape == (FRAMES, videos[0].height,
                                                                        videos[0].width, 3)


def test_without_tensorboard_only_files_and_directory_is_honoured(tmp_path):
    out = tmp_path / "elsewhere"
    fit(tmp_path, Toy(), VideoLogger(directory=str(out)), steps=1, tensorboard=False)
    assert [p.name for p in out.iterdir()] == ["step_1"]
    assert not (tmp_path / "videos").exists()


def test_a_module_without_video_rows_is_refused_at_fit_start(tmp_path):
    with pytest.raises(TypeError, match=r"VideoLogger: NoRows has no video_rows\(batch, generator\)"):
        fit(tmp_path, NoRows(), VideoLogger())


@pytest.mark.parametrize("rows, message", [
    ({}, "no rows"),
    ({"a": torch.zeros(2, 3, SIDE, SIDE)}, "row 'a'"),
    ({"a": torch.zeros(1, 0, 3, SIDE, SIDE)}, "row 'a'"),
    ({"a": [1]}, "row 'a'"),
    ({"a b": torch.zeros(1, 2, 3, SIDE, SIDE), "a/b": torch.zeros(1, 2, 3, SIDE, SIDE)}, "share the file name"),
])
def test_rows_that_are_not_videos_are_refused(rows, message):
    with pytest.raises(ValueError, match=message):
        check_video_rows(rows)


def test_the_grid_plays_videos_side_by_side():
    videos = torch.stack([torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)])
    videos[0, 1] = 0.5
    clip = video_grid(videos)
    assert clip.shape == (2, GAP + 4 + GAP, GAP + 2 * (5 + GAP), 3) and clip.dtype == np.uint8
    assert np.all(clip[0, GAP:GAP + 4, GAP:GAP + 5] == 0) and np.all(clip[1, GAP:GAP + 4, GAP:GAP + 5] == 128)
    assert np.all(clip[:, GAP:GAP + 4, 2 * GAP + 5:2 * GAP + 10] == 255)


def test_other_ranks_draw_nothing_and_bad_arguments_are_reported_together(tmp_path):
    logger, module = VideoLogger(), Toy()
    trainer = SimpleNamespace(is_global_zero=False, sanity_checking=False, default_root_dir=str(tmp_path),
                              global_step=3, loggers=[])
    logger.on_validation_batch_end(trainer, module, None, next(iter(DataLoader(Colours(), batch_size=4))), 0)
    logger.on_validation_epoch_end(trainer, module)
    assert module.names == [] and logger.validations == 1 and not (tmp_path / "videos").exists()
    with pytest.raises(ParamError) as e:
        VideoLogger(every_n_val=0, max_videos=0, fps=0, upscale=0)
    assert {name for name, _ in e.value.problems} == {"every_n_val", "max_videos", "fps", "upscale"}

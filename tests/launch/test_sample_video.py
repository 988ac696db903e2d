"""launch/sample.py on a text-to-video model (launch/video_sampling.py), through `main(argv)` as a user runs it: a
tiny random Mojito checkpoint, videos with and without target boxes, and every bad input as one line, exit code 2 and
nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks.model_target import MODEL_TARGET_KEY, model_target
from datamodules.video import BOX_COLOUR, box_pixels, decode_frames, frame_strip
from launch import sample as sample_cli
from lightning_modules.diffusion.tiny import write_tiny_text_to_video
from lightning_modules.flexecontrol.inference import MODULE_TARGET as IMAGE_MODEL_TARGET
from lightning_modules.mojito.direction import DirectionControl, boxes_from_trajectory
from lightning_modules.mojito.evaluation import as_uint8_video
from lightning_modules.mojito.inference import load_for_inference
from lightning_modules.mojito.module import MojitoModule
from tests.launch.test_sample_export import run_main

SIZE, FRAMES, MAX_FRAMES = 16, 4, 4
PROMPT = "a red ball rolling on grass"
FAST = ["--steps", "2", "--device", "cpu"]
BOXES = [[0.0, 0.25, 0.5, 0.75], [0.1, 0.25, 0.6, 0.75], [0.3, 0.25, 0.8, 0.75], [0.5, 0.25, 1.0, 0.75]]
STRIP_WIDTH = FRAMES * SIZE + (FRAMES - 1) * 2  # frame_strip's default gap


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    """A tiny random Mojito checkpoint (its trained sets perturbed, so the intensity input does something), the same
    model without an intensity input and an image model's checkpoint (headers only: both are refused before any
    model loads), a config naming the base, and boxes files."""
    root = tmp_path_factory.mktemp("sample-video")
    base = write_tiny_text_to_video(root / "base", image_size=SIZE, max_frames=MAX_FRAMES, seed=0)
    torch.manual_seed(0)
    module = MojitoModule(base={"pretrained": str(base), "vae": None, "unet_class": "UNetMotionModel"},
                          trainable=["intensity", "motion_modules"], intensity_dim=16,
                          sampling={"steps": 4, "frames": FRAMES})
    with torch.no_grad():
        for parameter in module.trainable_parameters():
            parameter.normal_(std=0.05)
    saved = {"epoch": 0, "global_step": 2, "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
             MODEL_TARGET_KEY: model_target(module)}
    checkpoint = root / "last.ckpt"
    # the checkpoint names a base that is not on this machine: the config says where it is
    torch.save({**saved, "hyper_parameters": {**saved["hyper_parameters"],
                                              "base": {**module.hparams.base, "pretrained": str(root / "moved")}}},
               checkpoint)
    config = root / "sample.yaml"
    config.write_text(f"model:\n  target: {model_target(module)}\n  params:\n"
                      f"    base: {{pretrained: {base}, vae: null, unet_class: UNetMotionModel}}\n")
    no_intensity = root / "no-intensity.ckpt"
    torch.save({**saved, "hyper_parameters": {**saved["hyper_parameters"], "intensity_dim": None}}, no_intensity)
    image_model = root / "image-model.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"base": {"pretrained": str(base)}},
                MODEL_TARGET_KEY: IMAGE_MODEL_TARGET}, image_model)
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    three = root / "three-boxes.json"
    three.write_text(json.dumps({"boxes": BOXES[:3]}))
    outside = root / "outside.json"
    outside.write_text(json.dumps([*BOXES[:3], [0.5, 0.25, 1.2, 0.75]]))
    return SimpleNamespace(root=root, base=base, module=load_for_inference(checkpoint, base=str(base)),
                           checkpoint=checkpoint, config=config, no_intensity=no_intensity, image_model=image_model,
                           boxes=boxes, three=three, outside=outside)


def video_args(setup, out: Path, *extra) -> list:
    return ["--checkpoint", setup.checkpoint, "--config", setup.config, "--prompt", PROMPT, *FAST, "--out", out,
            *extra]


def expected_videos(setup, count: int, seed: int, **kwargs) -> list[np.ndarray]:
    """What the module generates for the same request, computed here."""
    videos = setup.module.generate([PROMPT] * count, generator=torch.Generator().manual_seed(seed), steps=2, **kwargs)
    return [as_uint8_video((video + 1) / 2) for video in videos]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def outlined(strip: np.ndarray, boxes) -> bool:
    """Every frame of the strip has its box's outline in BOX_COLOUR."""
    for t, box in enumerate(boxes):
        left, top, right, bottom = box_pixels(box, SIZE, SIZE)
        tile = strip[:, t * (SIZE + 2):t * (SIZE + 2) + SIZE]
        edges = [tile[top, left:right + 1], tile[bottom, left:right + 1], tile[top:bottom + 1, left],
                 tile[top:bottom + 1, right]]
        if not all((edge == BOX_COLOUR).all() for edge in edges):
            return False
    return True


@pytest.fixture(scope="module")
def plain(setup, tmp_path_factory) -> Path:
    """Two videos at intensity 3, without boxes."""
    out = tmp_path_factory.mktemp("plain") / "out"
    assert sample_cli.main([str(a) for a in video_args(setup, out, "--intensity", 3, "--num-videos", 2,
                                                       "--seed", 5)]) == 0
    return out


def test_videos_are_written_as_mp4_gif_and_strip(setup, plain):
    assert sorted(p.name for p in plain.iterdir()) == [f"sample_00{i}.{ext}" for i in (0, 1)
                                                       for ext in ("gif", "mp4", "png")]
    expected = expected_videos(setup, 2, 5, levels=[3, 3])
    for i in (0, 1):
        for ext in ("mp4", "gif"):
            frames, count = decode_frames(plain / f"sample_00{i}.{ext}")
            assert count == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
        assert np.array_equal(pixels(plain / f"sample_00{i}.png"), frame_strip(expected[i]))
    assert not np.array_equal(expected[0], expected[1])  # each video its own noise
    assert not list(plain.parent.glob(".out.tmp-*"))


def test_the_same_seed_gives_the_same_video_and_another_seed_another(setup, plain, tmp_path, capsys):
    for seed, same in ((5, True), (6, False)):
        out = tmp_path / f"seed{seed}"
        code, err, printed = run_main(sample_cli, video_args(setup, out, "--intensity", 3, "--num-videos", 2,
                                                             "--seed", seed), capsys)
        assert code == 0, err
        assert printed.strip() == f"wrote 2 video(s) (mp4, gif and png strip each) to {out}"
        assert np.array_equal(pixels(out / "sample_000.png"), pixels(plain / "sample_000.png")) == same


def test_the_level_is_what_the_model_is_given(setup, plain, tmp_path, capsys):
    code, err, _ = run_main(sample_cli, video_args(setup, tmp_path / "out", "--intensity", 5, "--seed", 5), capsys)
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / "out" / "sample_000.png"),
                          frame_strip(expected_videos(setup, 1, 5, levels=[5])[0]))
    assert not np.array_equal(pixels(tmp_path / "out" / "sample_000.png"), pixels(plain / "sample_000.png"))


def test_boxes_steer_with_the_flags_over_the_checkpoints_direction(setup, tmp_path, capsys):
    code, err, _ = run_main(sample_cli, video_args(setup, tmp_path / "steered", "--boxes", setup.boxes, "--subject",
                                                   "red ball", "--direction-steps", 1, "--direction-eta", 0.5), capsys)
    assert code == 0, err
    boxes = torch.tensor(BOXES)
    # the checkpoint's direction mode is none: boxes given, gradient mode steers
    control = DirectionControl(mode="gradient", steps=1, eta=0.5)
    steered = expected_videos(setup, 1, 0, boxes=boxes, subject="red ball", direction=control)[0]
    strip = pixels(tmp_path / "steered" / "sample_000.png")
    assert strip.shape == (SIZE, STRIP_WIDTH, 3) and outlined(strip, BOXES)
    assert np.array_equal(strip, frame_strip(steered, BOXES))
    frames, count = decode_frames(tmp_path / "steered" / "sample_000.mp4")
    assert count == FRAMES

    code, err, _ = run_main(sample_cli, video_args(setup, tmp_path / "plain", "--boxes", setup.boxes, "--subject",
                                                   "red ball", "--direction-mode", "none"), capsys)
    assert code == 0, err
    unsteered = pixels(tmp_path / "plain" / "sample_000.png")
    assert outlined(unsteered, BOXES)  # the targets are drawn, not steered towards
    assert np.array_equal(unsteered, frame_strip(expected_videos(setup, 1, 0)[0], BOXES))
    assert not np.array_equal(unsteered, strip)


def test_a_trajectory_becomes_one_box_per_frame(setup, tmp_path, capsys):
    out = tmp_path / "out"
    code, err, _ = run_main(sample_cli, video_args(setup, out, "--trajectory", "0.25,0.5 0.75,0.5", "--box-size",
                                                   "0.5,0.25", "--subject", "ball", "--direction-mode", "reweight",
                                                   "--direction-strength", 3), capsys)
    assert code == 0, err
    boxes = boxes_from_trajectory([(0.25, 0.5), (0.75, 0.5)], (0.5, 0.25), FRAMES)
    expected = expected_videos(setup, 1, 0, boxes=boxes, subject="ball",
                               direction=DirectionControl(mode="reweight", strength=3.0))[0]
    strip = pixels(out / "sample_000.png")
    assert outlined(strip, boxes.tolist()) and np.array_equal(strip, frame_strip(expected, boxes))
    assert not np.array_equal(expected, expected_videos(setup, 1, 0)[0])  # the reweighting did something


def bad_video(setup, tmp_path, capsys, *extra, checkpoint=None, lines: int = 1) -> list[str]:
    out = tmp_path / "never"
    argv = ["--checkpoint", checkpoint or setup.checkpoint, "--config", setup.config, "--prompt", PROMPT, *FAST,
            "--out", out, *extra]
    code, err, _ = run_main(sample_cli, argv, capsys)
    assert code == 2 and len(err) == lines, err
    assert not out.exists() and not list(tmp_path.glob(".never.tmp-*"))
    return err


def test_bad_video_inputs_are_one_line_each_and_nothing_is_written(setup, tmp_path, capsys):
    def bad(*extra, **kwargs) -> str:
        return bad_video(setup, tmp_path, capsys, *extra, **kwargs)[0]

    assert bad("--boxes", setup.boxes, "--subject", "blue cube") == (
        f"sample.py: subject 'blue cube' is not in the prompt '{PROMPT}': give words of the prompt")
    assert bad("--boxes", setup.outside, "--subject", "ball") == (
        f"sample.py: {setup.outside}: boxes[3] [0.5, 0.25, 1.2, 0.75] has a coordinate outside [0, 1]: give "
        f"fractions of the frame's width and height")
    assert bad("--boxes", setup.three, "--subject", "ball") == (
        f"sample.py: {setup.three} has 3 boxes; --frames is {FRAMES}: give one box per frame")
    for level in (0, 6):
        assert bad("--intensity", level) == f"sample.py: --intensity {level}: a motion intensity level is 1 (least) " \
                                            f".. 5 (most)"
    assert bad("--direction-mode", "gradient") == (
        "sample.py: --direction-mode: direction control needs target boxes: give --boxes FILE or --trajectory "
        "'x,y x,y ...' (and --subject)")
    assert bad("--trajectory", "0.1,0.5 0.9,0.5") == (
        "sample.py: --trajectory needs --subject: the words of the prompt for the thing the boxes hold")
    assert bad("--box-size", "0.2") == "sample.py: --box-size applies with --trajectory (a --boxes file gives whole " \
                                      "boxes)"
    assert bad("--trajectory", "0.1,0.5", "--subject", "ball", "--direction-eta", "-1") == (
        "sample.py: --direction-eta: must be a number > 0, got -1.0")
    assert bad("--trajectory", "0.1,0.5", "--subject", "ball", "--frames", 8) == (
        f"sample.py: --frames 8: the model's motion modules take at most {MAX_FRAMES} frames (motion_max_seq_length)")
    assert bad("--intensity", 2, checkpoint=setup.no_intensity) == (
        f"sample.py: --intensity: {setup.no_intensity} has no intensity input (its intensity_dim is null): sample "
        f"it without --intensity")


def test_every_problem_of_a_stage_at_once(setup, tmp_path, capsys):
    assert bad_video(setup, tmp_path, capsys, "--intensity", 9, "--fps", 0, lines=2) == [
        "sample.py: --intensity 9: a motion intensity level is 1 (least) .. 5 (most)",
        "sample.py: --fps must be >= 1, got 0"]
    err = bad_video(setup, tmp_path, capsys, "--boxes", setup.three, "--subject", "ball", "--direction-mode",
                    "gradiant", lines=2)
    assert err[0] == ("sample.py: --direction-mode: 'gradiant' is not one of none, gradient, reweight (did you mean "
                      "gradient?)") and "has 3 boxes" in err[1]


def test_options_of_the_other_kind_of_model_are_refused(setup, tmp_path, capsys):
    def bad(*extra, **kwargs) -> str:
        return bad_video(setup, tmp_path, capsys, *extra, **kwargs)[0]

    assert bad("--condition", "canny=edges.png") == (
        f"sample.py: --condition applies to image models; {setup.checkpoint} is a text-to-video model")
    assert bad("--num-images", 2) == (
        f"sample.py: --num-images applies to image models; {setup.checkpoint} is a text-to-video model")
    # --resolution: the one thing an image model needs that the video config does not give
    assert bad("--intensity", 3, "--resolution", SIZE, checkpoint=setup.image_model) == (
        f"sample.py: --intensity applies to text-to-video models; {setup.image_model} is an image model")
    assert bad("--trajectory", "0.1,0.5", "--resolution", SIZE, checkpoint=setup.image_model) == (
        f"sample.py: --trajectory applies to text-to-video models; {setup.image_model} is an image model")

    export = tmp_path / "export"  # an export whose metadata names no model; the config's is a video model
    export.mkdir()
    (export / "worldbridge_export.json").write_text("{}")
    code, err, _ = run_main(sample_cli, ["--export", export, "--config", setup.config, "--prompt", PROMPT,
                                         "--out", tmp_path / "never"], capsys)
    assert code == 2 and err == [
        f"sample.py: --export {export}: an export (launch/export.py) is an image-model feature, and "
        f"{model_target(setup.module)} is a text-to-video model: sample its --checkpoint"]
    assert not (tmp_path / "never").exists()


def test_help_names_both_kinds_of_model(capsys):
    with pytest.raises(SystemExit) as exited:
        sample_cli.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "Sample images or videos" in shown and "--condition" in shown and "--direction-mode" in shown

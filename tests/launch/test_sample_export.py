"""launch/sample.py and launch/export.py as a user runs them (through `main(argv)`, and once each as a subprocess),
and callbacks/model_target.py, which names in every checkpoint the class export.py rebuilds it with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks.model_target import MODEL_TARGET_KEY, ModelTarget, model_target
from launch import export as export_cli
from launch import sample as sample_cli
from launch.trainer import build_trainer
from lightning_modules.diffusion.tiny import write_tiny_text_to_image
from lightning_modules.flexecontrol import inference
from lightning_modules.flexecontrol.module import FlexEControlModule
from tests.conftest import DEMO_CONFIG, REPO

SIZE = 16
TYPES = {"canny": 1, "seg": 3}
SLOTS = 2
FAST = ["--steps", "2", "--guidance", "2.0", "--scheduler", "DDIMScheduler", "--device", "cpu"]
CONFIG = """\
model:
  target: lightning_modules.flexecontrol.FlexEControlModule
  params:
    base: {{pretrained: {base}, vae: null}}
    condition_channels: {{canny: 1}}  # the checkpoint's hyper-parameters say canny and seg: they are the truth
data:
  target: lightning_modules.flexecontrol.data.ControlData
  params:
    resolution: {size}
    max_inputs_per_type: {slots}
"""


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("sample-export")
    base = write_tiny_text_to_image(root / "base", image_size=SIZE, seed=0)
    torch.manual_seed(0)
    module = FlexEControlModule(base={"pretrained": str(base), "vae": None}, condition_channels=TYPES,
                                kronecker_rank=2)
    with torch.no_grad():
        for parameter in module.trainable_parameters():
            parameter.normal_(std=0.05)
    checkpoint = root / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 2, "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams), MODEL_TARGET_KEY: model_target(module)}, checkpoint)
    config = root / "sample.yaml"
    config.write_text(CONFIG.format(base=base, size=SIZE, slots=SLOTS))
    rng = np.random.default_rng(0)
    maps = root / "maps"
    maps.mkdir()
    edges = [write_png(maps / f"canny{i}.png", (rng.random((SIZE, SIZE)) > 0.7).astype(np.uint8) * 255)
             for i in range(3)]
    seg = write_png(maps / "seg.png", (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    small = write_png(maps / "small.png", np.zeros((SIZE // 2, SIZE // 2), np.uint8))
    not_png = maps / "notes.png"
    not_png.write_text("not an image")
    return SimpleNamespace(root=root, base=base, checkpoint=checkpoint, config=config, edges=edges, seg=seg,
                           small=small, not_png=not_png)


def run_main(cli, argv: list[str], capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()  # what the test printed before: not the command's
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# -- model_target ------------------------------------------------------------------------------------------------------
def test_model_target_names_the_class_of_the_saved_module_and_every_run_trainer_has_it(tmp_path):
    checkpoint: dict = {}
    ModelTarget().on_save_checkpoint(None, FlexEControlModule.__new__(FlexEControlModule), checkpoint)
    assert checkpoint == {"model_target": "lightning_modules.flexecontrol.module.FlexEControlModule"}

    from callbacks.signals import SignalFlag
    from launch.config import load_config
    from launch.runs import RunDir, RunSettings

    loaded = load_config(DEMO_CONFIG, [f"run.root={tmp_path}"])
    run = RunSettings(**dict(loaded.cfg.run))
    trainer, _ = build_trainer(loaded, run, RunDir.from_settings(run), SignalFlag())
    assert sum(isinstance(c, ModelTarget) for c in trainer.callbacks) == 1


# -- sample.py ---------------------------------------------------------------------------------------------------------
def sample_args(setup, out: Path, *extra, model=("--checkpoint",)) -> list:
    source = [model[0], setup.checkpoint if model[0] == "--checkpoint" else model[1]]
    return [*source, "--config", setup.config, "--prompt", "a red circle", "--condition", f"canny={setup.edges[0]}",
            "--condition", f"canny={setup.edges[1]}", "--condition", f"seg={setup.seg}", "--strength", "canny=0.8",
            "--seed", "3", "--num-images", "2", *FAST, "--out", out, *extra]


def expected_samples(setup) -> np.ndarray:
    """What the module generates for sample_args' inputs, computed here from the same files."""
    module = inference.load_for_inference(setup.checkpoint)
    canny = torch.zeros(SLOTS, 1, SIZE, SIZE)
    canny[0, 0] = torch.from_numpy(pixels(setup.edges[0])[..., 0] / 255.0)
    canny[1, 0] = torch.from_numpy(pixels(setup.edges[1])[..., 0] / 255.0)
    seg = torch.zeros(SLOTS, 3, SIZE, SIZE)
    seg[0] = torch.from_numpy(pixels(setup.seg) / 255.0).permute(2, 0, 1)
    maps = {"canny": canny.expand(2, -1, -1, -1, -1).float(), "seg": seg.expand(2, -1, -1, -1, -1).float()}
    present = {"canny": torch.tensor([[True, True]] * 2), "seg": torch.tensor([[True, False]] * 2)}
    images = module.generate(["a red circle"] * 2, maps, present, resolution=SIZE, strengths={"canny": 0.8}, steps=2,
                             guidance=2.0, scheduler="DDIMScheduler", generator=torch.Generator().manual_seed(3))
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_sample_writes_the_samples_and_a_grid_of_conditions_then_samples(setup, tmp_path, capsys):
    out = tmp_path / "samples"
    code, err, printed = run_main(sample_cli, sample_args(setup, out), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "sample_000.png", "sample_001.png"]
    assert f"to {out}" in printed
    expected = expected_samples(setup)
    samples = [pixels(out / f"sample_{i:03d}.png") for i in range(2)]
    assert all(np.array_equal(s, e) for s, e in zip(samples, expected))
    assert not np.array_equal(samples[0], samples[1])  # one seed, two different noises
    grid = pixels(out / "grid.png")
    assert grid.shape == (SIZE, 5 * SIZE, 3)  # canny, canny, seg | two samples
    assert np.array_equal(grid[:, :SIZE, 0], pixels(setup.edges[0])[..., 0])
    assert np.array_equal(grid[:, 2 * SIZE:3 * SIZE], pixels(setup.seg))
    assert np.array_equal(grid[:, 3 * SIZE:4 * SIZE], samples[0])
    assert not list(tmp_path.glob(".samples.tmp-*"))


def test_sampling_an_export_gives_the_checkpoints_images(setup, tmp_path, capsys):
    exported = tmp_path / "export"
    code, err, _ = run_main(export_cli, ["--checkpoint", setup.checkpoint, "--out", exported], capsys)
    assert code == 0, err
    code, err, _ = run_main(sample_cli, sample_args(setup, tmp_path / "a"), capsys)
    assert code == 0, err
    code, err, _ = run_main(sample_cli, sample_args(setup, tmp_path / "b", model=("--export", exported)), capsys)
    assert code == 0, err
    for name in ("sample_000.png", "sample_001.png", "grid.png"):
        assert np.array_equal(pixels(tmp_path / "a" / name), pixels(tmp_path / "b" / name))


def test_an_export_needs_no_config_when_resolution_is_given(setup, tmp_path, capsys):
    exported = tmp_path / "export"
    inference.export(inference.load_for_inference(setup.checkpoint), exported)
    argv = ["--export", exported, "--prompt", "a circle", "--condition", f"seg={setup.seg}", *FAST,
            "--out", tmp_path / "out"]
    code, err, _ = run_main(sample_cli, argv, capsys)
    assert code == 2 and err == [("sample.py: the resolution is unknown: give --resolution, or a --config with "
                                  "data.params.resolution")]
    code, err, _ = run_main(sample_cli, [*argv, "--resolution", SIZE], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png", "sample_000.png"]


def test_a_base_that_moved_comes_from_the_config(setup, tmp_path, capsys):
    saved = torch.load(setup.checkpoint, weights_only=False)
    saved["hyper_parameters"] = {**saved["hyper_parameters"], "base": {"pretrained": str(tmp_path / "moved"),
                                                                       "vae": None}}
    checkpoint = tmp_path / "elsewhere.ckpt"  # names a base that is not on this machine
    torch.save(saved, checkpoint)
    argv = ["--checkpoint", checkpoint, "--prompt", "a circle", "--resolution", SIZE, *FAST]
    code, err, _ = run_main(sample_cli, [*argv, "--out", tmp_path / "no"], capsys)
    assert code == 2 and len(err) == 1 and "moved" in err[0] and "base" in err[0]
    assert not (tmp_path / "no").exists()
    code, err, _ = run_main(sample_cli, [*argv, "--config", setup.config, "--out", tmp_path / "yes"], capsys)
    assert code == 0, err


def test_a_checkpoint_that_names_no_class_is_sampled_as_the_configs_model_target(setup, tmp_path, capsys):
    saved = torch.load(setup.checkpoint, weights_only=False)
    del saved["model_target"]  # saved before callbacks/model_target.py
    torch.save(saved, tmp_path / "unnamed.ckpt")
    argv = ["--checkpoint", tmp_path / "unnamed.ckpt", "--prompt", "a circle", "--resolution", SIZE, *FAST]
    code, err, _ = run_main(sample_cli, [*argv, "--out", tmp_path / "no"], capsys)
    assert code == 2 and err == [(f"sample.py: {tmp_path / 'unnamed.ckpt'}: names no model_target, and no "
                                  f"--config gives model.target: which model is it?")]
    code, err, _ = run_main(sample_cli, [*argv, "--config", setup.config, "--out", tmp_path / "yes"], capsys)
    assert code == 0, err


def bad_sample(setup, tmp_path, capsys, *replace_or_extra, conditions=None) -> str:
    out = tmp_path / "never"
    argv = ["--checkpoint", setup.checkpoint, "--config", setup.config, "--prompt", "a red circle", *FAST]
    for pair in conditions if conditions is not None else [f"canny={setup.edges[0]}"]:
        argv += ["--condition", pair]
    code, err, _ = run_main(sample_cli, [*argv, *replace_or_extra, "--out", out], capsys)
    assert code == 2 and len(err) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".never.tmp-*"))
    return err[0]


def test_bad_sample_inputs_are_one_line_each_and_nothing_is_written(setup, tmp_path, capsys):
    def bad(*extra, conditions=None) -> str:
        return bad_sample(setup, tmp_path, capsys, *extra, conditions=conditions)

    assert bad(conditions=[f"depth={setup.edges[0]}"]) == (
        "sample.py: --condition depth: the model was not built for condition type 'depth' (it has canny, seg)")
    assert bad(conditions=[f"canny={setup.small}"]).endswith(
        f"expected a {SIZE}x{SIZE} map (the model's resolution; nothing is resized), got {SIZE // 2}x{SIZE // 2}")
    assert bad(conditions=[f"canny={setup.root / 'absent.png'}"]).endswith("absent.png: no such file")
    assert "notes.png: not a readable image" in bad(conditions=[f"canny={setup.not_png}"])
    assert bad("--scheduler", "DDIMSchedular").endswith(
        "unknown scheduler class 'DDIMSchedular' (did you mean DDIMScheduler?)")
    assert bad(conditions=[f"canny={e}" for e in setup.edges]) == (
        f"sample.py: --condition canny: 3 maps, but a type has {SLOTS} input slots (data.params.max_inputs_per_type)")
    assert bad("--strength", "seg=0.5").startswith("sample.py: --strength seg: no --condition seg=... is given")
    assert bad("--strength", "canny=strong") == "sample.py: --strength canny=strong: the strength must be a number"
    assert bad(conditions=["canny"]).startswith("sample.py: --condition 'canny': expected TYPE=VALUE")
    assert bad(conditions=["=x.png"]).startswith("sample.py: --condition '=x.png': expected TYPE=VALUE")
    assert bad("--steps", "0") == "sample.py: --steps must be >= 1, got 0"
    assert "no such file" in bad_sample(SimpleNamespace(**{**vars(setup), "checkpoint": setup.root / "nope.ckpt"}),
                                        tmp_path, capsys)
    assert "not a readable checkpoint" in bad_sample(
        SimpleNamespace(**{**vars(setup), "checkpoint": setup.not_png}), tmp_path, capsys)


def test_a_taken_out_dir_is_refused_and_left_alone(setup, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.png").write_bytes(b"old")
    code, err, _ = run_main(sample_cli, sample_args(setup, taken), capsys)
    assert code == 2 and err == [(f"sample.py: --out {taken}: exists and is not an empty directory (choose a new "
                                  f"one, or remove it)")]
    assert [p.name for p in taken.iterdir()] == ["old.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none_is_a_usage_error(setup, tmp_path, capsys):
    message = bad_sample(setup, tmp_path, capsys, "--device", "cuda")
    assert message == "sample.py: --device cuda: this machine has no CUDA device (use --device cpu)"


def test_maps_are_read_grayscale_for_one_channel_and_rgb_for_three(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    path = write_png(tmp_path / "red.png", rgb)
    gray = sample_cli.read_map(path, 1)
    assert gray.shape == (1, 4, 4) and torch.allclose(gray, torch.full((1, 4, 4), 76 / 255))  # ITU-R 601 luma
    colour = sample_cli.read_map(path, 3)
    assert colour.shape == (3, 4, 4) and torch.equal(colour[0], torch.ones(4, 4)) and colour[1:].abs().max() == 0
    deep = tmp_path / "depth16.png"
    Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(deep)
    assert torch.allclose(sample_cli.read_map(deep, 1), torch.full((1, 4, 4), 0.5), atol=1e-4)


# -- export.py ---------------------------------------------------------------------------------------------------------
def test_export_writes_the_methods_export(setup, tmp_path, capsys):
    out = tmp_path / "export"
    code, err, printed = run_main(export_cli, ["--checkpoint", setup.checkpoint, "--out", out], capsys)
    assert code == 0, err
    assert printed.strip() == f"exported {setup.checkpoint} to {out}"
    assert json.loads((out / "worldbridge_export.json").read_text())["variant"] == "flexecontrol"
    assert (out / "control" / "diffusion_pytorch_model.safetensors").is_file()


def test_a_base_given_to_export_is_where_the_module_is_rebuilt_from(setup, tmp_path, capsys):
    saved = torch.load(setup.checkpoint, weights_only=False)
    saved["hyper_parameters"] = {**saved["hyper_parameters"], "base": {"pretrained": str(tmp_path / "gone"),
                                                                       "vae": None}}
    torch.save(saved, tmp_path / "moved.ckpt")
    code, err, _ = run_main(export_cli, ["--checkpoint", tmp_path / "moved.ckpt", "--out", tmp_path / "x"], capsys)
    assert code == 2 and len(err) == 1 and "gone" in err[0] and not (tmp_path / "x").exists()
    code, err, _ = run_main(export_cli, ["--checkpoint", tmp_path / "moved.ckpt", "--out", tmp_path / "y",
                                         "--base", setup.base], capsys)
    assert code == 0, err
    # the export names the base as the checkpoint does
    assert json.loads((tmp_path / "y" / "worldbridge_export.json").read_text())["base"]["pretrained"] == str(
        tmp_path / "gone")


def bad_export(argv: list, tmp_path: Path, capsys, out: Path | None = None) -> str:
    out = out or tmp_path / "never"
    code, err, _ = run_main(export_cli, [*argv, "--out", out], capsys)
    assert code == 2 and len(err) == 1, err
    assert not list(tmp_path.glob(".never.tmp-*"))
    return err[0]


def test_bad_export_inputs_are_one_line_each_and_nothing_is_written(setup, tmp_path, capsys):
    assert bad_export(["--checkpoint", tmp_path / "absent.ckpt"], tmp_path, capsys) == (
        f"export.py: {tmp_path / 'absent.ckpt'}: no such file")
    assert "not a readable checkpoint" in bad_export(["--checkpoint", setup.not_png], tmp_path, capsys)
    torch.save({"weights": 1}, tmp_path / "foreign.ckpt")
    assert "not a Lightning checkpoint" in bad_export(["--checkpoint", tmp_path / "foreign.ckpt"], tmp_path, capsys)
    saved = torch.load(setup.checkpoint, weights_only=False)
    del saved["model_target"]
    torch.save(saved, tmp_path / "unnamed.ckpt")
    assert "names no model_target: which LightningModule class wrote it?" in bad_export(
        ["--checkpoint", tmp_path / "unnamed.ckpt"], tmp_path, capsys)
    assert not (tmp_path / "never").exists()
    code, err, _ = run_main(export_cli, ["--checkpoint", tmp_path / "unnamed.ckpt", "--out", tmp_path / "named",
                                         "--model-target", inference.MODULE_TARGET], capsys)
    assert code == 0, err

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    assert "exists and is not an empty directory" in bad_export(["--checkpoint", setup.checkpoint], tmp_path, capsys,
                                                                out=taken)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]

    for target, expected in (("lightning_modules.regression.module.MLPRegressor",
                              "MLPRegressor offers no export_checkpoint: lightning_modules.regression.inference"),
                             ("os.system", "'os.system' is not a class of this project"),
                             ("lightning_modules.flexecontrol.module.NoSuchModule", "cannot import model_target")):
        assert expected in bad_export(["--checkpoint", tmp_path / "unnamed.ckpt", "--model-target", target],
                                      tmp_path, capsys)
    assert not (tmp_path / "never").exists()


# -- as a user runs them -----------------------------------------------------------------------------------------------
def run_script(name: str, *argv) -> subprocess.CompletedProcess:
    # PYTHONPATH: this checkout's packages, not those of another checkout the environment may have installed
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "launch" / name), *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def test_export_as_a_subprocess(setup, tmp_path):
    exported = tmp_path / "export"
    done = run_script("export.py", "--checkpoint", setup.checkpoint, "--out", exported)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"exported {setup.checkpoint} to {exported}"
    assert (exported / "worldbridge_export.json").is_file()


def test_sample_as_a_subprocess(setup, tmp_path):
    done = run_script("sample.py", "--checkpoint", setup.checkpoint, "--config", setup.config, "--prompt",
                      "a red circle", "--condition", f"canny={setup.edges[0]}", *FAST, "--out", tmp_path / "samples")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["grid.png", "sample_000.png"]
    failed = run_script("sample.py", "--checkpoint", setup.checkpoint, "--prompt", "x", "--condition", "canny",
                        "--out", tmp_path / "bad")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [
        "sample.py: --condition 'canny': expected TYPE=VALUE, e.g. --condition canny=edges.png"]
    assert not (tmp_path / "bad").exists()

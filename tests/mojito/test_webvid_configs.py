"""Mojito's cluster configs (configs/mojito/webvid.yaml, webvid_512.yaml): `fit.py --dry-run` resolves and checks
them, `submit.py --dry-run` of webvid.yaml on 4 nodes x 8 GPUs writes a job that requests the GPUs and runs the
DeepSpeed config. Their hub models, shards and local evaluator models are the user's: as the shipped-config test does
(tests/launch/test_shipped_configs.py), the checks run with the config's file lookups off, and one test shows what a
user who has not fetched them yet is told."""

from __future__ import annotations

import shlex

import pytest
import yaml

from datamodules.errors import UsageError
from launch import config as config_module
from launch.config import load_config
from launch.fit import check_config
from tests.conftest import REPO

WEBVID = REPO / "configs" / "mojito" / "webvid.yaml"
WEBVID_512 = REPO / "configs" / "mojito" / "webvid_512.yaml"


def without_file_lookups(monkeypatch, module) -> None:
    """`module`'s load_config, with the config's models and paths not looked up (they are the user's)."""
    def load(*args, **kwargs):
        loaded = config_module.load_config(*args, **kwargs)
        loaded.check_files = False
        return loaded

    monkeypatch.setattr(module, "load_config", load)


def resolved_of_dry_run(text: str) -> dict:
    """The resolved config fit.py --dry-run prints (the YAML before its '# objects' listing)."""
    return yaml.safe_load(text.split("\n# objects this config builds:")[0])


@pytest.mark.parametrize("path, resolution, batch", [(WEBVID, 256, 8), (WEBVID_512, 512, 2)],
                         ids=["webvid", "webvid_512"])
def test_fit_dry_run_resolves_the_cluster_config(monkeypatch, capsys, path, resolution, batch):
    from launch import fit

    without_file_lookups(monkeypatch, fit)
    assert fit.main(["--config", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    cfg = resolved_of_dry_run(out)
    trainer, model, data = cfg["trainer"], cfg["model"]["params"], cfg["data"]["params"]
    assert (trainer["accelerator"], trainer["strategy"], trainer["precision"]) == ("gpu", "deepspeed_stage_2",
                                                                                  "bf16-mixed")
    assert model["base"]["pretrained"] == "runwayml/stable-diffusion-v1-5"
    assert model["motion_adapter"] == "guoyww/animatediff-motion-adapter-v1-5-2"
    assert model["trainable"] == ["intensity"] and model["gradient_checkpointing"] is True
    assert (data["frames"], data["resolution"], data["batch_size"]) == (16, resolution, batch)
    # samples are made at the size trained on (SD-1.5's UNet alone would make 512 px)
    assert (model["sampling"]["frames"], model["sampling"]["resolution"]) == (16, resolution)
    assert data["train"].startswith("data/webvid") and data["val"].startswith("data/webvid")
    assert trainer["val_check_interval"] and cfg["slurm"]["time"]
    targets = [callback["target"] for callback in cfg["callbacks"]]
    assert targets == ["callbacks.video_logger.VideoLogger", "lightning_modules.mojito.evaluation.MotionEvaluator",
                       "callbacks.benchmark_validation.BenchmarkValidation"]
    steered = [p for p in cfg["callbacks"][1]["params"]["prompts"] if p.get("trajectory")]
    assert steered and all(p["subject"] in p["prompt"] for p in steered)
    assert "#   callbacks.1: lightning_modules.mojito.evaluation.MotionEvaluator" in out
    # VLM4D answered by the model being trained (its diffusion-classifier responder) on the frames it trains on
    benchmark = cfg["callbacks"][2]["params"]
    assert benchmark["benchmark"] == "vlm4d" and set(benchmark["questions"]) == {"real", "synthetic"}
    assert benchmark["responder"] is None and benchmark["num_frames"] == model["responder"]["frames"] == 16


def test_a_user_without_the_models_is_told_each_missing_one_by_its_key(monkeypatch):
    """With the lookups on, offline and before anything is downloaded: one line per missing input, all at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError) as refused:
        check_config(load_config(WEBVID))
    lines = refused.value.lines
    where = f"{WEBVID.resolve()}: "
    assert f"{where}model.params.base.pretrained: 'runwayml/stable-diffusion-v1-5' is not a local directory" in \
        "\n".join(lines)
    for key, directory in (("clip_model", "models/clip-vit-large-patch14"),
                           ("detector", "models/owlv2-base-patch16-ensemble")):
        assert any(line.startswith(f"{where}callbacks.1.params.{key}: no such directory: {directory}")
                   for line in lines), lines
    assert f"{where}callbacks.2.params.questions.real: no such file: data/benchmarks/vlm4d/real_mc.json" in lines


def sbatch_options(script: str) -> dict[str, str]:
    options = (line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH "))
    return dict(option.partition("=")[::2] for option in options)


def test_submit_dry_run_on_4_nodes_of_8_gpus_requests_them_and_runs_deepspeed(monkeypatch, capsys, tmp_path):
    from launch import submit

    without_file_lookups(monkeypatch, submit)
    args = ["--config", str(WEBVID), "--nodes", "4", "--gpus-per-node", "8", "--dry-run", f"run.root={tmp_path}"]
    assert submit.main(args) == 0, capsys.readouterr().err
    script = capsys.readouterr().out
    options = sbatch_options(script)
    assert (options["--nodes"], options["--gpus-per-node"], options["--ntasks-per-node"]) == ("4", "8", "8")
    assert (options["--cpus-per-task"], options["--time"], options["--signal"]) == ("10", "48:00:00", "USR1@300")
    assert "--requeue" in options and options["--output"].startswith(str(tmp_path / "mojito-webvid" / "logs"))
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    fit_at = next(i for i, token in enumerate(srun) if token.endswith("launch/fit.py"))
    assert srun[fit_at + 1:fit_at + 5] == ["--config", str(WEBVID), "--resume", "auto"]
    overrides = srun[fit_at + 5:]
    assert overrides[-2:] == ["trainer.num_nodes=4", "trainer.devices=8"]
    # what each of the 32 tasks runs: the config with the script's overrides, DeepSpeed stage 2 in bf16 on 8 GPUs
    trainer = load_config(WEBVID, overrides).cfg.trainer
    assert (trainer.accelerator, trainer.strategy, trainer.precision) == ("gpu", "deepspeed_stage_2", "bf16-mixed")
    assert (trainer.num_nodes, trainer.devices) == (4, 8)
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing

"""The Trainer built from a config: passthrough of Trainer arguments, loggers, checkpointing, atomic saves."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy

from callbacks.preemption import Preemption
from callbacks.signals import SignalFlag
from launch.config import load_config
from launch.csv_logger import ResumableCSVLogger
from launch.fit import check_config
from launch.runs import RunDir, RunSettings, checkpoint_step
from launch.trainer import AtomicDeepSpeedStrategy, build_trainer, stopping_limit
from tests.conftest import DEMO_CONFIG


def build(tmp_path, *overrides):
    loaded = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", *overrides])
    check_config(loaded)
    run = RunSettings(**{k: v for k, v in loaded.cfg.run.items()})
    return build_trainer(loaded, run, RunDir.from_settings(run), SignalFlag())


def test_trainer_arguments_pass_through(tmp_path):
    trainer, preemption = build(tmp_path, "trainer.max_steps=11", "trainer.accumulate_grad_batches=3",
                                "trainer.gradient_clip_val=0.5", "trainer.val_check_interval=4",
                                "trainer.precision=bf16-mixed", "run.every_n_train_steps=7", "run.keep_last_k=4")
    assert trainer.max_steps == 11 and trainer.accumulate_grad_batches == 3
    assert trainer.gradient_clip_val == 0.5 and trainer.val_check_interval == 4
    assert trainer.precision == "bf16-mixed"
    ckpt = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert ckpt._every_n_train_steps == 7 and ckpt.save_top_k == 4 and ckpt.dirpath == str(tmp_path / "demo-regression" / "checkpoints")
    assert any(isinstance(c, RichProgressBar) for c in trainer.callbacks)
    assert isinstance(preemption, Preemption) and preemption in trainer.callbacks


@pytest.mark.parametrize(("max_steps", "max_epochs", "global_step", "epoch", "limit"), [
    (120, None, 120, 3, "trainer.max_steps"),
    (-1, 2, 20, 2, "trainer.max_epochs"),
    (1000, 2, 20, 2, "trainer.max_epochs"),  # both set: the one reached
    (20, 2, 20, 2, "trainer.max_steps"),  # both reached at once: Lightning's fit loop checks max_steps first
    (1000, 5, 20, 2, None),  # neither: a callback stopped it (EarlyStopping)
])
def test_stopping_limit_is_the_limit_that_ended_the_fit(max_steps, max_epochs, global_step, epoch, limit):
    ended = SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs, global_step=global_step, current_epoch=epoch)
    assert stopping_limit(ended) == limit


def test_loggers_csv_always_tensorboard_by_default_and_extra_from_config(tmp_path):
    trainer, _ = build(tmp_path)
    assert [type(lg) for lg in trainer.loggers] == [ResumableCSVLogger, TensorBoardLogger]
    trainer, _ = build(tmp_path, "run.tensorboard=false",
                       "run.loggers=[{target: lightning.pytorch.loggers.CSVLogger, params: {name: extra}}]")
    assert [type(lg) for lg in trainer.loggers] == [ResumableCSVLogger, CSVLogger]
    assert trainer.loggers[1].save_dir == str(tmp_path / "demo-regression" / "logs") and trainer.loggers[1].name == "extra"


def test_bad_extra_logger_is_a_config_error(tmp_path):
    loaded = load_config(DEMO_CONFIG, ["run.loggers=[{target: lightning.pytorch.loggers.CSVLogger, params: {nam: x}}]"])
    with pytest.raises(Exception, match=r"run.loggers.0.params.nam: unknown key \(did you mean name\?\)"):
        check_config(loaded)


def fake_engine_save(fail_mid_save: bool = False):
    """Stands in for DeepSpeed's engine save (CUDA only): writes a checkpoint directory, `latest` last."""

    def save(strategy, checkpoint, filepath, storage_options=None):
        path = Path(filepath)
        (path / "checkpoint").mkdir(parents=True)
        (path / "checkpoint" / "mp_rank_00_model_states.pt").write_text(str(checkpoint["global_step"]))
        if fail_mid_save:
            raise RuntimeError("killed mid-save")
        (path / "latest").write_text("checkpoint")

    return save


def test_atomic_deepspeed_save_replaces_directory_only_when_complete(tmp_path, monkeypatch):
    strategy = AtomicDeepSpeedStrategy(config={"zero_optimization": {"stage": 2}})
    target = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(DeepSpeedStrategy, "save_checkpoint", fake_engine_save())
    strategy.save_checkpoint({"global_step": 5}, target)
    assert checkpoint_step(target) == 5
    strategy.save_checkpoint({"global_step": 9}, target)
    assert checkpoint_step(target) == 9
    assert (target / "checkpoint" / "mp_rank_00_model_states.pt").read_text() == "9"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary directories left

    monkeypatch.setattr(DeepSpeedStrategy, "save_checkpoint", fake_engine_save(fail_mid_save=True))
    with pytest.raises(RuntimeError):
        strategy.save_checkpoint({"global_step": 12}, target)
    assert checkpoint_step(target) == 9  # the interrupted save did not touch the complete one
    assert RunDir(tmp_path).newest_complete_checkpoint() == (target, 9)
    monkeypatch.setattr(DeepSpeedStrategy, "save_checkpoint", fake_engine_save())
    strategy.save_checkpoint({"global_step": 13}, target)  # a later save cleans up the leftover
    assert checkpoint_step(target) == 13
    assert json.loads((target / "worldbridge_step.json").read_text()) == {"global_step": 13}

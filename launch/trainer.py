"""Build a Lightning Trainer from the `trainer` section: strategy presets, loggers, checkpointing, preemption."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from omegaconf import DictConfig

from callbacks.data_health import DataHealthLogger
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.model_target import ModelTarget
from callbacks.preemption import Preemption
from callbacks.signals import SignalFlag
from datamodules.files import TMP_MARK
from launch.config import (ConfigIssue, LoadedConfig, UsageError, build, check_params, check_settings,
                           check_target_node, did_you_mean)
from launch.csv_logger import ResumableCSVLogger
from launch.runs import AtomicCheckpointIO, RunDir, RunSettings

DEEPSPEED_PRESETS: dict[str, dict[str, Any]] = {
    "deepspeed_stage_1": {"stage": 1},
    "deepspeed_stage_2": {"stage": 2},
    "deepspeed_stage_2_offload": {"stage": 2, "offload_optimizer": True},
    "deepspeed_stage_3": {"stage": 3},
    "deepspeed_stage_3_offload": {"stage": 3, "offload_optimizer": True, "offload_param": True},
}
STRATEGY_PRESETS = ("auto", "ddp", *DEEPSPEED_PRESETS)

# Trainer arguments the framework sets from other sections; a value in `trainer` would be ignored or conflict.
RESERVED_TRAINER_KEYS = {
    "default_root_dir": "it is run.root/run.name",
    "logger": "loggers are CSV + TensorBoard (run.tensorboard) + run.loggers",
    "callbacks": "use the top-level callbacks section",
    "enable_checkpointing": "checkpoints are configured by run.every_n_train_steps and run.keep_last_k",
    "plugins": "checkpoint IO and the SLURM environment are set by worldbridge",
    "use_distributed_sampler": "worldbridge DataModules split data by rank themselves",
}


def deepspeed_config(strategy: str | dict, micro_batch_size: int) -> dict[str, Any]:
    """The DeepSpeed config for a preset name or a user dict; micro-batch size from the data config.

    Gradient accumulation, clipping and precision are filled in by Lightning from the Trainer arguments.
    """
    if isinstance(strategy, str):
        preset = DEEPSPEED_PRESETS[strategy]
        zero: dict[str, Any] = {"stage": preset["stage"], "contiguous_gradients": True, "overlap_comm": True}
        if preset["stage"] >= 2:
            zero.update(reduce_scatter=True, reduce_bucket_size=int(2e8), allgather_bucket_size=int(2e8))
        if preset.get("offload_optimizer"):
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if preset.get("offload_param"):
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        config = {"zero_allow_untested_optimizer": True, "zero_optimization": zero}
        if preset.get("offload_optimizer"):
            # The module's own torch optimizer steps on the CPU; DeepSpeed refuses a client optimizer under
            # ZeRO-Offload unless told. Measured on an H100 (bench/results/deepspeed_gpu.json): resuming this way is
            # bitwise exact, while DeepSpeedCPUAdam recomputes beta^t on resume and drifts in the last bits.
            config["zero_force_ds_cpu_optimizer"] = False
    else:
        config = copy.deepcopy(dict(strategy))
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    return config


def is_deepspeed(strategy: Any) -> bool:
    return isinstance(strategy, (dict, DictConfig)) or (isinstance(strategy, str) and strategy.startswith("deepspeed"))


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed checkpoints are directories written by every rank; write them under a temporary name and
    let rank 0 rename once all ranks are done, so a preempted save never looks complete."""

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        filepath = Path(self.broadcast(str(filepath)))
        tmp = filepath.with_name(f"{filepath.name}{TMP_MARK}save")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("worldbridge_ds_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("worldbridge_ds_save_end")
        if self.is_global_zero:
            (tmp / "worldbridge_step.json").write_text(json.dumps({"global_step": checkpoint["global_step"]}))
            old = filepath.with_name(f"{filepath.name}{TMP_MARK}old")
            if filepath.exists():
                filepath.rename(old)
            tmp.rename(filepath)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier("worldbridge_ds_save_renamed")

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            shutil.rmtree(filepath, ignore_errors=True)


class RunTrainer(L.Trainer):
    """The Trainer of a run: status.json follows its checkpoints (the global step of the newest one)."""

    def __init__(self, run_dir: RunDir, **trainer_args: Any):
        super().__init__(**trainer_args)
        self.run_dir = run_dir

    def save_checkpoint(self, filepath: Any, weights_only: bool | None = None, storage_options: Any = None) -> None:
        super().save_checkpoint(filepath, weights_only, storage_options)
        # after the save and its barrier, so every rank's part is on disk when status.json names the step
        if self.is_global_zero:
            self.run_dir.update_status(global_step=self.global_step)


def _wants_cpu(trainer_cfg: dict) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator in ("auto", "gpu", "cuda") and not torch.cuda.is_available())


def check_trainer_section(loaded: LoadedConfig, issues: list[ConfigIssue]) -> None:
    trainer_cfg = dict(loaded.cfg.get("trainer") or {})
    strategy = trainer_cfg.pop("strategy", "auto")
    for key, why in RESERVED_TRAINER_KEYS.items():
        if key in trainer_cfg:
            issues.append(ConfigIssue(loaded.source_of(f"trainer.{key}"), f"trainer.{key}", f"set by worldbridge: {why}"))
            trainer_cfg.pop(key)
    check_params(L.Trainer, trainer_cfg, "trainer", loaded, issues)
    src = loaded.source_of("trainer.strategy")
    if isinstance(strategy, str):
        if strategy not in STRATEGY_PRESETS:
            issues.append(ConfigIssue(src, "trainer.strategy", f"unknown preset '{strategy}'{did_you_mean(strategy, STRATEGY_PRESETS)}; "
                                                               f"presets: {', '.join(STRATEGY_PRESETS)}, or a DeepSpeed config mapping"))
            return
    elif not hasattr(strategy, "keys"):
        issues.append(ConfigIssue(src, "trainer.strategy", "must be a preset name or a DeepSpeed config mapping"))
        return
    elif "gradient_accumulation_steps" in strategy:
        issues.append(ConfigIssue(src, "trainer.strategy.gradient_accumulation_steps",
                                  "set trainer.accumulate_grad_batches instead (Lightning passes it to DeepSpeed)"))
    if is_deepspeed(strategy):
        if _wants_cpu(trainer_cfg) and loaded.check_files:  # about this machine: a GPU config is checked anywhere
            issues.append(ConfigIssue(src, "trainer.strategy", f"DeepSpeed needs CUDA GPUs, but this run is on CPU "
                                                               f"(accelerator={trainer_cfg.get('accelerator', 'auto')}); use strategy=ddp or auto"))
        batch = (loaded.cfg.get("data") or {}).get("params", {}).get("batch_size")
        if not isinstance(batch, int):
            issues.append(ConfigIssue(loaded.source_of("data.params"), "data.params.batch_size",
                                      "DeepSpeed needs the per-GPU batch size here (an int) for train_micro_batch_size_per_gpu"))


def check_run_section(loaded: LoadedConfig, issues: list[ConfigIssue]) -> None:
    run = loaded.cfg.get("run")
    if run is None:
        issues.append(ConfigIssue(str(loaded.path), "run", "missing section (needs at least run.name)"))
        return
    check_settings(RunSettings, run, "run", loaded, issues)
    for i, logger in enumerate(run.get("loggers") or []):
        check_target_node(logger, f"run.loggers.{i}", loaded, issues, extra_params=("save_dir",))


def build_strategy(strategy: Any, micro_batch_size: int | None) -> Any:
    if is_deepspeed(strategy):
        return AtomicDeepSpeedStrategy(config=deepspeed_config(strategy, micro_batch_size))
    if strategy == "ddp":
        return DDPStrategy(find_unused_parameters=False)
    return strategy


def build_trainer(loaded: LoadedConfig, run: RunSettings, run_dir: RunDir, flag: SignalFlag,
                  resume_step: int | None = None) -> tuple[RunTrainer, Preemption]:
    cfg = loaded.cfg
    trainer_cfg = dict(cfg.get("trainer") or {})
    strategy_cfg = trainer_cfg.pop("strategy", "auto")
    if hasattr(strategy_cfg, "keys"):
        strategy_cfg = dict(strategy_cfg)
    batch_size = (cfg.get("data") or {}).get("params", {}).get("batch_size")

    loggers: list = [ResumableCSVLogger(run_dir.logs, name="csv", version="", resume_step=resume_step)]
    if run.tensorboard:
        loggers.append(TensorBoardLogger(run_dir.logs, name="tensorboard", version="", default_hp_metric=False))
    loggers += [build(loaded, f"run.loggers.{i}", save_dir=str(run_dir.logs)) for i in range(len(run.loggers))]

    preemption = Preemption(run_dir.last_checkpoint, flag)
    callbacks = [build(loaded, f"callbacks.{i}") for i in range(len(cfg.get("callbacks") or []))]
    callbacks += [
        # the step checkpoints only: last.ckpt has one writer, LastCheckpoint (its docstring says why not this one)
        ModelCheckpoint(dirpath=run_dir.checkpoints, filename="step-{step:08d}", auto_insert_metric_name=False,
                        every_n_train_steps=run.every_n_train_steps, monitor="step", mode="max",
                        save_top_k=run.keep_last_k, save_last=False),
        preemption,
        LastCheckpoint(run_dir.last_checkpoint, run.every_n_train_steps, preemption),
        ModelTarget(),  # every checkpoint names the class that rebuilds it (launch/export.py reads it)
        DataHealthLogger(every_n_steps=trainer_cfg.get("log_every_n_steps", 50)),
        RichProgressBar(refresh_rate=10),  # redrawing every batch competes with small models' steps for the CPU
    ]
    plugins: list = []
    if not is_deepspeed(strategy_cfg):
        plugins.append(AtomicCheckpointIO())
    if SLURMEnvironment.detect():
        # Lightning's own SLURM requeue saves from inside the signal handler; Preemption does it safely instead
        plugins.append(SLURMEnvironment(auto_requeue=False))

    trainer = RunTrainer(
        run_dir,
        **trainer_cfg,
        strategy=build_strategy(strategy_cfg, batch_size),
        default_root_dir=str(run_dir.path),
        logger=loggers,
        callbacks=callbacks,
        plugins=plugins or None,
        use_distributed_sampler=False,
        enable_checkpointing=True,
    )
    return trainer, preemption


def stopping_limit(trainer: Any) -> str | None:
    """The Trainer limit that ended a fit, checked in the order of Lightning's fit loop (max_steps first); None when
    something else stopped it (a callback such as EarlyStopping, or trainer.max_time)."""
    for key, reached, limit in (("trainer.max_steps", trainer.global_step, trainer.max_steps),
                                ("trainer.max_epochs", trainer.current_epoch, trainer.max_epochs)):
        if limit not in (None, -1) and reached >= limit:
            return key
    return None


def slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def raise_if(issues: list[ConfigIssue]) -> None:
    if issues:
        raise UsageError([str(i) for i in issues])

"""Preemption: a signal only sets a flag; the save happens at a step boundary, on every rank.

SLURM sends SIGUSR1 (`#SBATCH --signal=USR1@LEAD`) before the time limit, and SIGTERM when it cancels or
preempts a job. Saving inside a signal handler would interrupt whatever the process was doing (possibly a
collective or a checkpoint write), and saving from rank 0 alone deadlocks sharded strategies, so the handler
records the signal and `Preemption` acts on it after the current optimizer step.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks.signals import SignalFlag

log = logging.getLogger(__name__)


class Preemption(Callback):
    """Saves `checkpoint_path` on every rank and stops training once any rank has received a signal."""

    def __init__(self, checkpoint_path: str | Path, flag: SignalFlag | None = None):
        self.checkpoint_path = Path(checkpoint_path)
        self.flag = flag or SignalFlag()
        self.preempted_at_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler (which broadcasts from inside the handler) just before
        # training starts; ours replaces it for the duration of training.
        self.flag.install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # A collective every step: every rank must take the same branch, and only one may have been signalled.
        stop = trainer.strategy.reduce_boolean_decision(self.flag.received is not None, all=False)
        if not stop or self.preempted_at_step is not None:
            return
        signame = signal.Signals(self.flag.received).name if self.flag.received else "a signal on another rank"
        log.warning("preemption (%s): saving %s at step %d", signame, self.checkpoint_path, trainer.global_step)
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        self.preempted_at_step = trainer.global_step
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.flag.restore()

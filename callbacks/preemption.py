"""Preemption and Ctrl-C: a signal only sets a flag; the save happens at a step boundary, on every rank.

SLURM sends SIGUSR1 (`#SBATCH --signal=USR1@LEAD`) before the time limit, and SIGTERM when it cancels or
preempts a job; Ctrl-C sends SIGINT (in a terminal, to every process of the run: all DDP ranks). Saving inside a
signal handler would interrupt whatever the process was doing (possibly a collective or a checkpoint write), and
saving from rank 0 alone deadlocks sharded strategies, so the handler records the signal and `Preemption` acts on it
after the current optimizer step.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.signals import SignalFlag, signal_of_precedence, signal_precedence

log = logging.getLogger(__name__)


class Preemption(Callback):
    """Saves `checkpoint_path` on every rank and stops training once any rank has received a stop signal.

    `stopped_at_step` is the step saved; `stop_signal` the signal every rank agreed on (see STOP_SIGNALS).
    """

    def __init__(self, checkpoint_path: str | Path, flag: SignalFlag | None = None):
        self.checkpoint_path = Path(checkpoint_path)
        self.flag = flag or SignalFlag()
        self.stopped_at_step: int | None = None
        self.stop_signal: int | None = None

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C, not by a preemption."""
        return self.stop_signal == signal.SIGINT

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler (which broadcasts from inside the handler) just before
        # training starts; ours replaces it for the duration of training.
        self.flag.install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # A collective every step (the maximum of every rank's signal precedence): every rank takes the same branch,
        # with the same signal, though only one may have been signalled.
        local = torch.tensor(signal_precedence(self.flag.received), device=trainer.strategy.root_device)
        agreed = signal_of_precedence(int(trainer.strategy.reduce(local, reduce_op="max")))
        if agreed is None or self.stopped_at_step is not None:
            return
        what = "interrupted" if agreed == signal.SIGINT else "preemption"
        log.warning("%s (%s): saving %s at step %d", what, signal.Signals(agreed).name, self.checkpoint_path,
                    trainer.global_step)
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        self.stopped_at_step, self.stop_signal = trainer.global_step, agreed
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.flag.restore()

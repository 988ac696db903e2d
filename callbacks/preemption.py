"""Preemption and Ctrl-C: a signal only sets a flag; the save happens at a step boundary, on every rank.

SLURM sends SIGUSR1 (`#SBATCH --signal=USR1@LEAD`) before the time limit, and SIGTERM when it cancels or
preempts a job; Ctrl-C sends SIGINT (in a terminal, to every process of the run: all DDP ranks). Saving inside a
signal handler would interrupt whatever the process was doing (possibly a collective or a checkpoint write), and
saving from rank 0 alone deadlocks sharded strategies, so the handler records the signal and `Preemption` acts on it
after the current optimizer step.

In Lightning's test loop (launch/evaluate.py test) there is nothing to save: the module keeps its finished items on
disk (lightning_modules/test_items.py). A stop signal ends the loop after the current batch by raising `TestStopped`.
Test shares may differ by one batch between ranks, so ranks agree on the signal only over the batches every rank
runs; after those, each rank goes by its own signal.
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


class TestStopped(Exception):
    """A stop signal ended a test loop after a finished batch; `signum` is the signal every rank agreed on."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Preemption(Callback):
    """Saves `checkpoint_path` on every rank and stops training once any rank has received a stop signal.

    `stopped_at_step` is the step saved; `stop_signal` the signal every rank agreed on (see STOP_SIGNALS).
    """

    def __init__(self, checkpoint_path: str | Path, flag: SignalFlag | None = None):
        self.checkpoint_path = Path(checkpoint_path)
        self.flag = flag or SignalFlag()
        self.stopped_at_step: int | None = None
        self.stop_signal: int | None = None
        self._common_test_batches = 0

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

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flag.install()  # as in training: Lightning's handlers replaced ours when the loop started
        mine = torch.tensor(sum(trainer.num_test_batches), device=trainer.strategy.root_device)
        self._common_test_batches = int(trainer.strategy.reduce(mine, reduce_op="min"))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        precedence = signal_precedence(self.flag.received)
        if trainer.world_size > 1 and batch_idx < self._common_test_batches:
            local = torch.tensor(precedence, device=trainer.strategy.root_device)
            precedence = int(trainer.strategy.reduce(local, reduce_op="max"))
        agreed = signal_of_precedence(precedence)
        if agreed is not None:
            self.stop_signal = agreed
            log.warning("%s: stopping the test loop after batch %d", signal.Signals(agreed).name, batch_idx)
            raise TestStopped(agreed)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.flag.restore()

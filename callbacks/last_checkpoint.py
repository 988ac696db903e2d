"""last.ckpt: the run's newest state, written by this callback alone (and by Preemption when a signal stops the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks.preemption import Preemption


class LastCheckpoint(Callback):
    """Saves `checkpoint_path` every `every_n_train_steps` optimizer steps, at the last step of `max_steps`, and when a
    fit ends at a step it did not save yet (`max_epochs`, a callback that stopped it); nothing more when `preemption`
    saved the same path at that step.

    Lightning's ModelCheckpoint(save_last=True) is not used for last.ckpt: finding the name taken by a save it did not
    make itself (this callback's final save, a preemption save, a resumed run's), it writes last-v1.ckpt instead, and
    goes on updating that one. Every save here happens at a batch's end, as a preemption save does: a checkpoint
    written later, in on_train_end, would already count an interrupted epoch as complete, so training further from it
    (`--resume last.ckpt trainer.max_steps=MORE`) would skip the rest of that epoch's data."""

    def __init__(self, checkpoint_path: str | Path, every_n_train_steps: int, preemption: Preemption | None = None):
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        if preemption is not None and Path(preemption.checkpoint_path) != Path(checkpoint_path):
            raise ValueError(f"preemption saves {preemption.checkpoint_path}, not {checkpoint_path}: its saves "
                             "would not stand for this callback's")
        self.checkpoint_path = Path(checkpoint_path)
        self.every_n_train_steps = every_n_train_steps
        self.preemption = preemption
        self._start_step: int | None = None
        self.saved_step: int | None = None  # the step of this fit's newest save of checkpoint_path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step, self.saved_step = trainer.global_step, None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        # under gradient accumulation a batch may end without an optimizer step: nothing new to save then
        if step == self._start_step or self._saved_at(step):
            return
        if step % self.every_n_train_steps == 0 or 0 <= trainer.max_steps <= step:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every rank reaches on_train_end, so the save stays collective under sharded strategies
        if not self._saved_at(trainer.global_step):
            self._save(trainer)

    def _saved_at(self, step: int) -> bool:
        return step == self.saved_step or (self.preemption is not None and self.preemption.stopped_at_step == step)

    def _save(self, trainer: L.Trainer) -> None:
        # weights_only=False: the whole resumable state (Lightning's default; said, so that it does not log the default
        # it took)
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        self.saved_step = trainer.global_step

"""Save the final state as last.ckpt when training ends at a step no checkpoint covered yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class FinalCheckpoint(Callback):
    """At the last step of `max_steps` the save happens at the batch's end, as a preemption save does: a checkpoint
    written later, in on_train_end, would already count the interrupted epoch as complete, so training further from it
    (`--resume last.ckpt trainer.max_steps=MORE`) would skip the rest of that epoch's data."""

    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        self._saved_step: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step and self._saved_step != trainer.global_step:
            # weights_only=False: the whole resumable state (Lightning's default; said, so that it does not log the
            # default it took)
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every rank reaches on_train_end, so the save stays collective under sharded strategies
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)

"""Save the final state as last.ckpt when training ends at a step no checkpoint covered yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class FinalCheckpoint(Callback):
    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        self._saved_step: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every rank reaches on_train_end, so the save stays collective under sharded strategies
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(self.checkpoint_path)

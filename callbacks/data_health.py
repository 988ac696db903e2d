"""Log the data's health (samples read, bad samples skipped, their fraction) with the training metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class DataHealthLogger(Callback):
    """Logs `datamodule.health_metrics()` (a dict of floats), if the datamodule has it, every `every_n_steps`.

    Counts are this rank's: a bad shard read by one rank shows in that rank's numbers (rank 0's are the ones the
    loggers write)."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps

    @staticmethod
    def _metrics(trainer: L.Trainer) -> dict[str, float]:
        health_metrics = getattr(trainer.datamodule, "health_metrics", None)
        return health_metrics() if callable(health_metrics) else {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0 and (metrics := self._metrics(trainer)):
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)

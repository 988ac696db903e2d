"""A record of which samples each training step consumed: `<run dir>/sample_log/rank<R>.tsv`.

One line per trained batch, `global_step<TAB>epoch<TAB>key,key,...`, appended across resumes. It answers "what did
step N train on" when a loss spikes, and it is how the tests check that a resumed run reads exactly what an
uninterrupted one reads (lines after the checkpoint a run resumed from are superseded by the resumed run's lines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class SampleLog(Callback):
    def __init__(self, key_field: str = "__key__", directory: str | None = None):
        self.key_field = key_field
        self.directory = directory
        self._file: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = Path(self.directory or Path(trainer.default_root_dir) / "sample_log")
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / f"rank{trainer.global_rank}.tsv", "a", buffering=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        keys = batch.get(self.key_field) if isinstance(batch, dict) else None
        if self._file is not None and keys is not None:
            self._file.write(f"{trainer.global_step}\t{trainer.current_epoch}\t{','.join(map(str, keys))}\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

"""What image and video loggers share: keep the first samples of rank 0's first validation batch, and at every k-th
validation (never in the sanity check) ask the LightningModule for rows drawn from them with a freshly seeded
generator, so two logs differ only by the model's weights.

A subclass names the module's method (`rows_method`: called as `rows(batch, generator)`), what it returns
(`rows_returns`, for the error of a module without it), its default folder under the run directory, and writes the
rows (`write_rows`). Only rank 0 keeps a batch and draws; the other ranks only count validations (no collective is
called, so the ranks need agree on nothing but the validation count, which each keeps the same way).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class ValidationSampleLogger(Callback, ABC):
    """every_n_val: rows at every k-th validation. max_samples: samples of the first validation batch kept.
    directory: where the files go (default `<default_root_dir>/<default_subdir>`). seed: the generator's seed."""

    rows_method = ""  # the LightningModule's method: rows(batch, generator) -> {row name: ...}
    rows_returns = ""  # what it returns, for the error when a module lacks it
    default_subdir = ""

    def __init__(self, every_n_val: int, max_samples: int, directory: str | None, seed: int):
        self.every_n_val, self.max_samples, self.directory, self.seed = every_n_val, max_samples, directory, seed
        self.validations = 0  # full validations seen (saved in checkpoints: a resumed run keeps the rhythm)
        self._batch: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(directory=self.directory)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, self.rows_method, None)):
            name = type(self).__name__
            raise TypeError(f"{name}: {type(pl_module).__name__} has no {self.rows_method}(batch, generator) method; "
                            f"implement it to return {self.rows_returns}, or remove the {name} callback")

    def output_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.directory) if self.directory else Path(trainer.default_root_dir) / self.default_subdir

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._batch is not None or batch_idx or dataloader_idx or not trainer.is_global_zero:
            return
        if not isinstance(batch, dict):
            raise TypeError(f"{type(self).__name__}: validation batches must be dicts of per-sample fields, got "
                            f"{type(batch).__name__}")
        self._batch = {key: value.detach().cpu()[:self.max_samples] if isinstance(value, torch.Tensor)
                       else list(value)[:self.max_samples] if isinstance(value, (list, tuple)) else value
                       for key, value in batch.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_val or not trainer.is_global_zero or self._batch is None:
            return
        self.write_rows(trainer, self.rows(pl_module))

    def rows(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The module's rows of the kept batch, drawn with a generator seeded with `seed`, without gradients."""
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            return getattr(pl_module, self.rows_method)(self._batch, generator)

    @abstractmethod
    def write_rows(self, trainer: L.Trainer, rows: dict[str, torch.Tensor]) -> Any:
        """Write one validation's rows (the files, and TensorBoard when it is among the trainer's loggers)."""

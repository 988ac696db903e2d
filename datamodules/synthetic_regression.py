"""Synthetic regression data (y = tanh(x . w) + noise) for smoke tests and the spine's demo."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.errors import raise_param_problems
from datamodules.resumable import EpochShardedSampler, ResumableDataLoader, consumed_train_batches


class SyntheticRegressionData(L.LightningDataModule):
    def __init__(self, batch_size: int = 32, num_train: int = 1024, num_val: int = 128, dim: int = 16,
                 noise: float = 0.05, seed: int = 0, num_workers: int = 0):
        super().__init__()
        raise_param_problems([(name, f"must be >= {low}, got {value}")
                              for name, value, low in (("batch_size", batch_size, 1), ("num_train", num_train, 1),
                                                       ("num_val", num_val, 0), ("dim", dim, 1)) if value < low])
        self.batch_size, self.num_train, self.num_val, self.dim = batch_size, num_train, num_val, dim
        self.noise, self.seed, self.num_workers = noise, seed, num_workers

    def _make(self, n: int, offset: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(self.seed)
        weight = torch.randn(self.dim, 1, generator=generator)
        generator.manual_seed(self.seed + 1 + offset)
        x = torch.randn(n, self.dim, generator=generator)
        y = torch.tanh(x @ weight) + self.noise * torch.randn(n, 1, generator=generator)
        return TensorDataset(x, y)

    def setup(self, stage: str) -> None:
        self.train_set = self._make(self.num_train, 0)
        self.val_set = self._make(self.num_val, 1) if self.num_val else None

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> ResumableDataLoader:
        rank, world_size = self._rank()
        if self.num_train // world_size < self.batch_size:
            raise ValueError(f"num_train={self.num_train} gives each of {world_size} ranks fewer samples than "
                             f"batch_size={self.batch_size}")
        sampler = EpochShardedSampler(self.num_train, rank=rank, world_size=world_size, seed=self.seed)
        return ResumableDataLoader(self.train_set, sampler=sampler, batch_size=self.batch_size,
                                   consumed_batches=consumed_train_batches(self.trainer),
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        rank, world_size = self._rank()
        sampler = EpochShardedSampler(self.num_val, rank=rank, world_size=world_size, seed=self.seed, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

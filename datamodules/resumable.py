"""Rank-split, deterministically shuffled loading whose position is saved in Lightning checkpoints.

The position saved is the number of batches the training loop has *consumed*, read from the Trainer's batch
progress: Lightning prefetches a batch ahead, so the loader's own count of batches handed out would be one too
many when a checkpoint is written in `on_train_batch_end`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShardedSampler(Sampler[int]):
    """This rank's indices of an epoch: a permutation drawn from (seed, epoch), split by rank, the same count on
    every rank (the remainder is left out, so no rank waits on another), resumable at a sample offset."""

    def __init__(self, size: int, *, rank: int, world_size: int, seed: int, shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if size < world_size:
            raise ValueError(f"{size} samples cannot be split over {world_size} ranks")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle
        self.per_rank = size // world_size
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, offset: int) -> None:
        """The next iteration over `epoch` starts at this rank's `offset`-th sample."""
        self._resume_at = (epoch, offset)

    def _indices(self) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        return order[self.rank :: self.world_size][: self.per_rank]

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            start = self._resume_at[1]
        yield from self._indices()[start:].tolist()
        # Cleared only after a full pass: Lightning may call iter() more than once before the first batch.
        self._resume_at = None

    def __len__(self) -> int:
        return self.per_rank


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochShardedSampler` that Lightning checkpoints (`state_dict`/`load_state_dict`)."""

    def __init__(self, dataset: Dataset, *, sampler: EpochShardedSampler, batch_size: int,
                 consumed_batches: Callable[[], int], **kwargs: Any):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._consumed_batches = consumed_batches

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "consumed_samples": self._consumed_batches() * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(int(state["epoch"]), int(state["consumed_samples"]))


def consumed_train_batches(trainer: L.Trainer) -> Callable[[], int]:
    """Batches of the current epoch the fit loop has finished (restored by Lightning on resume)."""
    return lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed

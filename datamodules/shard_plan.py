"""The order in which one rank reads a dataset's samples in one epoch, computed from sample counts alone.

Every rank computes the same shard permutation from (seed, epoch), lays the shards' samples end to end in that order
and takes an equal, contiguous share of the stream (so each rank reads few shards, and every rank gets the same
number of samples whatever the shard sizes). A seeded shuffle buffer then reorders the rank's share, exactly as a
streaming shuffle buffer would, but on sample numbers: the order of epoch `e` is known before any byte is read,
which is what lets a resumed run start at batch k without reading the k * batch_size samples before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *stream]))


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return epoch_rng(seed, epoch).permutation(num_shards) if shuffle else np.arange(num_shards)


def buffer_shuffle(items: np.ndarray, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """What a shuffle buffer of `buffer_size` does to a stream: fill, then for each new item emit a random slot and
    put the item there; drain the rest in random order."""
    n = len(items)
    if n == 0 or buffer_size <= 1:
        return items.copy()
    size = min(buffer_size, n)
    out = np.empty_like(items)
    buffer = items[:size].copy()
    slots = rng.integers(0, size, n - size)
    for i in range(n - size):  # sequential by nature: each emitted slot depends on what was put there before
        slot = slots[i]
        out[i] = buffer[slot]
        buffer[slot] = items[size + i]
    out[n - size:] = buffer[rng.permutation(size)]
    return out


@dataclass(frozen=True)
class PlanSettings:
    batch_size: int
    seed: int
    shuffle: bool
    shuffle_buffer: int
    drop_last: bool
    # Evaluation that must see every sample exactly once (a test split): rank shares differ by at most one sample
    # instead of being cut to the same length, so ranks may run different numbers of batches.
    every_sample: bool = False


def samples_per_rank(total_samples: int, world_size: int) -> int:
    return total_samples // world_size


def rank_span(total_samples: int, rank: int, world_size: int, every_sample: bool = False) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of the epoch's stream: equal shares (the remainder is left out),
    or with `every_sample` shares that cover the whole stream, the first ranks one sample longer."""
    if not every_sample:
        share = samples_per_rank(total_samples, world_size)
        return rank * share, (rank + 1) * share
    base, extra = divmod(total_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def batches_per_rank(total_samples: int, world_size: int, settings: PlanSettings, rank: int = 0) -> int:
    start, end = rank_span(total_samples, rank, world_size, settings.every_sample)
    share = end - start
    return share // settings.batch_size if settings.drop_last else -(-share // settings.batch_size)


def rank_order(counts: list[int], rank: int, world_size: int, epoch: int, settings: PlanSettings) -> np.ndarray:
    """Global sample numbers (shard after shard, in listing order) this rank reads in `epoch`, in reading order;
    truncated to whole batches when `drop_last`."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    order = shard_order(len(counts), settings.seed, epoch, settings.shuffle)
    stream = np.concatenate([np.arange(starts[i], starts[i] + counts[i], dtype=np.int64) for i in order]) \
        if len(order) else np.zeros(0, dtype=np.int64)
    start, end = rank_span(len(stream), rank, world_size, settings.every_sample)
    mine = stream[start:end]
    if settings.shuffle:
        mine = buffer_shuffle(mine, settings.shuffle_buffer, epoch_rng(settings.seed, epoch, 1, rank))
    if settings.drop_last:
        mine = mine[: len(mine) // settings.batch_size * settings.batch_size]
    return mine

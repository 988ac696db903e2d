"""The DataModule every method's data builds on: webdataset shards, split by rank from the Trainer, equal batches on
every rank, an exact mid-epoch resume, and a corrupt-data policy.

A method's DataModule subclasses `ShardDataModule` and overrides `make_sample()` to return a picklable callable that
turns one raw sample ({ext: bytes, '__key__'}) into a dict of tensors (usually a `DecodeSample` subclass with a
`transform`). The loader's position (epoch, batches consumed) and the bad-sample counters are saved in every
checkpoint through Lightning's stateful-dataloader hooks (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Literal, Mapping

import lightning as L
from torch.utils.data import DataLoader, Sampler

from datamodules.errors import raise_param_problems
from datamodules.resumable import consumed_train_batches
from datamodules.shard_dataset import DecodeSample, IndexedShardDataset, StreamShardDataset, read_sample
from datamodules.shard_plan import PlanSettings, batches_per_rank, rank_span
from datamodules.shard_source import ShardSource, open_source
from datamodules.shards import DatasetError


TEST_SPLIT = "__test__"  # the test split's key among the splits (a validation set may be named "test")


def _split_name(split: str) -> str:
    return "test" if split == TEST_SPLIT else split


def _param_of(split: str) -> str:
    return split if split == "train" else "test" if split == TEST_SPLIT else "val"


class BatchPlanSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, batch number) for this rank's plan; Lightning calls `set_epoch`, a restored state `resume`."""

    def __init__(self, num_batches: int):
        self.num_batches = num_batches
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        self._resume_at = (epoch, batches)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        resume = self._resume_at
        start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        yield from ((self.epoch, j) for j in range(start, self.num_batches))
        # Cleared only once the epoch has been handed out in full: Lightning calls iter() more than once before the
        # first batch (a check that the loader iterates, then the loop itself), and each must start at the position.
        self._resume_at = None

    def __len__(self) -> int:
        return self.num_batches


class DataHealth:
    """Read and bad sample counts of one loader: this epoch (for the threshold) and since the run began."""

    def __init__(self, name: str, planned_per_epoch: int, max_bad_fraction: float):
        self.name, self.planned, self.max_bad_fraction = name, planned_per_epoch, max_bad_fraction
        self.epoch = -1
        self.read = self.bad = self.total_read = self.total_bad = 0
        self.bad_shards: dict[str, int] = {}

    def start_epoch(self, epoch: int, new_pass: bool = False) -> None:
        """Epoch counts restart with a new epoch (training) or with every pass (validation runs each epoch)."""
        if new_pass or epoch != self.epoch:
            self.epoch, self.read, self.bad, self.bad_shards = epoch, 0, 0, {}

    def add(self, stats: dict[str, Any]) -> None:
        self.read += stats["read"]
        self.bad += stats["bad"]
        self.total_read += stats["read"]
        self.total_bad += stats["bad"]
        for shard, n in stats["bad_shards"].items():
            self.bad_shards[shard] = self.bad_shards.get(shard, 0) + n
        if self.bad > self.max_bad_fraction * self.planned:
            worst = max(self.bad_shards, key=self.bad_shards.get)
            first = stats["errors"][0] if stats["errors"] else ""
            raise DatasetError(
                f"{worst}: {self.bad} bad samples in epoch {self.epoch} of the {self.name} data (most in this shard, "
                f"{self.bad_shards[worst]}) exceed max_bad_fraction={self.max_bad_fraction} of the epoch's "
                f"{self.planned} samples; repair or rewrite the shard, or raise data.params.max_bad_fraction"
                + (f" ({first})" if first else ""))

    def metrics(self) -> dict[str, float]:
        return {f"data/{self.name}_bad_samples": float(self.total_bad),
                f"data/{self.name}_read_samples": float(self.total_read),
                f"data/{self.name}_bad_fraction": self.total_bad / max(self.total_read, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "read": self.read, "bad": self.bad, "total_read": self.total_read,
                "total_bad": self.total_bad, "bad_shards": dict(self.bad_shards)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.read, self.bad = state["epoch"], state["read"], state["bad"]
        self.total_read, self.total_bad = state["total_read"], state["total_bad"]
        self.bad_shards = dict(state["bad_shards"])


class ShardDataLoader(DataLoader):
    """Batches from a shard dataset; strips and counts their `__data__`; saves its position in checkpoints."""

    def __init__(self, dataset: IndexedShardDataset | StreamShardDataset, *, health: DataHealth,
                 consumed_batches: Callable[[], int] | None, current_epoch: Callable[[], int] | None,
                 **kwargs: Any):
        if isinstance(dataset, IndexedShardDataset):
            super().__init__(dataset, batch_size=None, sampler=BatchPlanSampler(len(dataset)), **kwargs)
        else:  # a stream's workers get a fresh copy of the dataset (epoch, start) at every iter()
            super().__init__(dataset, batch_size=None, persistent_workers=False,
                             **{k: v for k, v in kwargs.items() if k != "persistent_workers"})
        self.health = health
        self._consumed_batches = consumed_batches
        self._current_epoch = current_epoch
        self._stream_epoch = 0
        self._stream_resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (Lightning sets it through the sampler or the Trainer's epoch)."""
        if isinstance(self.sampler, BatchPlanSampler):
            self.sampler.set_epoch(epoch)
        self._stream_epoch = epoch

    def _epoch(self) -> int:
        if isinstance(self.sampler, BatchPlanSampler):
            return self.sampler.epoch
        return self._current_epoch() if self._current_epoch is not None else self._stream_epoch

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.dataset, StreamShardDataset):
            epoch, resume = self._epoch(), self._stream_resume
            self.dataset.epoch = epoch
            self.dataset.start_batch = resume[1] if resume is not None and resume[0] == epoch else 0
        self.health.start_epoch(self._epoch(), new_pass=self._consumed_batches is None)
        for batch in super().__iter__():
            self.health.add(batch.pop("__data__"))
            yield batch
        self._stream_resume = None  # kept until the epoch is read in full (see BatchPlanSampler.__iter__)

    def state_dict(self) -> dict[str, Any]:
        consumed = self._consumed_batches() if self._consumed_batches is not None else 0
        return {"epoch": self._epoch(), "consumed_batches": consumed, "health": self.health.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed_batches"])
        if isinstance(self.sampler, BatchPlanSampler):
            self.sampler.resume(epoch, consumed)
        else:
            self._stream_resume = (epoch, consumed)
        self.health.load_state_dict(state["health"])


class ShardDataModule(L.LightningDataModule):
    """Training and validation data from webdataset shards (see the module docstring).

    `train` / `val`: a dataset directory (with index.json), a brace pattern or list of local tars, or webdataset
    URLs (pipe:, http) with `train_index` / `val_index` naming the index.json that holds their sample counts.
    `val` may also map names to sources ({base: DIR, new: DIR}): one validation loader per name, in that order.
    `test` (Lightning's test loop: launch/evaluate.py test): a local dataset whose every sample is read exactly once
    over all ranks, in order (rank shares differ by at most one sample; no sample is dropped or repeated).
    """

    def __init__(self, train: str | list[str] | None = None,
                 val: str | list[str] | dict[str, str | list[str]] | None = None, batch_size: int = 32,
                 num_workers: int = 2, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 2000,
                 max_bad_fraction: float = 0.01, verify: Literal["sha256", "size", "none"] = "sha256",
                 train_index: str | None = None, val_index: str | dict[str, str] | None = None,
                 required_keys: list[str] | None = None, prefetch_factor: int = 2,
                 test: str | list[str] | None = None, test_index: str | None = None):
        super().__init__()
        problems = []
        if train is None and val is None and test is None:
            problems.append(("train", "give at least one of train, val or test"))
        if batch_size < 1:
            problems.append(("batch_size", f"must be >= 1, got {batch_size}"))
        if num_workers < 0:
            problems.append(("num_workers", f"must be >= 0, got {num_workers}"))
        if shuffle_buffer < 1:
            problems.append(("shuffle_buffer", f"must be >= 1, got {shuffle_buffer}"))
        if not 0 <= max_bad_fraction <= 1:
            problems.append(("max_bad_fraction", f"must be in [0, 1], got {max_bad_fraction}"))
        if verify not in ("sha256", "size", "none"):
            problems.append(("verify", f"must be sha256, size or none, got {verify!r}"))
        if prefetch_factor < 1:
            problems.append(("prefetch_factor", f"must be >= 1, got {prefetch_factor}"))
        named_val = dict(val) if isinstance(val, dict) else ({"val": val} if val is not None else {})
        raise_param_problems(problems + self.config_problems({"val": val}))
        named_index = dict(val_index) if isinstance(val_index, dict) else {name: val_index for name in named_val}
        self.val_names = list(named_val)
        self.paths = {"train": train, **named_val, TEST_SPLIT: test}
        self.indexes = {"train": train_index, **{name: named_index.get(name) for name in named_val},
                        TEST_SPLIT: test_index}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.max_bad_fraction, self.verify = max_bad_fraction, verify
        self.required_keys, self.prefetch_factor = required_keys, prefetch_factor
        self.sources: dict[str, ShardSource] = {}
        self.health: dict[str, DataHealth] = {}

    # -- what methods override ---------------------------------------------------------------------------------
    @classmethod
    def config_problems(cls, params: Mapping[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """(param, message) for values a method's data cannot mean, reported by the config checker (launch/config.py)
        before anything runs and by the constructor; any validation set name is fine here."""
        return []

    def make_sample(self, split: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Raw sample -> dict of tensors (run in the loader's workers, so it must pickle)."""
        return DecodeSample(required=self._required(split))

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _required(self, split: str) -> list[str]:
        if self.required_keys is not None:
            return list(self.required_keys)
        source = self.sources[split]
        if source.keys:
            return list(source.keys)
        # A scanned tar has no index: its first sample says which fields every sample carries.
        for shard in source.shards:
            if shard.samples and shard.offsets is not None:
                try:
                    with open(shard.url, "rb") as f:
                        return sorted(k for k in read_sample(f, shard.offsets[0]) if not k.startswith("__"))
                except Exception:  # noqa: BLE001 - an unreadable first sample is counted when it is read
                    continue
        return []

    def rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str) -> None:
        splits = (["train"] if stage == "fit" else []) + (self.val_names if stage in ("fit", "validate") else []) \
            + ([TEST_SPLIT] if stage == "test" else [])
        for split in splits:
            if self.paths.get(split) is not None and split not in self.sources:
                self.sources[split] = open_source(self.paths[split], verify=self.verify, index=self.indexes[split])

    def _settings(self, split: str) -> PlanSettings:
        train = split == "train"
        return PlanSettings(batch_size=self.batch_size, seed=self.seed, shuffle=self.shuffle and train,
                            shuffle_buffer=self.shuffle_buffer, drop_last=train, every_sample=split == TEST_SPLIT)

    def _loader(self, split: str) -> ShardDataLoader:
        if split not in self.sources:
            raise DatasetError(f"no {_split_name(split)} data: set data.params.{_param_of(split)}")
        source, settings = self.sources[split], self._settings(split)
        rank, world = self.rank_and_world()
        if split == TEST_SPLIT and not source.random_access:
            raise DatasetError(f"{source.description}: the test split is read sample by sample from a local dataset "
                               f"directory (with index.json) or local tars; copy the shards locally for testing")
        if split == TEST_SPLIT and source.total_samples < world:
            # a rank without a batch skips Lightning's whole test loop, and the others would wait for it at the end
            raise DatasetError(f"{source.description}: {source.total_samples} test sample(s) cannot give each of "
                               f"{world} rank(s) one; run the test on at most {max(source.total_samples, 1)} rank(s)")
        if source.random_access:
            if split != TEST_SPLIT and batches_per_rank(source.total_samples, world, settings) < 1:
                raise DatasetError(f"{source.description}: {source.total_samples} samples give each of {world} "
                                   f"rank(s) no full batch of {self.batch_size}")
            dataset: Any = IndexedShardDataset(source, rank=rank, world_size=world, settings=settings,
                                               make_sample=self.make_sample(split))
            start, end = rank_span(source.total_samples, rank, world, settings.every_sample)
            planned = end - start
        else:
            dataset = StreamShardDataset(source, rank=rank, world_size=world, num_workers=self.num_workers,
                                         settings=settings, make_sample=self.make_sample(split))
            planned = len(dataset) * self.batch_size
        self.health[split] = DataHealth(_split_name(split), planned, self.max_bad_fraction)
        trainer = self.trainer
        consumed = consumed_train_batches(trainer) if trainer is not None and split == "train" else None
        workers = {"num_workers": self.num_workers}
        if self.num_workers > 0:
            workers.update(persistent_workers=True, prefetch_factor=self.prefetch_factor)
        return ShardDataLoader(dataset, health=self.health[split], consumed_batches=consumed,
                               current_epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
                               **workers)

    def train_dataloader(self) -> ShardDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> ShardDataLoader | list:
        loaders = [self._loader(name) for name in self.val_names if name in self.sources]
        return loaders[0] if len(loaders) == 1 and self.val_names == ["val"] else loaders

    def test_dataloader(self) -> ShardDataLoader:
        return self._loader(TEST_SPLIT)

    def val_set_names(self) -> list[str]:
        return list(self.val_names)

    def metadata(self, split: str) -> dict[str, Any]:
        """The dataset metadata of a split ('train', a validation name, or TEST_SPLIT), from its index."""
        if split not in self.sources:
            raise DatasetError(f"no {_split_name(split)} data: set data.params.{_param_of(split)}")
        return self.sources[split].metadata

    def health_metrics(self) -> dict[str, float]:
        return {k: v for health in self.health.values() for k, v in health.metrics().items()}

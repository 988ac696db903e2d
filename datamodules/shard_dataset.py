"""Datasets that turn an epoch plan into batches: random access through the index, or a webdataset stream.

Both produce whole batches (a dict of collated fields) with a `__data__` entry saying how many samples were read and
which were bad; the loader (datamodules/shard_datamodule.py) strips it, counts and enforces `max_bad_fraction`. A bad
sample (unreadable tar member, a field that does not decode, a required field missing) is left out of its batch, so
every rank still sees the same number of batches and a resumed run skips exactly what the first run skipped.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import tarfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from datamodules.shard_plan import PlanSettings, batches_per_rank, epoch_rng, rank_order, shard_order
from datamodules.shard_source import ShardSource, split_member_name
from datamodules.shards import DatasetError
from datamodules.video import VideoDecodeError, decode_frames

log = logging.getLogger("worldbridge.data")
VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv", "mov")
MAX_ERRORS_PER_BATCH = 3


def _first_sample(members: Iterator[tuple[str, Callable[[], bytes]]], where: int) -> dict[str, Any]:
    """Group (member name, read its data) pairs into the first sample: {ext: bytes, '__key__': key}."""
    sample: dict[str, Any] = {}
    key = None
    for name, read in members:
        parts = split_member_name(name)
        if parts is None:
            continue
        if key is None:
            key = parts[0]
        elif parts[0] != key:
            break
        sample[parts[1]] = read()
    if key is None:
        raise tarfile.ReadError(f"no tar member at byte {where}")
    sample["__key__"] = key
    return sample


def read_sample(f: Any, offset: int) -> dict[str, bytes]:
    """The sample whose first header is at `offset`, through tarfile (any tar dialect)."""
    f.seek(offset)
    tar = tarfile.open(fileobj=f, mode="r:")  # starts at f.tell(); reads headers from there on

    def members() -> Iterator[tuple[str, Callable[[], bytes]]]:
        for member in iter(tar.next, None):
            if member.isfile():
                yield member.name, lambda m=member: _checked(tar.extractfile(m).read(), m.size, m.name)

    return _first_sample(members(), offset)


def _checked(data: bytes, size: int, name: str) -> bytes:
    if len(data) != size:
        raise tarfile.ReadError(f"member {name} is truncated")
    return data


_ZERO_BLOCK = bytes(512)


class _NotUstar(Exception):
    """A header the minimal parser leaves to tarfile (pax, GNU long names)."""


def _octal(field: bytes) -> int:
    return int(field.rstrip(b"\0 ").strip() or b"0", 8)


def _ustar_members(buf: bytes, start: int) -> Iterator[tuple[str, Callable[[], bytes]]]:
    pos = 0
    while pos + 512 <= len(buf):
        header = buf[pos:pos + 512]
        if header == _ZERO_BLOCK:
            return
        if _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad tar header checksum at byte {start + pos}")
        kind = header[156:157]
        if kind in (b"x", b"g", b"L", b"K"):
            raise _NotUstar
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        size = _octal(header[124:136])
        data_at = pos + 512
        pos = data_at + (size + 511) // 512 * 512
        if kind in (b"0", b"\0", b"7"):
            text = name.decode("utf-8")
            yield text, lambda at=data_at, n=size, t=text: _checked(buf[at:at + n], n, t)


def read_sample_range(f: Any, start: int, end: int) -> dict[str, bytes]:
    """The sample stored in bytes [start, end) of a shard (end = the next sample's offset, or the shard's size),
    with one read and a minimal ustar header parser; headers it does not handle (pax, GNU long names) fall back to
    `read_sample` (tarfile). Checksums are verified: a damaged header is a read error, not a misread sample."""
    f.seek(start)
    buf = f.read(end - start)
    if len(buf) < end - start:
        raise tarfile.ReadError(f"shard ends at byte {start + len(buf)}, before byte {end}")
    try:
        return _first_sample(_ustar_members(buf, start), start)
    except _NotUstar:
        return read_sample(f, start)


# -- decoding --------------------------------------------------------------------------------------------------------
def _basic(key: str, data: bytes) -> Any:
    """txt/cls/json/npy without webdataset's pickle handlers: a dataset file must never run code when read."""
    ext = key.rsplit(".", 1)[-1].lower()
    if ext == "txt":
        return data.decode("utf-8")
    if ext in ("cls", "cls2", "index", "id"):
        return int(data.decode("ascii").strip())
    if ext in ("json", "jsn"):
        import json
        return json.loads(data)
    if ext == "npy":
        return torch.from_numpy(np.lib.format.read_array(io.BytesIO(data), allow_pickle=False).copy())
    return None


def _video(key: str, data: bytes) -> torch.Tensor | None:
    """Container formats (decoded by datamodules/video.py) -> uint8 [T, 3, H, W]."""
    if key.rsplit(".", 1)[-1].lower() not in VIDEO_EXTENSIONS:
        return None
    frames, _ = decode_frames(data)
    if not frames:
        raise VideoDecodeError("video has no decodable frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


class DecodeSample:
    """Raw fields -> decoded fields with webdataset's Decoder: images through PIL to uint8 [3, H, W] tensors, videos
    through PyAV, txt/cls/json/npy; `required` fields must be present. Subclass `transform` for torch transforms."""

    def __init__(self, required: Sequence[str] = (), image: str = "torchrgb8"):
        self.required = tuple(required)
        self.decoder = wds.autodecode.Decoder([wds.autodecode.imagehandler(image), _video, _basic], post=[])

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        missing = [ext for ext in self.required if ext not in raw]
        if missing:
            raise KeyError(f"missing field(s) {', '.join(missing)}")
        fields = {k: v for k, v in raw.items() if not k.startswith("__")}
        decoded = self.decoder.decode(fields)
        decoded["__key__"] = raw["__key__"]
        return self.transform(decoded, raw.get("__epoch__", 0))

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Override for per-sample torch transforms; seed random ones with
        `datamodules.transforms.sample_generator(seed, epoch, sample['__key__'])` so that a resumed run augments
        exactly as the uninterrupted one."""
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Field by field: torch's default_collate where it applies (tensors, numbers, strings, uniform dicts), else
    the list of values (e.g. JSON with varying lengths or nulls)."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        try:
            batch[key] = default_collate(values)
        except (TypeError, RuntimeError, KeyError):
            batch[key] = values
    return batch


class BatchAssembler:
    """Decodes raw samples into one collated batch, leaving bad ones out and noting them (logged rate-limited)."""

    def __init__(self, make_sample: Callable[[dict[str, Any]], dict[str, Any]]):
        self.make_sample = make_sample
        self.bad_seen = 0  # per worker process, for rate-limited logging

    def _bad(self, where: str, error: BaseException, errors: list[str]) -> None:
        message = f"{where}: {type(error).__name__}: {error}"
        self.bad_seen += 1
        if self.bad_seen <= 5 or self.bad_seen % 100 == 0:
            log.warning("skipping bad sample %s (bad samples seen by this worker: %d)", message, self.bad_seen)
        if len(errors) < MAX_ERRORS_PER_BATCH:
            errors.append(message)

    def __call__(self, raws: Sequence[tuple[str, dict[str, Any] | BaseException]], epoch: int) -> dict[str, Any]:
        """`raws`: (shard url, raw sample or the error reading it)."""
        samples, errors, bad_shards = [], [], {}
        for url, raw in raws:
            if isinstance(raw, BaseException):
                self._bad(url, raw, errors)
                bad_shards[url] = bad_shards.get(url, 0) + 1
                continue
            raw["__epoch__"] = epoch
            try:
                samples.append(self.make_sample(raw))
            except Exception as e:  # noqa: BLE001 - any decode/transform failure makes the sample bad
                cause = e.__cause__ if isinstance(e, wds.autodecode.DecodingError) and e.__cause__ else e
                self._bad(f"{url} sample {raw.get('__key__')}", cause, errors)
                bad_shards[url] = bad_shards.get(url, 0) + 1
        if not samples:
            where = max(bad_shards, key=bad_shards.get) if bad_shards else "the dataset"
            raise DatasetError(f"{where}: every sample of a batch is bad ({errors[0] if errors else 'empty batch'})")
        batch = collate(samples)
        batch["__data__"] = {"read": len(raws), "bad": len(raws) - len(samples), "bad_shards": bad_shards,
                             "errors": errors}
        return batch


# -- random access ---------------------------------------------------------------------------------------------------
class IndexedShardDataset(Dataset):
    """Item (epoch, j) is batch j of this rank's plan for that epoch; any worker can build any batch, and the
    DataLoader hands batches out in order, so the stream does not depend on the number of workers."""

    def __init__(self, source: ShardSource, *, rank: int, world_size: int, settings: PlanSettings,
                 make_sample: Callable[[dict[str, Any]], dict[str, Any]], max_open_files: int = 16):
        if not source.random_access:
            raise ValueError("IndexedShardDataset needs a source with sample offsets")
        self.source, self.rank, self.world_size, self.settings = source, rank, world_size, settings
        self.counts = [s.samples for s in source.shards]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.sizes = [s.nbytes if s.nbytes is not None else os.path.getsize(s.url) for s in source.shards]
        self.assemble = BatchAssembler(make_sample)
        self.max_open_files = max_open_files
        self._plan: tuple[int, np.ndarray] | None = None
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def order(self, epoch: int) -> np.ndarray:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, rank_order(self.counts, self.rank, self.world_size, epoch, self.settings))
        return self._plan[1]

    def _file(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked worker must not share its parent's file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.pop(shard, None)
        if f is None:
            if len(self._files) >= self.max_open_files:
                oldest = next(iter(self._files))
                self._files.pop(oldest).close()
            f = open(self.source.shards[shard].url, "rb")
        self._files[shard] = f  # re-inserted last: the dict's order is least recently used first
        return f

    def locate(self, sample: int) -> tuple[int, int, int]:
        """(shard, first byte, end byte) of a sample: it ends where the next one starts, or at the shard's end."""
        shard = int(np.searchsorted(self.starts, sample, side="right") - 1)
        i = sample - int(self.starts[shard])
        offsets = self.source.shards[shard].offsets
        end = offsets[i + 1] if i + 1 < len(offsets) else self.sizes[shard]  # type: ignore[index, arg-type]
        return shard, offsets[i], end  # type: ignore[index]

    def read(self, sample: int) -> tuple[str, dict[str, Any] | BaseException]:
        shard, start, end = self.locate(sample)
        url = self.source.shards[shard].url
        try:
            return url, read_sample_range(self._file(shard), start, end)
        except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, ValueError) as e:
            return url, e

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, j = item
        b = self.settings.batch_size
        return self.assemble([self.read(int(s)) for s in self.order(epoch)[j * b:(j + 1) * b]], epoch)

    def __len__(self) -> int:
        return batches_per_rank(sum(self.counts), self.world_size, self.settings, self.rank)


# -- streaming -------------------------------------------------------------------------------------------------------
class StreamShardDataset(IterableDataset):
    """Shards read front to back through webdataset (pipe:, http, ...): split by rank, then by worker; each worker
    yields exactly `batches_per_worker` batches, repeating its shards if it runs out, so ranks stay in step.

    Batches interleave across workers (DataLoader round-robin), global batch t coming from logical worker t % W.
    Resuming at batch k, DataLoader worker i plays logical worker (k + i) % W and replays its stream up to there,
    reading but not decoding the samples it skips.
    """

    def __init__(self, source: ShardSource, *, rank: int, world_size: int, num_workers: int, settings: PlanSettings,
                 make_sample: Callable[[dict[str, Any]], dict[str, Any]]):
        workers = max(num_workers, 1)
        if len(source.shards) < world_size * workers:
            raise DatasetError(f"{source.description}: {len(source.shards)} shard(s) cannot be split over "
                               f"{world_size} rank(s) x {workers} worker(s); a streamed source needs at least "
                               f"{world_size * workers} shards (write smaller shards, or lower data.num_workers)")
        self.source, self.rank, self.world_size, self.workers = source, rank, world_size, workers
        self.settings = settings
        self.batches_per_worker = source.total_samples // (world_size * workers * settings.batch_size)
        if self.batches_per_worker < 1:
            raise DatasetError(f"{source.description}: {source.total_samples} samples make no full batch of "
                               f"{settings.batch_size} for each of {world_size * workers} rank-workers")
        self.assemble = BatchAssembler(make_sample)
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        return self.batches_per_worker * self.workers

    def _raw(self, epoch: int, logical: int) -> Iterator[tuple[str, dict[str, Any] | BaseException]]:
        order = shard_order(len(self.source.shards), self.settings.seed, epoch, self.settings.shuffle)
        mine = [self.source.shards[i].url for i in order][self.rank::self.world_size][logical::self.workers]
        failures: list[tuple[str, BaseException]] = []

        def handler(exn: BaseException) -> bool:
            failures.append((getattr(exn, "url", None) or (exn.args[-1] if exn.args else "?"), exn))
            return True  # keep going: the failure is reported as one bad sample

        for repeat in itertools.count():
            urls = list(mine)
            if self.settings.shuffle:
                epoch_rng(self.settings.seed, epoch, 2, self.rank, logical, repeat).shuffle(urls)
            samples = wds.tarfile_to_samples(handler=handler)(iter([{"url": u} for u in urls]))
            if self.settings.shuffle and self.settings.shuffle_buffer > 1:
                rng = epoch_rng(self.settings.seed, epoch, 3, self.rank, logical, repeat)
                samples = wds.filters.shuffle(bufsize=self.settings.shuffle_buffer,
                                              initial=self.settings.shuffle_buffer,
                                              rng=_NumpyRandom(rng))(samples)
            produced = 0
            for sample in samples:
                while failures:
                    where, exn = failures.pop(0)
                    produced += 1
                    yield str(where), exn
                produced += 1
                yield sample.get("__url__", "?"), sample
            while failures:
                where, exn = failures.pop(0)
                produced += 1
                yield str(where), exn
            if produced == 0:
                raise DatasetError(f"{', '.join(mine)}: no readable sample in this worker's shards")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        b, per_worker = self.settings.batch_size, self.batches_per_worker
        first = self.start_batch + worker
        logical, local = first % self.workers, first // self.workers
        raw = self._raw(self.epoch, logical)
        for _ in itertools.islice(raw, local * b):  # replayed, not decoded
            pass
        for _ in range(local, per_worker):
            yield self.assemble(list(itertools.islice(raw, b)), self.epoch)


class _NumpyRandom:
    """The two methods webdataset's shuffle calls on a `random.Random`, from a seeded numpy Generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def random(self) -> float:
        return float(self.rng.random())

    def randint(self, a: int, b: int) -> int:
        return int(self.rng.integers(a, b + 1))

"""Writing (and validating) webdataset shard datasets: `NAME-%06d.tar` shards plus `index.json`.

Format ("worldbridge-shards/1"):
- a shard is a POSIX (ustar) tar; a sample is a run of consecutive members `KEY.EXT` sharing KEY (no dots or
  slashes in KEY), members of a sample in sorted EXT order; every member has mtime=0, uid=gid=0,
  uname=gname="", mode 0o444, so the same input gives byte-identical shards;
- shards are written under a temporary name (datamodules/files.py) and renamed when complete; `index.json` is written
  last, atomically, only after every shard is in place. A shard is closed before a sample that would take it past
  `shard_size` bytes (a lone sample larger than that gets a shard of its own) or past `max_samples` samples;
- `index.json`: {"format", "name", "shards": [{"file", "samples", "bytes", "sha256", "first_key", "offsets"}],
  "total_samples", "keys", "metadata", "command", "seed"}; `offsets[i]` is the byte offset of sample i's first
  tar header in its shard.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from datamodules.files import AtomicFile, atomic_write_text, sha256_file

FORMAT = "worldbridge-shards/1"
INDEX_FILE = "index.json"
DEFAULT_SHARD_SIZE = 256 * 1000 ** 2
BLOCK = tarfile.BLOCKSIZE  # 512

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4,
          "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4, "K": 1000, "M": 1000 ** 2,
          "G": 1000 ** 3, "T": 1000 ** 4}
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_EXT_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


class DatasetError(Exception):
    """A dataset directory or its index is missing, malformed or does not match its shards."""


def parse_size(text: str | int) -> int:
    """'64MB' -> 64_000_000, '1GB', '500KB', '1GiB', '1234' (bytes). Raises ValueError on anything else."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (expected e.g. 500KB, 64MB, 1GB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def sample_tar_bytes(fields: Mapping[str, bytes]) -> int:
    """Bytes a sample takes in a ustar shard: one header block per member plus its data padded to 512."""
    return sum(BLOCK + _padded(len(v)) for v in fields.values())


def _final_size(offset: int) -> int:
    """Size of a closed tar whose members end at `offset`: two zero end blocks, padded to tarfile.RECORDSIZE."""
    end = offset + 2 * BLOCK
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ShardWriter:
    """Writes samples into `out_dir/NAME-%06d.tar`; `close()` (or leaving the `with` block) writes index.json.

    On an exception inside the `with` block the temp shard is removed and no index.json is written (shards already
    renamed into place are removed too, so nothing that looks like a complete dataset is left behind).
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, shard_size: int | str = DEFAULT_SHARD_SIZE,
                 max_samples: int | None = None, metadata: Mapping[str, Any] | None = None,
                 command: Sequence[str] | None = None, seed: int | None = None):
        if not _KEY_RE.match(name):
            raise ValueError(f"dataset name must match [A-Za-z0-9_-]+, got {name!r}")
        self.out_dir = Path(out_dir)
        self.name = name
        self.shard_size = parse_size(shard_size)
        if max_samples is not None and max_samples <= 0:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        self.max_samples = max_samples
        self.metadata = dict(metadata or {})
        self.command = list(sys.argv if command is None else command)
        self.seed = seed
        self.shards: list[dict[str, Any]] = []
        self.keys: set[str] | None = None
        self._seen: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._file: AtomicFile | None = None
        self._cur: dict[str, Any] | None = None
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / INDEX_FILE).exists():
            raise DatasetError(f"{self.out_dir / INDEX_FILE}: a dataset already exists here; use an empty directory")

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing ---------------------------------------------------------------------------------------------
    def _shard_file(self, i: int) -> str:
        return f"{self.name}-{i:06d}.tar"

    def _open_shard(self, first_key: str) -> None:
        i = len(self.shards)
        self._file = AtomicFile(self.out_dir / self._shard_file(i), "wb")
        self._tar = tarfile.open(fileobj=self._file.file, mode="w", format=tarfile.USTAR_FORMAT)
        self._cur = {"file": self._shard_file(i), "samples": 0, "bytes": 0, "sha256": "", "first_key": first_key,
                     "offsets": []}

    def _close_shard(self) -> None:
        assert self._tar is not None and self._cur is not None and self._file is not None
        self._tar.close()
        path = self._file.commit()
        self.shards.append(self._cur)  # listed first: abort() removes it if hashing fails
        self._cur["bytes"] = path.stat().st_size
        self._cur["sha256"] = sha256_file(path)
        self._tar = self._file = self._cur = None

    def write(self, key: str, fields: Mapping[str, bytes]) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if not isinstance(key, str) or not _KEY_RE.match(key) or len(key) > 60:
            raise ValueError(f"sample key must match [A-Za-z0-9_-]+ (no dots), at most 60 chars, got {key!r}")
        if not fields:
            raise ValueError(f"sample {key!r} has no fields")
        for ext, value in fields.items():
            if not _EXT_RE.match(ext) or len(ext) > 30:
                raise ValueError(f"sample {key!r}: bad field extension {ext!r}")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"sample {key!r}: field {ext!r} must be bytes, got {type(value).__name__}")
        if key in self._seen:
            raise ValueError(f"duplicate sample key {key!r}")
        self._seen.add(key)
        exts = set(fields)
        self.keys = exts if self.keys is None else self.keys & exts
        size = sample_tar_bytes(fields)
        if self._cur is not None:
            used = self._tar.offset  # type: ignore[union-attr]
            full = self._cur["samples"] > 0 and (
                _final_size(used + size) > self.shard_size
                or (self.max_samples is not None and self._cur["samples"] >= self.max_samples))
            if full:
                self._close_shard()
        if self._cur is None:
            self._open_shard(key)
        assert self._tar is not None and self._cur is not None
        self._cur["offsets"].append(self._tar.offset)
        for ext in sorted(fields):
            data = bytes(fields[ext])
            self._tar.addfile(_member(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._cur["samples"] += 1

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write index.json (atomically). Returns the index."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        try:
            if self._cur is not None:
                self._close_shard()
            index = {
                "format": FORMAT,
                "name": self.name,
                "shards": self.shards,
                "total_samples": sum(s["samples"] for s in self.shards),
                "keys": sorted(self.keys or ()),
                "metadata": self.metadata,
                "command": self.command,
                "seed": self.seed,
            }
            atomic_write_text(self.out_dir / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return index

    def abort(self) -> None:
        """Remove the temp shard and every shard this writer wrote; write no index."""
        self._closed = True
        try:
            if self._tar is not None:
                self._tar.close()
        except Exception:  # the shard is being thrown away; only its removal matters
            pass
        if self._file is not None:
            self._file.discard()
        for shard in self.shards:
            (self.out_dir / shard["file"]).unlink(missing_ok=True)
        self._tar = self._file = self._cur = None


def _encode_one(args: tuple[Callable[[Any], tuple[str, dict[str, bytes]]], Any]) -> tuple[str, dict[str, bytes]]:
    fn, item = args
    return fn(item)


def write_parallel(out_dir: str | os.PathLike, name: str, items: Sequence[Any],
                   encode_fn: Callable[[Any], tuple[str, Mapping[str, bytes]]], num_workers: int = 1,
                   shard_size: int | str = DEFAULT_SHARD_SIZE, max_samples: int | None = None,
                   metadata: Mapping[str, Any] | None = None, command: Sequence[str] | None = None,
                   seed: int | None = None, chunksize: int = 4,
                   on_written: Callable[[str, Mapping[str, bytes]], None] | None = None,
                   final_metadata: Callable[[], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Encode `items` with `encode_fn(item) -> (key, {ext: bytes})` in `num_workers` processes and write them in
    item order from this process, so the shards are byte-identical for any `num_workers`.

    `encode_fn` must be picklable (a module-level function or a functools.partial of one) and must derive any
    randomness from the item itself (e.g. a per-item seed), never from process state. `on_written(key, fields)`
    sees every sample in order after it is written; `final_metadata()` is merged into the metadata just before
    index.json is written (for dataset statistics such as quantiles). Returns the index.
    """
    writer = ShardWriter(out_dir, name, shard_size, max_samples, metadata, command, seed)
    try:
        if num_workers <= 1 or len(items) <= 1:
            for item in items:
                key, fields = encode_fn(item)
                writer.write(key, fields)
                if on_written is not None:
                    on_written(key, fields)
        else:
            # spawn, not fork: forking a process that has threads (loader workers, hashing pools, torch) can deadlock
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(num_workers) as pool:
                for key, fields in pool.imap(_encode_one, ((encode_fn, it) for it in items), chunksize=chunksize):
                    writer.write(key, fields)
                    if on_written is not None:
                        on_written(key, fields)
        if final_metadata is not None:
            writer.metadata.update(final_metadata())
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def parse_index(data: str | bytes, where: str, *, strict: bool = True) -> dict[str, Any]:
    """An index.json's content as a dict; DatasetError naming `where` (its path or URL).

    strict: the format and every required field are checked. Lenient (`strict=False`, for an index read without
    checking its shards: verify='none', or one beside streamed shards): only a "shards" list is required, and
    "metadata" and "keys" default to empty.
    """
    try:
        index = json.loads(data)
    except ValueError as e:
        raise DatasetError(f"{where}: unreadable: {e}") from e
    if not strict:
        if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
            raise DatasetError(f"{where}: not a shard index (no 'shards' list)")
        index.setdefault("metadata", {})
        index.setdefault("keys", [])
        return index
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise DatasetError(f"{where}: not a {FORMAT} index (format={found!r})")
    for field in ("name", "shards", "total_samples", "keys", "metadata"):
        if field not in index:
            raise DatasetError(f"{where}: missing field {field!r}")
    return index


def read_index(directory: str | os.PathLike, verify: bool = False, *, strict: bool = True,
               path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Parse and check `directory/index.json` (or the index at `path`). Strict (the default): every shard exists with
    the recorded size (and sha256 when `verify`); `strict=False` only parses (see `parse_index`). Raises
    DatasetError naming the offending file."""
    directory = Path(directory)
    path = Path(path) if path is not None else directory / INDEX_FILE
    if strict and not directory.is_dir():
        raise DatasetError(f"{directory}: dataset directory does not exist")
    if strict and not path.is_file():
        raise DatasetError(f"{path}: missing (not a dataset directory, or its writing did not finish)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: unreadable: {e}") from e
    index = parse_index(data, str(path), strict=strict)
    if not strict:
        return index
    total = 0
    for shard in index["shards"]:
        try:
            file, samples, nbytes, offsets = shard["file"], shard["samples"], shard["bytes"], shard["offsets"]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{path}: malformed shard entry {shard!r}") from e
        if len(offsets) != samples:
            raise DatasetError(f"{path}: shard {file}: {len(offsets)} offsets for {samples} samples")
        shard_path = directory / file
        if not shard_path.is_file():
            raise DatasetError(f"{shard_path}: shard listed in {path} is missing")
        actual = shard_path.stat().st_size
        if actual != nbytes:
            raise DatasetError(f"{shard_path}: {actual} bytes, {path} says {nbytes} (truncated or replaced)")
        if verify:
            if sha256_file(shard_path) != shard["sha256"]:
                raise DatasetError(f"{shard_path}: sha256 does not match {path}")
        total += samples
    if total != index["total_samples"]:
        raise DatasetError(f"{path}: total_samples {index['total_samples']} != sum over shards {total}")
    return index


def shard_urls(directory: str | os.PathLike, index: Mapping[str, Any] | None = None) -> list[str]:
    """Absolute paths of a dataset's shards in index order."""
    directory = Path(directory)
    index = index if index is not None else read_index(directory)
    return [str(directory / s["file"]) for s in index["shards"]]

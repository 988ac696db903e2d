"""Where a dataset's shards are and how many samples each holds: the input to every epoch plan.

A source is one of
- a directory with `index.json` (written by datamodules/writers, e.g. through launch/make_shards.py): shard sizes
  and sha256 are checked at start-up;
- local tar files, as a brace pattern (`/data/train-{000000..000099}.tar`) or a list: their headers are scanned once
  (no member data is read) to find each sample's offset, so shards written by plain `tar` read the same way;
- any URL webdataset opens (`pipe:...`, `http://...`, `s3://...` through pipe:): read as a stream, which needs an
  `index.json` (given as `index=`, a path or URL) for the sample counts that make every rank's epoch equal.

Nothing here writes anywhere: reading a dataset never modifies its directory.
"""

from __future__ import annotations

import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import braceexpand
import webdataset as wds

from datamodules.files import sha256_file
from datamodules.shards import INDEX_FILE, DatasetError, parse_index, read_index

# webdataset's convention: KEY is everything up to the first dot of the file name (directories included).
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./][^./]*)\.([^/]+)$")
_STREAM_RE = re.compile(r"^[a-z][a-z0-9+]*:", re.IGNORECASE)


def split_member_name(name: str) -> tuple[str, str] | None:
    """'./a/KEY.canny.png' -> ('a/KEY', 'canny.png'); None for a name with no extension."""
    while name.startswith("./"):
        name = name[2:]
    m = _MEMBER_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


@dataclass
class Shard:
    url: str
    samples: int
    offsets: list[int] | None = None  # byte offset of each sample's first header; None for streamed shards
    sha256: str | None = None
    nbytes: int | None = None


@dataclass
class ShardSource:
    """The shards of one split, in their listed order, and whether they can be read at an offset."""
    description: str
    shards: list[Shard]
    random_access: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.shards)


def _is_stream(spec: str) -> bool:
    return bool(_STREAM_RE.match(spec)) and not spec.startswith("file:")


def _expand(spec: str | Sequence[str]) -> list[str]:
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for s in specs:
        for part in s.split("::"):  # webdataset's separator for several patterns in one string
            urls.extend(braceexpand.braceexpand(part))
    return urls


def scan_tar(path: str) -> Shard:
    """Offsets of the samples in a local tar, from its headers alone (data is seeked over, not read).

    A sample whose members are not adjacent (a tar written without `--sort=name`) is an error: webdataset readers
    group consecutive members, so such a shard would yield split samples. A truncated tail is kept as a last sample
    whose reading fails later, so it is counted as a bad sample instead of silently vanishing.
    """
    offsets: list[int] = []
    keys_seen: set[str] = set()
    current: str | None = None
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.ReadError:  # empty, or no valid first header: one unreadable sample unless empty
            return Shard(url=path, samples=int(size > 0), offsets=[0] if size else [], nbytes=size)
        truncated = False
        for member in iter(tar.next, None):
            if not member.isfile() or (parts := split_member_name(member.name)) is None:
                continue
            key = parts[0]
            if key != current:
                if key in keys_seen:
                    raise DatasetError(f"{path}: the members of sample {key!r} are not adjacent; write the tar with "
                                       f"`tar --sort=name` so that each sample's files are consecutive")
                keys_seen.add(key)
                offsets.append(member.offset)
                current = key
            if member.offset_data + member.size > size:
                truncated = True  # cut inside this member: the sample stays listed and fails when read
                break
        if not truncated and _has_data_after(f, tar.offset):
            offsets.append(tar.offset)  # tarfile stops quietly at a damaged header: list what follows as one sample
    return Shard(url=path, samples=len(offsets), offsets=offsets, nbytes=size)


def _has_data_after(f: Any, offset: int) -> bool:
    """A well-formed tar ends in zero blocks; any non-zero byte after the last member means a damaged tail."""
    f.seek(offset)
    for chunk in iter(lambda: f.read(1 << 16), b""):
        if chunk.count(0) != len(chunk):
            return True
    return False


def _verify_sha256(directory: Path, shards: list[Shard], threads: int = 4) -> None:
    with ThreadPoolExecutor(threads) as pool:  # hashlib releases the GIL: threads hash shards in parallel
        digests = list(pool.map(lambda s: sha256_file(s.url), shards))
    for shard, digest in zip(shards, digests):
        if digest != shard.sha256:
            raise DatasetError(f"{shard.url}: sha256 does not match {directory / INDEX_FILE} (the shard was changed "
                               f"or damaged; rewrite it or restore it)")


def _index_shards(index: dict[str, Any], base: str, with_offsets: bool) -> list[Shard]:
    join = (lambda f: f"{base.rstrip('/')}/{f}") if _is_stream(base) else (lambda f: str(Path(base) / f))
    return [Shard(url=join(s["file"]), samples=int(s["samples"]), offsets=list(s["offsets"]) if with_offsets else None,
                  sha256=s.get("sha256"), nbytes=s.get("bytes")) for s in index["shards"]]


def _load_remote_index(url: str) -> dict[str, Any]:
    try:
        with wds.gopen(url, "rb") as stream:
            data = stream.read()
    except Exception as e:  # any opener failure (missing file, pipe command error) reads as one line
        raise DatasetError(f"{url}: cannot read the index: {e}") from e
    return parse_index(data, url, strict=False)


def open_source(spec: str | Sequence[str], *, verify: str = "sha256", index: str | None = None) -> ShardSource:
    """Resolve `spec` (see the module docstring) to its shards. `verify` is 'sha256' (hash every shard of an indexed
    directory at start-up), 'size' (compare sizes only, for datasets too large to hash at each start) or 'none'."""
    if verify not in ("sha256", "size", "none"):
        raise ValueError(f"verify must be 'sha256', 'size' or 'none', got {verify!r}")
    if isinstance(spec, str) and not _is_stream(spec) and Path(spec).is_dir():
        directory = Path(spec)
        parsed = read_index(directory, strict=verify != "none")
        shards = _index_shards(parsed, str(directory), with_offsets=True)
        if verify == "sha256":
            _verify_sha256(directory, shards)
        return ShardSource(str(directory), shards, True, dict(parsed["metadata"]), list(parsed["keys"]))
    urls = _expand(spec)
    if not urls:
        raise DatasetError(f"{spec!r}: names no shards")
    if index is not None:
        parsed = (_load_remote_index(index) if _is_stream(index)
                  else read_index(Path(index).parent, strict=False, path=index))
        by_name = {s["file"]: s for s in parsed["shards"]}
        shards = []
        for url in urls:
            entry = by_name.get(url.rsplit("/", 1)[-1])
            if entry is None:
                raise DatasetError(f"{url}: not listed in the index {index}")
            shards.append(Shard(url=url, samples=int(entry["samples"]), sha256=entry.get("sha256")))
        return ShardSource(str(spec), shards, False, dict(parsed["metadata"]), list(parsed["keys"]))
    if any(_is_stream(u) for u in urls):
        raise DatasetError(f"{urls[0]}: a streamed source needs its sample counts: give the index too "
                           f"(data index=PATH-or-URL of the dataset's {INDEX_FILE})")
    for url in urls:
        if not os.path.isfile(url):
            raise DatasetError(f"{url}: shard does not exist")
    return ShardSource(str(spec), [scan_tar(u) for u in urls], True)

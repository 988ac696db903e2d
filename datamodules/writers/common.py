"""What every shard writer shares: the options every kind takes, field encodings, input checks, and the kind record.

- `ShardOptions` (`DEFAULT_OPTIONS`): name, seed, shard size, samples per shard, workers, the command recorded in
  the index; the CLI's common arguments (`add_common_arguments`, `options_from_args`); `write_shards` writes items
  with them.
- Field bytes: `png_bytes`, `json_bytes`, `npy_bytes`; images kept as their files are (`image_bytes`, `to_png`).
- Input checks, each a one-line UsageError naming the file or argument: `check_out`, `image_format` /
  `shared_image_ext` (every image decoded once before anything is written), `read_json`, `read_rows` (.jsonl/.csv).
- `seeded_subset`, and `remove_datasets` (a failed multi-split run removes the splits it finished).
- `ShardKind`: how an entry point offers a kind and finds the datasets it wrote (launch/make_shards.py registers
  them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from datamodules.errors import UsageError
from datamodules.shards import DEFAULT_SHARD_SIZE, INDEX_FILE, parse_size, write_parallel
from datamodules.video import MOTION_LEVELS, motion_quantiles

Encoded = tuple[str, dict[str, bytes]]
MOTION_NOTE = "mean Farneback optical-flow magnitude, pixels per frame (json motion)"
_PIL_EXTS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "GIF": "gif", "TIFF": "tiff"}


# ------------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class ShardOptions:
    """What every kind takes besides its inputs. `shard_size` is bytes or a size such as "64MB"; `command` is
    recorded in index.json (None: this process's command line)."""
    name: str = "data"
    seed: int = 0
    shard_size: int | str = DEFAULT_SHARD_SIZE
    max_samples_per_shard: int | None = None
    num_workers: int = 1
    command: Sequence[str] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "shard_size", parse_size(self.shard_size))
        except ValueError as e:
            raise UsageError(f"--shard-size: {e}") from e
        if self.max_samples_per_shard is not None and self.max_samples_per_shard <= 0:
            raise UsageError(f"--max-samples-per-shard: must be positive, got {self.max_samples_per_shard}")
        if self.num_workers <= 0:
            raise UsageError(f"--num-workers: must be positive, got {self.num_workers}")


DEFAULT_OPTIONS = ShardOptions()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output dataset directory")
    parser.add_argument("--name", default="data", help="shard name prefix (default: data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", default="256MB", help="close a shard before it exceeds this (e.g. 64MB)")
    parser.add_argument("--max-samples-per-shard", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=1, help="encoding processes (output is identical)")


def options_from_args(args: argparse.Namespace, command: Sequence[str]) -> ShardOptions:
    return ShardOptions(name=args.name, seed=args.seed, shard_size=args.shard_size,
                        max_samples_per_shard=args.max_samples_per_shard, num_workers=args.num_workers,
                        command=tuple(command))


def write_shards(out: Path, items: Sequence[Any], encode: Callable[[Any], Encoded], options: ShardOptions,
                 metadata: Mapping[str, Any], *, motion_quantiles_of_json: bool = False) -> dict[str, Any]:
    """`write_parallel` with the options; returns the index. `motion_quantiles_of_json`: every sample's json carries
    a `motion`, and the index metadata gets the dataset's `motion_quantiles` and `motion_levels`."""
    motions: list[float] = []
    statistics = {"on_written": lambda key, fields: motions.append(json.loads(fields["json"])["motion"]),
                  "final_metadata": lambda: {"motion_quantiles": motion_quantiles(motions),
                                             "motion_levels": MOTION_LEVELS}} if motion_quantiles_of_json else {}
    return write_parallel(out, options.name, items, encode, num_workers=options.num_workers,
                          shard_size=options.shard_size, max_samples=options.max_samples_per_shard, metadata=metadata,
                          command=None if options.command is None else list(options.command), seed=options.seed,
                          **statistics)


def one_dataset(out: Path, index: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """A kind that writes one dataset, in `out`: {out: its index}."""
    return {Path(out): index}


@dataclass(frozen=True)
class ShardKind:
    """A shard kind as an entry point offers it: `add_arguments(parser)` adds its own arguments (the common ones are
    added for it), `from_args(args, options)` writes the dataset and returns what the kind's function returns,
    `datasets(out, returned)` says which dataset directories that wrote: {directory: index}."""
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    from_args: Callable[[argparse.Namespace, ShardOptions], Any]
    datasets: Callable[[Path, Any], dict[Path, dict[str, Any]]] = one_dataset


# ------------------------------------------------------------------------------------------------- field bytes
def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def to_png(raw: bytes) -> bytes:
    """An image file's bytes re-encoded as PNG (its mode kept)."""
    with Image.open(io.BytesIO(raw)) as im:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def image_bytes(path: str | Path, ext: str) -> bytes:
    """The file's bytes, re-encoded as PNG when the dataset's extension is png and the file is not one."""
    data = Path(path).read_bytes()
    return to_png(data) if ext == "png" and not data.startswith(b"\x89PNG") else data


# ------------------------------------------------------------------------------------------------ input checks
def check_out(out: Path, arg: str = "--out") -> None:
    """The output directory must not hold a dataset or shards already."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{arg} {out}: exists and is not a directory")
    if (out / INDEX_FILE).exists():
        raise UsageError(f"{arg} {out}: already holds a dataset ({INDEX_FILE}); use a new directory")
    if out.is_dir() and any(out.glob("*.tar")):
        raise UsageError(f"{arg} {out}: already holds shards; use a new directory")


def image_format(path: Path) -> str:
    """Check that PIL can decode the file; return its normalized extension. UsageError naming the file."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise UsageError(f"{path}: unreadable image ({type(e).__name__}: {e})".splitlines()[0]) from e
    return _PIL_EXTS.get(fmt or "", "png")


def shared_image_ext(files: Iterable[Path]) -> str:
    """Decode every image once (so a bad file stops a run before anything is written); the extension they share,
    or png (the files then re-encoded) when they differ."""
    formats = {image_format(file) for file in dict.fromkeys(files)}
    return next(iter(formats)) if len(formats) == 1 else "png"


def read_json(path: Path, arg: str) -> Any:
    if not path.is_file():
        raise UsageError(f"{arg} {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{arg} {path}: not valid JSON ({e})".splitlines()[0]) from e


def jsonl_objects(path: Path, hint: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file, blank lines skipped; a line that is not a JSON object is a
    UsageError naming it (`hint` is added to the message for invalid JSON). Opening and decoding errors are the
    caller's to report."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UsageError(f"{path}:{n}: not valid JSON ({e}){hint}") from e
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{n}: expected a JSON object per line")
            yield n, row


def read_rows(path: Path, columns: Sequence[str], arg: str) -> list[dict[str, Any]]:
    """The rows of a .jsonl (one object per line; `columns` must be strings) or .csv (with a header) file."""
    if not path.is_file():
        raise UsageError(f"{arg} {path}: no such file")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    try:
        if suffix == ".jsonl":
            for n, row in jsonl_objects(path):
                for col in columns:
                    if col not in row:
                        raise UsageError(f"{path}:{n}: missing column {col!r}")
                    if not isinstance(row[col], str):
                        raise UsageError(f"{path}:{n}: column {col!r} must be a string, got {row[col]!r}")
                rows.append(row)
        elif suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                for col in columns:
                    if col not in header:
                        raise UsageError(f"{path}: missing column {col!r} (columns: {', '.join(header)})")
                for n, row in enumerate(reader, 2):
                    if any(row.get(col) is None for col in columns):
                        raise UsageError(f"{path}:{n}: row has fewer fields than the header")
                    rows.append(row)
        else:
            raise UsageError(f"{arg} {path}: expected a .jsonl or .csv file")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{arg} {path}: unreadable ({e})") from e
    if not rows:
        raise UsageError(f"{arg} {path}: no rows")
    return rows


# ------------------------------------------------------------------------------------------------- selection
def seeded_subset(n: int, k: int, seed: int, salt: str) -> list[int]:
    """k of range(n), seeded, in increasing order; a larger k keeps every index a smaller k picked."""
    order = list(range(n))
    random.Random(f"{seed}:{salt}").shuffle(order)
    return sorted(order[:k])


def remove_datasets(dirs: Iterable[Path]) -> None:
    """Undo finished splits of a failed multi-split run: their index.json first, then their shards."""
    for d in dirs:
        index = d / INDEX_FILE
        if index.is_file():
            try:
                files = [s["file"] for s in json.loads(index.read_text())["shards"]]
            except Exception:  # noqa: BLE001 - a damaged index: its shards cannot be named, the index still goes
                files = []
            index.unlink()
            for f in files:
                (d / f).unlink(missing_ok=True)

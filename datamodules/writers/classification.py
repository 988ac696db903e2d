"""The classification kind: an image folder (one sub-folder per class, -> OUT/train) or a CoOp split JSON
({"train"|"val"|"test": [[path, label, classname], ...]} -> OUT/train, OUT/val, OUT/test), with K-shot training
subsets and CoOp's base/new class halves (base = the first ceil(n/2) sorted labels, relabelled from 0)."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, image_bytes,
                                        json_bytes, remove_datasets, shared_image_ext, write_shards)

IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".bmp": "bmp", ".webp": "webp", ".gif": "gif",
              ".tif": "tiff", ".tiff": "tiff"}
SUBSETS = ("all", "base", "new")
Row = tuple[Path, int, str]  # image file, label, class name


def _load_split_json(path: Path, root: Path) -> dict[str, list[Row]]:
    if not path.is_file():
        raise UsageError(f"--split-json {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--split-json {path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not any(k in data for k in ("train", "val", "test")):
        raise UsageError(f"--split-json {path}: expected an object with keys train/val/test")
    unknown = sorted(set(data) - {"train", "val", "test"})
    if unknown:
        raise UsageError(f"--split-json {path}: unknown split(s) {unknown} (expected train, val, test)")
    name_of: dict[int, tuple[str, str]] = {}
    label_of: dict[str, tuple[int, str]] = {}
    splits: dict[str, list[Row]] = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        entries = data[split]
        if not isinstance(entries, list):
            raise UsageError(f"--split-json {path}: {split}: expected a list of [path, label, classname]")
        rows = []
        for i, entry in enumerate(entries):
            where = f"--split-json {path}: {split}[{i}]"
            if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str)
                    or isinstance(entry[1], bool) or not isinstance(entry[1], int) or not isinstance(entry[2], str)):
                raise UsageError(f"{where}: expected [relative_path, int label, classname], got {entry!r}")
            rel, label, cname = entry
            if label < 0:
                raise UsageError(f"{where}: negative label {label}")
            if label in name_of and name_of[label][0] != cname:
                raise UsageError(f"{where}: label {label} is {cname!r} here but {name_of[label][0]!r} at "
                                 f"{name_of[label][1]}")
            if cname in label_of and label_of[cname][0] != label:
                raise UsageError(f"{where}: class {cname!r} has label {label} here but {label_of[cname][0]} at "
                                 f"{label_of[cname][1]}")
            name_of.setdefault(label, (cname, f"{split}[{i}]"))
            label_of.setdefault(cname, (label, f"{split}[{i}]"))
            file = root / rel
            if not file.is_file():
                raise UsageError(f"{file}: listed in {path} ({split}[{i}]) but missing")
            rows.append((file, label, cname))
        splits[split] = rows
    labels = sorted(name_of)
    if labels != list(range(len(labels))):
        raise UsageError(f"--split-json {path}: labels must be 0..{len(labels) - 1} without gaps, got {labels[:10]}...")
    return splits


def _load_image_folder(images: Path) -> dict[str, list[Row]]:
    if not images.is_dir():
        raise UsageError(f"--images {images}: no such directory")
    classes = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"--images {images}: no class sub-folders")
    rows = []
    for label, cname in enumerate(classes):
        files = sorted(p for p in (images / cname).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UsageError(f"--images {images / cname}: class {cname!r} has no images")
        rows += [(f, label, cname) for f in files]
    return {"train": rows}


def _kshot(rows: list[Row], shots: int, seed: int, source: str) -> list[Row]:
    by_label: dict[int, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    out = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: str(r[0]))
        if shots > len(group):
            raise UsageError(f"--shots {shots}: class {group[0][2]!r} (label {label}) has only {len(group)} "
                             f"training images in {source}")
        picked = random.Random(f"{seed}:{label}").sample(range(len(group)), shots)
        out += [group[i] for i in sorted(picked)]
    return out


def encode_file(item: tuple[int, str, int, str, str, str]) -> Encoded:
    idx, path, label, cname, rel, ext = item
    return f"{idx:08d}", {ext: image_bytes(path, ext), "cls": str(label).encode(),
                          "json": json_bytes({"label": label, "classname": cname, "path": rel})}


def write_classification_shards(out: Path, *, images: Path | None = None, split_json: Path | None = None,
                                root: Path | None = None, shots: int | None = None, subset: str = "all",
                                options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, dict[str, Any]]:
    """One dataset per split under `out` from an image folder (`images`) or a CoOp split JSON (`split_json`, paths
    relative to `root`); `shots`: K training images per class (seeded); `subset`: all, base or new classes.
    Returns {split: index}. A failure removes the splits already written."""
    out = Path(out)
    if (images is None) == (split_json is None):
        raise UsageError("classification: give exactly one of --images DIR or --split-json FILE")
    if shots is not None and shots <= 0:
        raise UsageError(f"--shots: must be positive, got {shots}")
    if subset not in SUBSETS:
        raise UsageError(f"--subset: must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if split_json is not None:
        if root is None:
            raise UsageError("--root: required with --split-json (image paths are relative to it)")
        root = Path(root)
        if not root.is_dir():
            raise UsageError(f"--root {root}: no such directory")
        splits = _load_split_json(Path(split_json), root)
        source = str(split_json)
    else:
        root = Path(images)
        splits = _load_image_folder(root)
        source = str(images)
    names = {label: cname for rows in splits.values() for _, label, cname in rows}
    if splits.get("train"):
        trained = {label for _, label, _ in splits["train"]}
        for split, rows in splits.items():
            unknown = sorted({(label, cname) for _, label, cname in rows if label not in trained})
            if unknown:
                label, cname = unknown[0]
                raise UsageError(f"{source}: {split} has class {cname!r} (label {label}) that the train split has no "
                                 f"image of ({len(unknown)} such class(es)); add its training images or drop it")
    labels = sorted(names)
    n_base = math.ceil(len(labels) / 2)
    keep = {"all": labels, "base": labels[:n_base], "new": labels[n_base:]}[subset]
    if not keep:
        raise UsageError(f"--subset {subset}: no classes in it ({len(labels)} classes in {source})")
    relabel = {old: new for new, old in enumerate(keep)}
    class_names = [names[label] for label in keep]
    selected: dict[str, list[Row]] = {}
    for split, rows in splits.items():
        rows = [(f, relabel[label], cname) for f, label, cname in rows if label in relabel]
        if split == "train" and shots is not None:
            rows = _kshot(rows, shots, options.seed, source)
        selected[split] = rows
    for split in selected:
        check_out(out / split, f"--out {split}")
    ext = shared_image_ext(row[0] for rows in selected.values() for row in rows)
    indexes: dict[str, dict[str, Any]] = {}
    started: list[Path] = []
    try:
        for split, rows in selected.items():
            if not rows:
                continue
            metadata = {"kind": "classification", "split": split, "class_names": class_names,
                        "subset": subset, "num_classes_total": len(labels),
                        "base_labels": labels[:n_base], "new_labels": labels[n_base:],
                        "original_labels": keep, "shots": shots if split == "train" else None,
                        "source": source, "splits": {s: len(r) for s, r in selected.items()}, "image_ext": ext}
            items = [(i, str(f), label, cname, str(f.relative_to(root)) if f.is_relative_to(root) else str(f), ext)
                     for i, (f, label, cname) in enumerate(rows)]
            started.append(out / split)
            indexes[split] = write_shards(out / split, items, encode_file, options, metadata)
    except BaseException:
        remove_datasets(started)
        raise
    return indexes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=None,
                        help="folder with one sub-folder per class (-> OUT/train)")
    parser.add_argument("--split-json", type=Path, default=None,
                        help="CoOp split JSON (-> OUT/train, OUT/val, OUT/test)")
    parser.add_argument("--root", type=Path, default=None, help="directory the split JSON paths are relative to")
    parser.add_argument("--shots", type=int, default=None, help="K images per class in train (seeded)")
    parser.add_argument("--subset", choices=SUBSETS, default="all")


KIND = ShardKind(
    name="classification", help="image folder or CoOp split JSON", add_arguments=add_arguments,
    from_args=lambda args, options: write_classification_shards(
        args.out, images=args.images, split_json=args.split_json, root=args.root, shots=args.shots,
        subset=args.subset, options=options),
    datasets=lambda out, indexes: {Path(out) / split: index for split, index in indexes.items()})

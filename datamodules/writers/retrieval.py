"""The retrieval kind: image-text retrieval from a Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json):
one split's images, each with all its captions (the captions of the whole split also in the index metadata), and an
optional seeded subset of the images."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, image_bytes,
                                        json_bytes, read_json, seeded_subset, shared_image_ext, write_shards)

KARPATHY_SPLITS = ("train", "val", "test", "restval")
SPLITS = ("train", "val", "test")


def encode_retrieval(item: tuple[int, str, str, list[str], str]) -> Encoded:
    idx, path, rel, captions, ext = item
    return f"{idx:08d}", {ext: image_bytes(path, ext), "cls": str(idx).encode(),
                          "json": json_bytes({"captions": captions, "filename": rel, "image_index": idx})}


def _selected_images(source: Path, split: str, restval_as_train: bool) -> tuple[list[tuple[int, dict]], Any]:
    """(position in the file, entry) of the images in the split, and the file's dataset name."""
    data = read_json(source, "--karpathy")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UsageError(f"--karpathy {source}: expected an object with an \"images\" list (Karpathy split format)")
    wanted = {"train", "restval"} if restval_as_train else {split}
    chosen: list[tuple[int, dict[str, Any]]] = []
    for i, entry in enumerate(data["images"]):
        where = f"--karpathy {source}: images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise UsageError(f"{where}: expected an object with a \"filename\" string")
        if "filepath" in entry and not isinstance(entry["filepath"], str):
            raise UsageError(f"{where}: \"filepath\" must be a string, got {entry['filepath']!r}")
        if entry.get("split") not in KARPATHY_SPLITS:
            raise UsageError(f"{where}: unknown split {entry.get('split')!r} (expected one of "
                             f"{', '.join(KARPATHY_SPLITS)})")
        if entry["split"] in wanted:
            chosen.append((i, entry))
    if not chosen:
        raise UsageError(f"--karpathy {source}: no image in split {split}"
                         f"{' (or restval)' if restval_as_train else ''}")
    return chosen, data.get("dataset")


def write_retrieval_shards(out: Path, *, karpathy: Path, root: Path, split: str, restval_as_train: bool = False,
                           fraction: float | None = None, max_images: int | None = None,
                           options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """The images of `split` (train, val or test; with `restval_as_train`, train + restval) of a Karpathy split JSON,
    image paths relative to `root`; at most one of `fraction` (of the images) and `max_images` keeps a seeded subset.
    Returns the index."""
    out, source, root = Path(out), Path(karpathy), Path(root)
    if split not in SPLITS:
        raise UsageError(f"--split: must be one of {', '.join(SPLITS)}, got {split!r}")
    if fraction is not None and max_images is not None:
        raise UsageError("--fraction, --max-images: give at most one of them")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise UsageError(f"--fraction: must be in (0, 1], got {fraction}")
    if max_images is not None and max_images < 1:
        raise UsageError(f"--max-images: must be at least 1, got {max_images}")
    if restval_as_train and split != "train":
        raise UsageError(f"--restval-as-train: only with --split train (got --split {split})")
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    chosen, dataset = _selected_images(source, split, restval_as_train)
    k = len(chosen)
    if fraction is not None:
        k = max(1, math.ceil(fraction * len(chosen)))
    elif max_images is not None:
        k = min(max_images, len(chosen))
    chosen = [chosen[j] for j in seeded_subset(len(chosen), k, options.seed, "retrieval")]
    rows: list[tuple[Path, str, list[str]]] = []
    for i, entry in chosen:
        where = f"--karpathy {source}: images[{i}] ({entry['filename']})"
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise UsageError(f"{where}: no sentences; every image needs at least one caption")
        captions = []
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise UsageError(f"{where}: sentences[{j}] has no \"raw\" caption text")
            captions.append(raw.strip())
        rel = f"{entry['filepath']}/{entry['filename']}" if entry.get("filepath") else entry["filename"]
        file = root / rel
        if not file.is_file():
            raise UsageError(f"{file}: image {i} of {source} ({rel}) is missing")
        rows.append((file, rel, captions))
    check_out(out)
    ext = shared_image_ext(file for file, _, _ in rows)
    all_captions = [captions for _, _, captions in rows]
    metadata = {"kind": "retrieval", "split": split, "dataset": dataset if isinstance(dataset, str) else None,
                "source": str(source), "captions": all_captions, "num_images": len(rows),
                "num_captions": sum(len(c) for c in all_captions), "fraction": fraction,
                "max_images": max_images, "restval_as_train": restval_as_train, "image_ext": ext}
    items = [(i, str(file), rel, captions, ext) for i, (file, rel, captions) in enumerate(rows)]
    return write_shards(out, items, encode_retrieval, options, metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--karpathy", type=Path, required=True,
                        help="Karpathy split JSON (dataset_flickr30k.json, ...)")
    parser.add_argument("--root", type=Path, required=True,
                        help="directory the image paths (filepath/filename) are in")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--restval-as-train", action="store_true", help="with --split train: add the restval images")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fraction", type=float, default=None, help="keep this fraction of the images (seeded)")
    group.add_argument("--max-images", type=int, default=None, help="keep at most N images (seeded)")


KIND = ShardKind(
    name="retrieval", help="image-text retrieval from a Karpathy split JSON (dataset_coco.json)",
    add_arguments=add_arguments,
    from_args=lambda args, options: write_retrieval_shards(
        args.out, karpathy=args.karpathy, root=args.root, split=args.split, restval_as_train=args.restval_as_train,
        fraction=args.fraction, max_images=args.max_images, options=options))

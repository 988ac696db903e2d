"""Test data for ComCLIP: matching items and retrieval images, from shards, item by item.

Matching items (make_shards.py winoground, svo-probes, comvg, synthetic-compositional; lightning_modules/comclip/
shards.py): images `image_0.<ext>`, `image_1.<ext>`, ... and a json with the item's `id`, `task` (winoground |
pairs), `captions`, and what the parsers and metrics read (`triplet`, `negative_type`, `tag`, `boxes`).
Retrieval images (make_shards.py retrieval, the shards CPL uses): one image and its captions per sample; the split's
captions in the index metadata.

An item whose image is missing or undecodable is not a bad sample that the loader leaves out: it comes through
with its `error`, and the module counts it in the results (a benchmark's missing image is data, not a crash).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from datamodules.shard_datamodule import TEST_SPLIT, ShardDataModule
from datamodules.shard_dataset import DecodeSample, read_sample
from datamodules.shards import DatasetError

IMAGE_FIELD = re.compile(r"^image_(\d+)\.(png|jpg|jpeg|webp|bmp|gif|tiff)$")
RETRIEVAL_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp")


@dataclass
class TestItem:
    """One item as the module scores it. A plain object, so the loader's collate keeps a batch as a list of them."""

    key: str
    fields: dict[str, Any]
    images: list[torch.Tensor] = field(default_factory=list)  # uint8 [3, H, W] each
    error: str | None = None


def _as_rgb(image: Any) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"not an image tensor: {type(image).__name__}")
    return image[:3] if image.shape[0] >= 3 else image.expand(3, -1, -1)


class MatchingSample(DecodeSample):
    """Raw sample -> {"item": TestItem}; images in the order of their number; a missing image is the item's error."""

    def __init__(self, task: str):
        super().__init__(required=["json"])
        self.task = task

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw["__key__"]
        try:
            decoded = super().__call__(raw)
        except Exception as e:  # noqa: BLE001 - an undecodable image is recorded with its item, below
            return {"item": self._undecodable(raw, key, e)}
        return {"item": decoded["item"]}

    def _undecodable(self, raw: dict[str, Any], key: str, error: Exception) -> TestItem:
        try:
            fields = json.loads(raw["json"]) if isinstance(raw.get("json"), (bytes, str)) else {}
        except (ValueError, UnicodeDecodeError):
            fields = {}
        cause = error.__cause__ or error
        return TestItem(key, fields if isinstance(fields, dict) else {}, [], f"undecodable sample: {cause}")

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        fields = sample["json"] if isinstance(sample["json"], dict) else {}
        key = sample["__key__"]  # unique in a dataset (the benchmark's own id is in fields)
        numbered = sorted((int(m.group(1)), name) for name in sample if (m := IMAGE_FIELD.match(name)))
        expected = 2 if self.task in ("winoground", "pairs") else len(numbered)
        present = {n for n, _ in numbered}
        missing = [f"image_{n}" for n in range(expected) if n not in present]
        captions = fields.get("captions")
        if missing:
            return {"item": TestItem(key, fields, [], f"missing {', '.join(missing)}")}
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
            return {"item": TestItem(key, fields, [], "no captions (json.captions: a list of strings)")}
        return {"item": TestItem(key, fields, [_as_rgb(sample[name]) for _, name in numbered[:expected]])}


class RetrievalSample(DecodeSample):
    """A retrieval shard's sample -> {"item": TestItem} with its one image; `fields` holds image_index and captions."""

    def __init__(self):
        super().__init__(required=["json"])

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        fields = sample["json"] if isinstance(sample["json"], dict) else {}
        key = sample["__key__"]
        image = next((sample[ext] for ext in RETRIEVAL_IMAGE_EXTS if ext in sample), None)
        if not isinstance(fields.get("image_index"), int):
            raise KeyError("json.image_index missing (write the shards with make_shards.py retrieval)")
        if image is None:
            return {"item": TestItem(key, fields, [], "missing image")}
        return {"item": TestItem(key, fields, [_as_rgb(image)])}


class ComCLIPData(ShardDataModule):
    """ComCLIP's test data: `test` is a shard directory of matching items (task winoground / pairs, from its index
    metadata) or of retrieval images (task rerank). Every item is read once over all ranks."""

    def __init__(self, test: str, batch_size: int = 4, num_workers: int = 0, verify: str = "sha256",
                 test_index: str | None = None, max_bad_fraction: float = 0.0):
        # max_bad_fraction: samples the shards cannot give at all (a corrupt tar); an item whose image is missing
        # or undecodable is not one of them (it is recorded with its error).
        super().__init__(test=test, test_index=test_index, batch_size=batch_size, num_workers=num_workers,
                         verify=verify, shuffle=False, max_bad_fraction=max_bad_fraction)

    def task(self) -> str:
        """winoground | pairs | rerank, from the test index's metadata."""
        metadata = self.metadata(TEST_SPLIT)
        task = metadata.get("task")
        if task in ("winoground", "pairs"):
            return task
        if metadata.get("kind") == "retrieval":
            return "rerank"
        raise DatasetError(f"{self.sources[TEST_SPLIT].description}: its index.json names no ComCLIP task (write it "
                           f"with make_shards.py winoground, svo-probes, comvg, synthetic-compositional or retrieval)")

    def benchmark(self) -> str:
        metadata = self.metadata(TEST_SPLIT)
        return str(metadata.get("benchmark") or metadata.get("name") or self.task())

    def captions(self) -> list[str]:
        """Retrieval: every caption of the split, in the index's order (each image's own are in its json)."""
        captions = self.metadata(TEST_SPLIT).get("captions")
        if not isinstance(captions, list):
            raise DatasetError(f"{self.sources[TEST_SPLIT].description}: no captions in the index metadata (write "
                               f"the shards with make_shards.py retrieval)")
        return [c for group in captions for c in (group if isinstance(group, list) else [group])]

    def caption_owners(self) -> list[int]:
        """Retrieval: the image index of each caption of `captions()`."""
        groups = self.metadata(TEST_SPLIT)["captions"]
        return [index for index, group in enumerate(groups) for _ in (group if isinstance(group, list) else [group])]

    def make_sample(self, split: str) -> DecodeSample:
        return RetrievalSample() if self.task() == "rerank" else MatchingSample(self.task())

    def all_items(self) -> Iterator[TestItem]:
        """Every test item in dataset order, read here in this process (the retrieval gallery: every rank needs
        the plain CLIP embedding of every image to know each caption's top k)."""
        decode = self.make_sample(TEST_SPLIT)
        source = self.sources[TEST_SPLIT]
        for shard in source.shards:
            if shard.offsets is None:
                raise DatasetError(f"{source.description}: the gallery is read from local shards with an index")
            with open(shard.url, "rb") as f:
                for offset in shard.offsets:
                    yield decode(read_sample(f, offset))["item"]

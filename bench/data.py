"""The data layer's speed: read throughput of ShardDataModule, and how long a mid-epoch resume takes.

Run from the repository root:  .venv/bin/python bench/data.py   (about 2 minutes on 2 CPU cores, ~250 MB of temp disk)
Writes bench/results/data.json (bench/result_file.py).

Throughput. A synthetic-shapes dataset (datamodules/writers/synthetic_shapes.py: 64x64 PNG + class + JSON per sample).
- reference: one process, no framework: each tar read front to back with Python's tarfile, members grouped by key,
  the PNG decoded with PIL to a uint8 [3, H, W] tensor, the class parsed, the JSON parsed, batches stacked;
- webdataset (diagnostic): its own streaming pipeline in one process, decoding the same fields the same way;
- worldbridge: ShardDataModule's train loader (the same decoding through webdataset's Decoder, the shuffled epoch
  plan, random access through the index), with 2 worker processes, and with 0 (same process, for the overhead).
One epoch per repeat, sides interleaved; figures are medians over the repeats (samples/s), each repeat's number kept.

Resume. 200,000 one-member samples in 20 shards. Time from building the train loader and loading a checkpointed
position (consumed batches) to holding the first batch, at 0 %, 50 % and 90 % of the epoch (2 workers). The
reference is what a plain webdataset pipeline has to do to resume at the same sample: read its way there.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from bench.result_file import medians, write_result  # noqa: E402
from datamodules.shard_datamodule import ShardDataModule  # noqa: E402
from datamodules.shards import ShardWriter, read_index  # noqa: E402
from datamodules.writers.common import ShardOptions  # noqa: E402
from datamodules.writers.synthetic_shapes import write_synthetic_shapes_shards  # noqa: E402

BATCH = 64
RESUME_SAMPLES, RESUME_SHARDS = 200_000, 20


def reference_epoch(urls: list[str]) -> int:
    """Read and decode every sample with no framework, in batches; returns the sample count."""
    n = 0
    batch: list[tuple[torch.Tensor, int, dict]] = []

    def add(sample: dict[str, bytes]) -> None:
        batch.append(decode_reference(sample))
        if len(batch) == BATCH:
            torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])
            batch.clear()

    for url in urls:
        with tarfile.open(url) as tar:
            sample: dict[str, bytes] = {}
            key = None
            for member in tar:
                k, ext = member.name.split(".", 1)
                if key is not None and k != key:
                    add(sample)
                    n, sample = n + 1, {}
                key = k
                sample[ext] = tar.extractfile(member).read()
            add(sample)
            n += 1
    return n


def decode_reference(sample: dict[str, bytes]) -> tuple[torch.Tensor, int, dict]:
    image = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
    return torch.from_numpy(image.copy()).permute(2, 0, 1), int(sample["cls"]), json.loads(sample["json"])


def webdataset_epoch(urls: list[str]) -> int:
    """Diagnostic side: webdataset's own streaming pipeline, same decoding (PIL to uint8 tensors), same batches."""
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("torchrgb8").to_tuple(
        "png", "cls", "json").batched(BATCH, partial=True)
    return sum(len(batch[1]) for batch in pipeline)


def framework_epoch(directory: str, workers: int, epoch: int) -> int:
    dm = ShardDataModule(train=directory, batch_size=BATCH, num_workers=workers, verify="size")
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(epoch)
    n = sum(len(batch["__key__"]) for batch in loader)
    return n


def throughput(tmp: Path, num: int, repeats: int) -> dict:
    directory = tmp / "shapes"
    index = write_synthetic_shapes_shards(directory, num=num, size=64,
                                          options=ShardOptions(max_samples_per_shard=num // 6, num_workers=2))
    urls = [str(directory / s["file"]) for s in index["shards"]]
    sides = {
        "reference_single_process": lambda e: reference_epoch(urls),
        "webdataset_single_process": lambda e: webdataset_epoch(urls),
        "worldbridge_2_workers": lambda e: framework_epoch(str(directory), 2, e),
        "worldbridge_0_workers": lambda e: framework_epoch(str(directory), 0, e),
    }
    samples: dict[str, list[float]] = {name: [] for name in sides}
    sides["reference_single_process"](0)  # warm-up: page cache, imports
    sides["worldbridge_2_workers"](0)
    for repeat in range(repeats):
        names = list(sides)
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            n = sides[name](repeat + 1)
            samples[name].append(n / (time.perf_counter() - start))
    return {"num_samples": num, "image": "64x64 PNG + cls + json", "batch_size": BATCH,
            "samples_per_s": samples}


def resume_dataset(tmp: Path) -> Path:
    directory = tmp / "resume"
    with ShardWriter(directory, "r", max_samples=RESUME_SAMPLES // RESUME_SHARDS, command=["bench/data.py"]) as w:
        for i in range(RESUME_SAMPLES):
            w.write(f"{i:08d}", {"cls": str(i % 10).encode()})
    return directory


def time_to_first_batch(directory: Path, fraction: float) -> float:
    start = time.perf_counter()
    dm = ShardDataModule(train=str(directory), batch_size=BATCH, num_workers=2, verify="size")
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(0)
    consumed = int(len(loader) * fraction)
    loader.load_state_dict({"epoch": 0, "consumed_batches": consumed, "health": loader.health.state_dict()})
    next(iter(loader))
    return time.perf_counter() - start


def reference_resume(directory: Path, fraction: float) -> float:
    start = time.perf_counter()
    urls = [str(directory / s["file"]) for s in read_index(directory)["shards"]]
    stream = iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    next(itertools.islice(stream, int(RESUME_SAMPLES * fraction), None))
    return time.perf_counter() - start


def resume(tmp: Path, repeats: int) -> dict:
    directory = resume_dataset(tmp)
    time_to_first_batch(directory, 0.0)  # warm-up
    fractions = (0.0, 0.5, 0.9)
    out: dict[str, list[float]] = {f"worldbridge_at_{int(f * 100)}pct_s": [] for f in fractions}
    out["reference_webdataset_at_90pct_s"] = []
    for _ in range(repeats):
        for f in fractions:
            out[f"worldbridge_at_{int(f * 100)}pct_s"].append(time_to_first_batch(directory, f))
        out["reference_webdataset_at_90pct_s"].append(reference_resume(directory, 0.9))
    return {"num_samples": RESUME_SAMPLES, "shards": RESUME_SHARDS, "batch_size": BATCH, "seconds": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=6000, help="samples of the throughput dataset")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tput = throughput(Path(tmp), args.num, args.repeats)
        res = resume(Path(tmp), args.repeats)
    samples = {**{f"{k}_samples_per_s": v for k, v in tput["samples_per_s"].items()}, **res["seconds"]}
    med = medians(samples)
    write_result(
        "data",
        settings={"throughput": {k: v for k, v in tput.items() if k != "samples_per_s"},
                  "resume": {k: v for k, v in res.items() if k != "seconds"}, "repeats": args.repeats},
        figures=med,
        ratios={
            "throughput_2_workers_over_reference": med["worldbridge_2_workers_samples_per_s"]
            / med["reference_single_process_samples_per_s"],
            "throughput_0_workers_over_reference": med["worldbridge_0_workers_samples_per_s"]
            / med["reference_single_process_samples_per_s"],
            "throughput_0_workers_over_webdataset": med["worldbridge_0_workers_samples_per_s"]
            / med["webdataset_single_process_samples_per_s"],
            "resume_90pct_over_0pct": med["worldbridge_at_90pct_s"] / med["worldbridge_at_0pct_s"],
            "resume_90pct_reference_over_worldbridge": med["reference_webdataset_at_90pct_s"]
            / med["worldbridge_at_90pct_s"],
        },
        targets={"resume_90pct_over_0pct": "<= 1.25"},
        samples=samples, libraries=("lightning", "webdataset", "numpy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

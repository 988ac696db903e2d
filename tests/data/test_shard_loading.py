"""The reading side of the data layer: sources, epoch plans, exact resume, uneven shards, corrupt data."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import ParamError
from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_plan import PlanSettings, buffer_shuffle, rank_order
from datamodules.shard_source import open_source, scan_tar
from datamodules.shards import DatasetError
from tests.conftest import REPO, run_fit
from tests.data.test_shards import make


# -- helpers ---------------------------------------------------------------------------------------------------------
def png(value: int, size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_plain_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]], sort: bool = True) -> Path:
    """A tar as `tar` writes it from a folder (GNU format, './' prefixes, a directory entry)."""
    members = [(f"./{key}.{ext}", data) for key, fields in samples for ext, data in fields.items()]
    if sort:
        members.sort()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(".")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def numbered(start: int, n: int) -> list[tuple[str, dict[str, bytes]]]:
    return [(f"s{i:05d}", {"png": png(i), "cls": str(i % 3).encode()}) for i in range(start, start + n)]


def shapes(tmp_path: Path, num: int = 96, per_shard: int = 12, name: str = "shapes") -> Path:
    out = tmp_path / name
    rc, err = make("synthetic-shapes", "--out", str(out), "--num", str(num), "--size", "8",
                   "--max-samples-per-shard", str(per_shard))
    assert rc == 0, err
    return out


def data(source, rank: int = 0, world: int = 1, **params) -> ShardDataModule:
    params.setdefault("batch_size", 4)
    params.setdefault("num_workers", 0)
    dm = ShardDataModule(train=source, **params)
    dm.rank_and_world = lambda: (rank, world)  # what a Trainer would say; the loaders ask through this
    dm.setup("fit")
    return dm


def keys_of(loader, epoch: int, resume_at: int | None = None) -> list[list[str]]:
    loader.set_epoch(epoch)
    if resume_at is not None:
        loader.load_state_dict({"epoch": epoch, "consumed_batches": resume_at, "health": loader.health.state_dict()})
    return [list(batch["__key__"]) for batch in loader]


def tree_fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


# -- plans -----------------------------------------------------------------------------------------------------------
def test_buffer_shuffle_is_a_seeded_permutation_with_bounded_displacement():
    items = np.arange(1000)
    a = buffer_shuffle(items, 50, np.random.default_rng(0))
    assert sorted(a) == list(items) and not np.array_equal(a, items)
    assert np.array_equal(a, buffer_shuffle(items, 50, np.random.default_rng(0)))
    # an item can come out early only if it is already in the buffer: position >= its index - (buffer - 1)
    positions = np.argsort(a)
    assert (positions >= items - 49).all()


def test_rank_plans_partition_the_epoch_with_equal_shares():
    counts = [50, 1, 3, 40, 7, 2]  # very uneven shards
    settings = PlanSettings(batch_size=4, seed=3, shuffle=True, shuffle_buffer=16, drop_last=True)
    plans = [rank_order(counts, r, 3, 5, settings) for r in range(3)]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == 103 // 3 // 4 * 4
    assert not set(plans[0]) & set(plans[1]) and not set(plans[1]) & set(plans[2])
    assert np.array_equal(plans[1], rank_order(counts, 1, 3, 5, settings))
    assert not np.array_equal(plans[1], rank_order(counts, 1, 3, 6, settings))


# -- indexed sources -------------------------------------------------------------------------------------------------
def test_indexed_round_trip_decodes_what_was_written(tmp_path):
    out = shapes(tmp_path, num=24, per_shard=10)
    dm = data(str(out), batch_size=6, shuffle=False)
    batches = list(dm.train_dataloader())
    assert [k for b in batches for k in b["__key__"]] == [f"{i:08d}" for i in range(24)]
    first = batches[0]
    with tarfile.open(out / "data-000000.tar") as tar:
        image = np.asarray(Image.open(io.BytesIO(tar.extractfile("00000000.png").read())).convert("RGB"))
        label = int(tar.extractfile("00000000.cls").read())
        meta = json.loads(tar.extractfile("00000000.json").read())
    assert torch.equal(first["png"][0], torch.from_numpy(image).permute(2, 0, 1))
    assert first["png"].dtype == torch.uint8 and first["cls"][0].item() == label
    assert first["json"]["label"][0].item() == meta["label"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_any_batch_gives_the_rest_of_the_epoch(tmp_path, workers):
    out = shapes(tmp_path)
    dm = data(str(out), num_workers=workers, shuffle_buffer=20)
    loader = dm.train_dataloader()
    full = keys_of(loader, epoch=2)
    assert len(full) == 96 // 4 and len({k for b in full for k in b}) == 96
    for k in (1, 7, 23):
        assert keys_of(loader, epoch=2, resume_at=k) == full[k:]
    assert keys_of(loader, epoch=2) == full  # a resume applies once
    other = keys_of(loader, epoch=3)
    assert other != full and sorted(sum(other, [])) == sorted(sum(full, []))
    assert keys_of(data(str(out), num_workers=0, shuffle_buffer=20).train_dataloader(), epoch=3) == other


def test_uneven_shards_two_ranks_equal_batches_disjoint_samples(tmp_path):
    sizes = [37, 1, 2, 9, 1, 30]
    paths, start = [], 0
    for i, n in enumerate(sizes):
        paths.append(str(write_plain_tar(tmp_path / f"part-{i}.tar", numbered(start, n))))
        start += n
    seen = []
    for rank in range(2):
        loader = data(paths, rank, 2, num_workers=2).train_dataloader()
        batches = keys_of(loader, epoch=0)
        assert len(loader) == len(batches) == 80 // 2 // 4
        seen.append({k for b in batches for k in b})
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 40


def test_indexed_source_start_up_errors(tmp_path):
    out = shapes(tmp_path, num=24, per_shard=10)
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    shard = damaged / "data-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 0xFF  # same size, different bytes: only the sha256 can tell
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="data-000001.tar: sha256 does not match"):
        open_source(str(damaged))
    open_source(str(damaged), verify="size")  # the cheap check passes: that is its limit
    (damaged / "data-000002.tar").unlink()
    with pytest.raises(DatasetError, match="data-000002.tar: shard listed in .* is missing"):
        open_source(str(damaged))
    with pytest.raises(DatasetError, match="does not exist"):
        open_source(str(tmp_path / "nowhere" / "x-{0..3}.tar"))


def test_too_little_data_for_the_ranks(tmp_path):
    out = shapes(tmp_path, num=12, per_shard=12)
    with pytest.raises(DatasetError, match="12 samples give each of 4 rank"):
        data(str(out), 0, 4, batch_size=4).train_dataloader()


def test_bad_parameters_are_reported_together():
    with pytest.raises(ParamError) as refused:
        ShardDataModule(train="x", batch_size=0, max_bad_fraction=2)
    assert refused.value.problems == [("batch_size", "must be >= 1, got 0"),
                                      ("max_bad_fraction", "must be in [0, 1], got 2")]


# -- plain tar and corrupt data --------------------------------------------------------------------------------------
def test_plain_tar_folder_is_readable(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(np.full((5, 7, 3), 40 * i, dtype=np.uint8)).save(buf, format="JPEG", quality=95)
        (folder / f"img{i}.jpg").write_bytes(buf.getvalue())
        (folder / f"img{i}.json").write_text(json.dumps({"i": i}))
    subprocess.run(["tar", "--sort=name", "-cf", str(tmp_path / "plain-0.tar"), "-C", str(folder), "."], check=True)
    dm = data(str(tmp_path / "plain-{0..0}.tar"), batch_size=3, shuffle=False)
    batches = list(dm.train_dataloader())
    assert [k for b in batches for k in b["__key__"]] == [f"img{i}" for i in range(6)]
    assert batches[0]["jpg"].shape == (3, 3, 5, 7) and batches[1]["json"]["i"].tolist() == [3, 4, 5]


def test_tar_with_scattered_sample_members_is_refused(tmp_path):
    samples = numbered(0, 3)
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        for ext in ("png", "cls"):  # all .png first, then all .cls: samples are not contiguous
            for key, fields in samples:
                member = tarfile.TarInfo(f"{key}.{ext}")
                member.size = len(fields[ext])
                tar.addfile(member, io.BytesIO(fields[ext]))
    with pytest.raises(DatasetError, match="not adjacent.*--sort=name"):
        scan_tar(str(path))


def corrupt_dataset(tmp_path: Path, kind: str) -> list[str]:
    """Two plain tars of 20 samples; one damaged the way `kind` says. Returns the shard paths."""
    good = write_plain_tar(tmp_path / "c-0.tar", numbered(0, 20))
    samples = numbered(20, 20)
    if kind == "bad_image":
        samples[5][1]["png"] = b"\x89PNG\r\n\x1a\n this is not an image"
    elif kind == "missing_key":
        del samples[5][1]["cls"]
    path = write_plain_tar(tmp_path / "c-1.tar", samples)
    if kind == "truncated":
        raw = path.read_bytes()
        with tarfile.open(path) as tar:
            last = [m for m in tar.getmembers() if m.isfile()][-1]
        path.write_bytes(raw[:last.offset_data + last.size // 2])  # cut inside the last member
    return [str(good), str(path)]


@pytest.mark.parametrize("kind", ["bad_image", "missing_key", "truncated"])
def test_corrupt_sample_is_skipped_counted_and_the_dataset_left_alone(tmp_path, kind, caplog):
    paths = corrupt_dataset(tmp_path, kind)
    before = tree_fingerprint(tmp_path)
    dm = data(paths, batch_size=5, num_workers=0, max_bad_fraction=0.05, shuffle=False)
    loader = dm.train_dataloader()
    batches = keys_of(loader, epoch=0)
    assert len(batches) == 8  # still a full epoch of batches: ranks stay in step
    keys = [k for b in batches for k in b]
    assert len(keys) == 39 and len(set(keys)) == 39
    assert dm.health_metrics()["data/train_bad_samples"] == 1
    assert dm.health_metrics()["data/train_read_samples"] == 40
    assert "c-1.tar" in caplog.text and "skipping bad sample" in caplog.text
    # resuming past the bad sample skips nothing else; before it, the bad sample is met (and counted) again
    assert keys_of(loader, epoch=0, resume_at=6) == batches[6:]
    strict = data(paths, batch_size=5, num_workers=0, max_bad_fraction=0.0, shuffle=False)
    with pytest.raises(DatasetError, match=r"c-1.tar: 1 bad samples in epoch 0 .* max_bad_fraction=0.0"):
        keys_of(strict.train_dataloader(), epoch=0)
    assert tree_fingerprint(tmp_path) == before


# -- streamed sources (pipe:, http) ----------------------------------------------------------------------------------
def test_stream_source_with_index_resumes_exactly(tmp_path):
    out = shapes(tmp_path, num=96, per_shard=12)
    urls = [f"pipe:cat {p}" for p in sorted(map(str, out.glob("*.tar")))]
    dm = data(urls, num_workers=2, train_index=str(out / "index.json"), shuffle_buffer=10)
    loader = dm.train_dataloader()
    full = keys_of(loader, epoch=1)
    assert len(full) == len(loader) == 96 // 4
    assert len({k for b in full for k in b}) == 96  # enough data: one pass, no repeats
    for k in (1, 5, 18):
        assert keys_of(loader, epoch=1, resume_at=k) == full[k:]
    assert keys_of(loader, epoch=1) == full
    assert keys_of(loader, epoch=2) != full
    with pytest.raises(DatasetError, match="needs its sample counts"):
        data(urls)
    with pytest.raises(DatasetError, match="8 shard.*cannot be split over 2 rank.*x 5 worker"):
        data(urls, 0, 2, num_workers=5, train_index=str(out / "index.json")).train_dataloader()


# -- in a fit ----------------------------------------------------------------------------------------------------------
def sample_log(run_dir: Path, rank: int) -> list[tuple[int, int, str]]:
    lines = (run_dir / "sample_log" / f"rank{rank}.tsv").read_text().splitlines()
    return [(int(s), int(e), keys) for s, e, keys in (line.split("\t") for line in lines)]


def test_ddp_two_ranks_two_workers_preempted_mid_epoch_reads_exactly_the_same_samples(tmp_path):
    train = shapes(tmp_path, num=200, per_shard=16, name="train")
    common = ["--config", str(REPO / "configs" / "data" / "shapes_classifier.yaml"), f"run.root={tmp_path}",
              f"data.params.train={train}", "data.params.val=null", "data.params.batch_size=8",
              "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_steps=30", "run.every_n_train_steps=1000",
              "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=null", "trainer.limit_val_batches=0"]
    reference = run_fit(*common, "run.name=reference", timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # 200 samples / 2 ranks / batch 8 = 12 batches per epoch: 30 steps cross two epoch boundaries.
    # Stop mid-epoch 1 (step 17 = batch 5 of epoch 1), then train on from that checkpoint to step 30.
    first = run_fit(*common, "run.name=resumed", "trainer.max_steps=17", timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    resumed = run_fit(*common, "run.name=resumed", "--resume", str(last), timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "resumed" / "status.json").read_text())["global_step"] == 30
    per_epoch = []
    for rank in range(2):
        expected = sample_log(tmp_path / "reference", rank)
        assert len(expected) == 30
        assert sample_log(tmp_path / "resumed", rank) == expected
        per_epoch.append([{k for _, e, keys in expected if e == epoch for k in keys.split(",")} for epoch in (0, 1)])
    for epoch in (0, 1):  # ranks read disjoint samples, 12 batches of 8 each
        assert not per_epoch[0][epoch] & per_epoch[1][epoch] and len(per_epoch[0][epoch]) == 96
    assert per_epoch[0][0] != per_epoch[0][1]  # a new epoch is a new split and order
    import csv
    rows = list(csv.DictReader(open(tmp_path / "reference" / "logs" / "csv" / "metrics.csv")))
    read = [float(r["data/train_read_samples"]) for r in rows if r.get("data/train_read_samples")]
    bad = [float(r["data/train_bad_samples"]) for r in rows if r.get("data/train_bad_samples")]
    # logged every 10 steps; Lightning's loader runs one batch ahead of the step that logs
    assert read and bad and set(bad) == {0.0} and read[-1] >= 30 * 8


def test_motion_clips_and_video_files_decode(tmp_path):
    from tests.data.test_shards import _write_video

    assert make("synthetic-motion", "--out", str(tmp_path / "m"), "--num", "6", "--size", "16", "--frames", "3")[0] == 0
    batch = next(iter(data(str(tmp_path / "m"), batch_size=6, shuffle=False).train_dataloader()))
    with tarfile.open(tmp_path / "m" / "data-000000.tar") as tar:
        clip = np.load(io.BytesIO(tar.extractfile("00000002.frames.npy").read()))
        caption = tar.extractfile("00000002.txt").read().decode()
    assert torch.equal(batch["frames.npy"][2], torch.from_numpy(clip)) and batch["txt"][2] == caption
    _write_video(tmp_path / "clip.mp4", 5, 3)
    video = (tmp_path / "clip.mp4").read_bytes()
    write_plain_tar(tmp_path / "v-0.tar", [("a", {"mp4": video, "cls": b"1"}), ("b", {"mp4": video[:200], "cls": b"2"}),
                                           ("c", {"mp4": video, "cls": b"3"})])
    dm = data(str(tmp_path / "v-0.tar"), batch_size=3, shuffle=False, max_bad_fraction=0.5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["__key__"] == ["a", "c"] and batch["mp4"].shape == (2, 5, 3, 48, 64)
    assert batch["mp4"].dtype == torch.uint8 and dm.health_metrics()["data/train_bad_samples"] == 1


def test_data_errors_in_a_fit_are_one_line_with_exit_code_2(tmp_path):
    train = shapes(tmp_path, num=48, per_shard=12, name="train")
    (train / "data-000002.tar").unlink()
    common = ["--config", str(REPO / "configs" / "data" / "shapes_classifier.yaml"), f"run.root={tmp_path}",
              f"data.params.train={train}", "data.params.val=null", "data.params.num_workers=0"]
    result = run_fit(*common, "run.name=missing")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("data error: ")
    assert "data-000002.tar: shard listed in" in result.stderr.strip().splitlines()[-1]
    assert json.loads((tmp_path / "missing" / "status.json").read_text())["state"] == "failed"
    result = run_fit(*common, "run.name=badsize", "data.params.batch_size=0")
    assert result.returncode == 2 and "command line: data.params.batch_size: must be >= 1, got 0" in result.stderr
    assert not (tmp_path / "badsize").exists()


def test_ddp_uneven_plain_tars_finish_without_hanging(tmp_path):
    sizes, start, paths = [61, 1, 3, 22, 1], 0, []
    for i, n in enumerate(sizes):
        samples = [(f"s{j:05d}", {"png": png(j, 8), "cls": str(j % 12).encode()}) for j in range(start, start + n)]
        paths.append(str(write_plain_tar(tmp_path / f"u-{i}.tar", samples)))
        start += n
    result = run_fit("--config", str(REPO / "configs" / "data" / "shapes_classifier.yaml"), f"run.root={tmp_path}",
                     "run.name=uneven", f"data.params.train=[{','.join(paths)}]", "data.params.val=null",
                     "data.params.batch_size=4", "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_steps=-1",
                     "trainer.max_epochs=2", "trainer.val_check_interval=null", "trainer.limit_val_batches=0",
                     timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [sample_log(tmp_path / "uneven", rank) for rank in range(2)]
    assert len(logs[0]) == len(logs[1]) == 2 * (88 // 2 // 4)  # 11 batches per rank per epoch

"""The writing side of the data layer: datamodules/shards.py and the shard kinds through launch/make_shards.py."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from datamodules.shards import DatasetError, ShardWriter, parse_index, parse_size, read_index, write_parallel
from datamodules.synthetic_shapes import BACKGROUNDS, COLORS
from datamodules.video import mean_flow, motion_quantiles
from launch import make_shards
from tests.conftest import REPO


def make(*args: str) -> tuple[int, str]:
    """make_shards in-process (fast); returns (exit code, stderr)."""
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = make_shards.main(list(args))
    return rc, err.getvalue()


def tar_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    out: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = tf.extractfile(m).read()
    return out


def all_samples(d: Path) -> list[tuple[str, dict[str, bytes]]]:
    index = read_index(d, verify=True)
    return [s for shard in index["shards"] for s in tar_samples(d / shard["file"])]


def wds_samples(d: Path) -> list[dict]:
    index = read_index(d)
    urls = [str(d / s["file"]) for s in index["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))


def check_index_matches_tars(d: Path) -> dict:
    index = read_index(d, verify=True)
    assert index["format"] == "worldbridge-shards/1"
    assert sorted(p.name for p in d.iterdir()) == sorted([s["file"] for s in index["shards"]] + ["index.json"])
    total = 0
    for shard in index["shards"]:
        raw = (d / shard["file"]).read_bytes()
        assert len(raw) == shard["bytes"]
        assert hashlib.sha256(raw).hexdigest() == shard["sha256"]
        with tarfile.open(d / shard["file"]) as tf:
            members = tf.getmembers()
        firsts, seen = [], set()
        for m in members:
            assert m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o444
            key = m.name.split(".", 1)[0]
            if key not in seen:
                seen.add(key)
                firsts.append((m.offset, key))
        assert [o for o, _ in firsts] == shard["offsets"]
        assert firsts[0][1] == shard["first_key"]
        assert len(firsts) == shard["samples"]
        # an offset is enough to read that sample alone
        for off, key in firsts:
            with open(d / shard["file"], "rb") as f:
                f.seek(off)
                info = tarfile.TarInfo.frombuf(f.read(512), "utf-8", "surrogateescape")
            assert info.name.startswith(key + ".")
        total += shard["samples"]
        assert all(set(s[1]) >= set(index["keys"]) for s in tar_samples(d / shard["file"]))
    assert total == index["total_samples"]
    return index


# ------------------------------------------------------------------------------------------------ writer
def test_parse_size():
    assert parse_size("64MB") == 64_000_000
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("500KB") == 500_000
    assert parse_size("1GiB") == 1024 ** 3
    assert parse_size("1234") == 1234
    for bad in ("", "12XB", "-1MB", "0", "MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_writer_shard_limits_and_index(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(int(n)) for n in rng.integers(1, 3000, size=40)]
    with ShardWriter(tmp_path / "d", "x", shard_size="20KB", metadata={"a": 1}, command=["cmd"], seed=3) as w:
        for i, b in enumerate(blobs):
            w.write(f"k{i:03d}", {"bin": b, "txt": str(i).encode()})
    index = check_index_matches_tars(tmp_path / "d")
    assert len(index["shards"]) > 2
    assert all(s["bytes"] <= 20_000 for s in index["shards"])
    assert index["keys"] == ["bin", "txt"] and index["metadata"] == {"a": 1}
    assert index["command"] == ["cmd"] and index["seed"] == 3 and index["name"] == "x"
    got = all_samples(tmp_path / "d")
    assert [s[1]["bin"] for s in got] == blobs
    # max samples per shard
    with ShardWriter(tmp_path / "e", "x", max_samples=7) as w:
        for i in range(20):
            w.write(f"{i:03d}", {"txt": b"a"})
    assert [s["samples"] for s in read_index(tmp_path / "e")["shards"]] == [7, 7, 6]


def test_writer_exception_leaves_nothing(tmp_path):
    d = tmp_path / "d"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(d, "x", max_samples=3) as w:
            for i in range(10):
                w.write(f"{i:03d}", {"txt": b"a" * 100})
            raise RuntimeError("boom")
    assert list(d.iterdir()) == []
    with pytest.raises(DatasetError, match="index.json"):
        read_index(d)


def test_read_index_errors(tmp_path):
    with ShardWriter(tmp_path / "d", "x", max_samples=2) as w:
        for i in range(5):
            w.write(f"{i:03d}", {"txt": b"abc"})
    shard = tmp_path / "d" / "x-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[600] ^= 1
    shard.write_bytes(bytes(raw))
    read_index(tmp_path / "d")  # same size: only the hash notices
    with pytest.raises(DatasetError, match="x-000001.tar.*sha256"):
        read_index(tmp_path / "d", verify=True)
    shard.write_bytes(bytes(raw[:-512]))
    with pytest.raises(DatasetError, match="x-000001.tar.*bytes"):
        read_index(tmp_path / "d")
    shard.unlink()
    with pytest.raises(DatasetError, match="x-000001.tar.*missing"):
        read_index(tmp_path / "d")


def test_lenient_index_reading(tmp_path):
    """strict=False (verify='none', an index beside streamed shards): only a 'shards' list is required."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "index.json").write_text(json.dumps({"shards": [{"file": "gone.tar", "samples": 2}]}))
    with pytest.raises(DatasetError, match="not a worldbridge-shards/1 index"):
        read_index(d)
    index = read_index(d, strict=False)  # nothing checked on disk: the shard may be missing
    assert index == {"shards": [{"file": "gone.tar", "samples": 2}], "metadata": {}, "keys": []}
    assert read_index(tmp_path, strict=False, path=d / "index.json") == index  # an index file named by its path
    assert parse_index(b'{"shards": [], "metadata": {"a": 1}}', "url", strict=False)["metadata"] == {"a": 1}
    with pytest.raises(DatasetError, match="url: not a shard index"):
        parse_index('{"format": "worldbridge-shards/1"}', "url", strict=False)
    with pytest.raises(DatasetError, match="url: unreadable"):
        parse_index("{nope", "url", strict=False)
    with pytest.raises(DatasetError, match="index.json: unreadable"):
        read_index(tmp_path / "none", strict=False)


def _encode(i: int) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng(i)
    return f"{i:05d}", {"bin": rng.bytes(int(rng.integers(10, 2000))), "cls": str(i % 3).encode()}


def test_write_parallel_independent_of_workers(tmp_path):
    for n in (1, 2):
        write_parallel(tmp_path / str(n), "p", list(range(50)), _encode, num_workers=n, shard_size="15KB",
                       command=["c"], seed=0)
    i1, i2 = read_index(tmp_path / "1"), read_index(tmp_path / "2")
    assert i1 == i2 and len(i1["shards"]) > 1
    for s in i1["shards"]:
        assert (tmp_path / "1" / s["file"]).read_bytes() == (tmp_path / "2" / s["file"]).read_bytes()


def test_plain_tar_folder_readable_by_webdataset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(src / f"s{i}.jpg", quality=95)
        (src / f"s{i}.json").write_text(json.dumps({"i": i}))
    names = sorted(p.name for p in src.iterdir())
    subprocess.run(["tar", "cf", str(tmp_path / "plain.tar"), *names], cwd=src, check=True)
    got = list(wds.WebDataset([str(tmp_path / "plain.tar")], shardshuffle=False).decode("rgb8"))
    assert [s["json"]["i"] for s in got] == [0, 1, 2]
    assert got[2]["jpg"].shape == (8, 8, 3)


# -------------------------------------------------------------------------------------------- synthetic kinds
def test_synthetic_shapes_round_trip_and_determinism(tmp_path):
    args = ["--num", "30", "--size", "32", "--seed", "5", "--spurious", "0.9", "--max-samples-per-shard", "8"]
    assert make("synthetic-shapes", "--out", str(tmp_path / "a"), *args) == (0, "")
    assert make("synthetic-shapes", "--out", str(tmp_path / "b"), *args, "--num-workers", "2") == (0, "")
    index = check_index_matches_tars(tmp_path / "a")
    assert index["keys"] == ["cls", "json", "png"] and index["total_samples"] == 30
    assert [s["samples"] for s in index["shards"]] == [8, 8, 8, 6]
    meta = index["metadata"]
    assert len(meta["class_names"]) == 12 and meta["spurious"]["probability"] == 0.9
    assert index["seed"] == 5 and "synthetic-shapes" in index["command"]
    for s in index["shards"]:
        assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()
    index_b = read_index(tmp_path / "b")
    assert {k: v for k, v in index.items() if k != "command"} == {k: v for k, v in index_b.items() if k != "command"}

    written = all_samples(tmp_path / "a")
    decoded = wds_samples(tmp_path / "a")
    assert [s["__key__"] for s in decoded] == [k for k, _ in written] == [f"{i:08d}" for i in range(30)]
    matches = 0
    for (key, fields), d in zip(written, decoded):
        label = int(fields["cls"])
        info = json.loads(fields["json"])
        assert d["cls"] == label and d["json"] == info
        assert meta["class_names"][label] == f"{info['color']} {info['shape']}"
        assert info["caption"] == f"a {info['color']} {info['shape']}"
        img = np.asarray(Image.open(io.BytesIO(fields["png"])))
        assert img.shape == (32, 32, 3) and np.array_equal(d["png"], img)
        assert tuple(img[0, 0]) == BACKGROUNDS[info["background"]]
        assert (img == COLORS[info["color"]]).all(-1).sum() > 20
        matches += meta["spurious"]["class_background"][meta["class_names"][label]] == info["background"]
    assert matches >= 20  # p=0.9 (+ chance)


def test_synthetic_control_maps(tmp_path):
    import cv2

    assert make("synthetic-control", "--out", str(tmp_path / "c"), "--num", "6", "--size", "40") == (0, "")
    index = check_index_matches_tars(tmp_path / "c")
    assert index["keys"] == ["canny.png", "cls", "depth.png", "json", "png", "seg.png"]
    decoded = wds_samples(tmp_path / "c")
    for (key, f), d in zip(all_samples(tmp_path / "c"), decoded):
        img = np.asarray(Image.open(io.BytesIO(f["png"])))
        canny = np.asarray(Image.open(io.BytesIO(f["canny.png"])))
        seg = np.asarray(Image.open(io.BytesIO(f["seg.png"])))
        depth = np.asarray(Image.open(io.BytesIO(f["depth.png"])))
        assert np.array_equal(canny, cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 100, 200))
        assert set(np.unique(seg)) == {0, int(f["cls"]) + 1}
        assert depth.shape == seg.shape == (40, 40) and depth[seg > 0].mean() > depth[seg == 0].mean()
        assert json.loads(f["json"])["caption"].startswith("a ")
        assert d["canny.png"].shape[:2] == (40, 40) and d["json"]["caption"] == json.loads(f["json"])["caption"]


# ---------------------------------------------------------------------------------------------- classification
CLASSES = ["cat", "dog", "eel", "fox", "gnu"]


@pytest.fixture
def coop(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(CLASSES):
        (root / cname).mkdir(parents=True)
        for i in range(6):
            rel = f"{cname}/{i}.png"
            Image.new("RGB", (6, 5), (label * 40, i * 30, 7)).save(root / rel)
            split["train" if i < 4 else "val" if i == 4 else "test"].append([rel, label, cname])
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    return path, root


def _cls_samples(d: Path) -> list[tuple[int, str, str, bytes]]:
    out = []
    for _, f in all_samples(d):
        info = json.loads(f["json"])
        assert int(f["cls"]) == info["label"]
        out.append((info["label"], info["classname"], info["path"], f["png"]))
    return out


def test_classification_split_json(tmp_path, coop):
    path, root = coop
    out = tmp_path / "out"
    assert make("classification", "--split-json", str(path), "--root", str(root), "--out", str(out),
                "--shots", "2", "--seed", "1") == (0, "")
    for split, n in (("train", 10), ("val", 5), ("test", 5)):
        index = check_index_matches_tars(out / split)
        assert index["total_samples"] == n and index["keys"] == ["cls", "json", "png"]
        assert index["metadata"]["class_names"] == CLASSES
    train = _cls_samples(out / "train")
    assert [label for label, *_ in train] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for label, cname, rel, data in train:
        assert CLASSES[label] == cname and (root / rel).read_bytes() == data
    decoded = wds_samples(out / "train")
    assert [d["cls"] for d in decoded] == [t[0] for t in train]
    assert np.array_equal(decoded[0]["png"], np.asarray(Image.open(root / train[0][2])))
    # seeded: same seed same pick, another seed (usually) another
    assert make("classification", "--split-json", str(path), "--root", str(root), "--out", str(tmp_path / "o2"),
                "--shots", "2", "--seed", "1", "--num-workers", "2") == (0, "")
    for split in ("train", "val", "test"):
        for s in read_index(out / split)["shards"]:
            assert (out / split / s["file"]).read_bytes() == (tmp_path / "o2" / split / s["file"]).read_bytes()
    picks = set()
    for seed in range(4):
        o = tmp_path / f"s{seed}"
        assert make("classification", "--split-json", str(path), "--root", str(root), "--out", str(o),
                    "--shots", "2", "--seed", str(seed))[0] == 0
        picks.add(tuple(r for _, _, r, _ in _cls_samples(o / "train")))
    assert len(picks) > 1


def test_classification_base_new_and_folder(tmp_path, coop):
    path, root = coop
    for subset, names in (("base", CLASSES[:3]), ("new", CLASSES[3:])):
        out = tmp_path / subset
        assert make("classification", "--split-json", str(path), "--root", str(root), "--out", str(out),
                    "--subset", subset) == (0, "")
        index = read_index(out / "test")
        assert index["metadata"]["class_names"] == names
        got = _cls_samples(out / "test")
        assert sorted({(label, c) for label, c, _, _ in got}) == list(enumerate(names))
    assert make("classification", "--images", str(root), "--out", str(tmp_path / "f")) == (0, "")
    got = _cls_samples(tmp_path / "f" / "train")
    assert len(got) == 30 and read_index(tmp_path / "f" / "train")["metadata"]["class_names"] == CLASSES
    assert [g[0] for g in got] == sorted(g[0] for g in got)


def test_make_shards_prints_one_line_per_dataset_directory_and_the_function_prints_nothing(tmp_path, coop, capsys):
    """classification writes a dataset per split under --out: one line each (directory, shards, samples, bytes)."""
    path, root = coop
    out = tmp_path / "out"
    assert make("classification", "--split-json", str(path), "--root", str(root), "--out", str(out),
                "--max-samples-per-shard", "3") == (0, "")

    def on_disk(d: Path) -> str:
        return f"{sum(p.stat().st_size for p in d.glob('*.tar')):,} bytes"

    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out / 'train'}: 7 shards, 20 samples, {on_disk(out / 'train')}",
        f"wrote {out / 'val'}: 2 shards, 5 samples, {on_disk(out / 'val')}",
        f"wrote {out / 'test'}: 2 shards, 5 samples, {on_disk(out / 'test')}"]
    shapes = tmp_path / "s"
    assert make("synthetic-shapes", "--out", str(shapes), "--num", "4", "--size", "16") == (0, "")
    assert capsys.readouterr().out.splitlines() == [f"wrote {shapes}: 1 shard, 4 samples, {on_disk(shapes)}"]
    # a library call stays silent
    from datamodules.writers.classification import write_classification_shards
    write_classification_shards(tmp_path / "lib", split_json=path, root=root)
    assert capsys.readouterr() == ("", "")


def assert_bad(rc_err: tuple[int, str], needle: str, out: Path) -> None:
    rc, err = rc_err
    assert rc == 2, err
    assert err.count("\n") == 1 and needle in err, err
    if out.exists():
        assert not list(out.rglob("index.json")) and not list(out.rglob("*.tar")) and not list(out.rglob("*.tmp"))


def test_bad_inputs(tmp_path, coop):
    path, root = coop
    out = tmp_path / "out"
    base = ["classification", "--root", str(root), "--out", str(out)]
    assert_bad(make(*base, "--split-json", str(tmp_path / "nope.json")), "nope.json", out)
    assert_bad(make("classification", "--images", str(tmp_path / "nodir"), "--out", str(out)), "nodir", out)
    assert_bad(make(*base, "--split-json", str(path), "--shots", "5"), "'cat'", out)
    data = json.loads(path.read_text())
    data["test"][-1][2] = "cat"  # label 4 named cat
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert_bad(make(*base, "--split-json", str(bad)), "bad.json", out)
    data = json.loads(path.read_text())
    data["test"].append(["cat/missing.png", 0, "cat"])
    bad.write_text(json.dumps(data))
    assert_bad(make(*base, "--split-json", str(bad)), "missing.png", out)
    data = json.loads(path.read_text())
    Image.new("RGB", (6, 5)).save(root / "unicorn.png")
    data["test"].append(["unicorn.png", len(CLASSES), "unicorn"])  # a class no training image has
    bad.write_text(json.dumps(data))
    assert_bad(make(*base, "--split-json", str(bad)), "test has class 'unicorn'", out)
    (root / "gnu" / "5.png").write_bytes(b"not a png")  # in test split: train and val would be fine
    assert_bad(make(*base, "--split-json", str(path)), "5.png", out)
    assert_bad(make("synthetic-shapes", "--out", str(out), "--num", "3", "--shard-size", "12XB"), "--shard-size",
                out)
    assert_bad(make("synthetic-shapes", "--out", str(out), "--num", "3", "--spurious", "2"), "--spurious", out)
    assert_bad(make("synthetic-shapes", "--num", "3"), "--out", out)
    assert_bad(make("nokind"), "nokind", out)


def test_cli_subprocess(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "launch" / "make_shards.py"), "synthetic-shapes", "--out",
                        str(tmp_path / "s"), "--num", "4", "--size", "16"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert read_index(tmp_path / "s")["total_samples"] == 4
    r = subprocess.run([sys.executable, str(REPO / "launch" / "make_shards.py"), "synthetic-shapes", "--out",
                        str(tmp_path / "s"), "--num", "4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already holds a dataset" in r.stderr


# ---------------------------------------------------------------------------------------------------- captions
@pytest.fixture
def caption_files(tmp_path) -> tuple[Path, Path, Path]:
    root = tmp_path / "croot"
    (root / "img").mkdir(parents=True)
    (root / "depth").mkdir()
    rows = []
    for i in range(5):
        img = np.zeros((24, 24, 3), np.uint8)
        img[4 + i:16 + i, 5:18] = (200, 100 + i * 10, 30)
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        Image.fromarray((np.arange(24 * 24).reshape(24, 24) % 256).astype(np.uint8)).save(root / "depth" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"caption, number {i}", "depth": f"depth/{i}.png"})
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_path = tmp_path / "caps.csv"
    import csv

    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "depth"])
        w.writeheader()
        w.writerows(rows)
    return jsonl, csv_path, root


def test_captions_round_trip(tmp_path, caption_files):
    import cv2

    jsonl, csv_path, root = caption_files
    for src, out in ((jsonl, tmp_path / "j"), (csv_path, tmp_path / "c")):
        assert make("captions", "--captions", str(src), "--root", str(root), "--out", str(out), "--canny",
                    "--conditions", "depth") == (0, "")
    index = check_index_matches_tars(tmp_path / "j")
    assert index["keys"] == ["canny.png", "depth.png", "json", "png", "txt"]
    for s in index["shards"]:
        assert (tmp_path / "j" / s["file"]).read_bytes() == (tmp_path / "c" / s["file"]).read_bytes()
    decoded = wds_samples(tmp_path / "j")
    for i, ((key, f), d) in enumerate(zip(all_samples(tmp_path / "j"), decoded)):
        assert f["png"] == (root / "img" / f"{i}.png").read_bytes()
        assert f["depth.png"] == (root / "depth" / f"{i}.png").read_bytes()
        assert f["txt"].decode() == d["txt"] == json.loads(f["json"])["caption"] == f"caption, number {i}"
        img = np.asarray(Image.open(root / "img" / f"{i}.png"))
        assert np.array_equal(d["canny.png"][..., 0] if d["canny.png"].ndim == 3 else d["canny.png"],
                              cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 100, 200))


def test_captions_bad_inputs(tmp_path, caption_files):
    jsonl, csv_path, root = caption_files
    out = tmp_path / "out"
    base = ["captions", "--root", str(root), "--out", str(out)]
    assert_bad(make(*base, "--captions", str(csv_path), "--caption-column", "text"), "'text'", out)
    assert_bad(make(*base, "--captions", str(jsonl), "--conditions", "seg"), "caps.jsonl:1: missing column 'seg'",
                out)
    assert_bad(make(*base, "--captions", str(tmp_path / "none.jsonl")), "none.jsonl", out)
    (root / "depth" / "3.png").write_bytes(b"garbage")
    assert_bad(make(*base, "--captions", str(jsonl), "--conditions", "depth"), "3.png", out)
    (root / "img" / "4.png").unlink()
    assert_bad(make(*base, "--captions", str(jsonl)), "4.png", out)


# ---------------------------------------------------------------------------------------------------- motion
def test_synthetic_motion(tmp_path):
    args = ["--num", "12", "--size", "32", "--frames", "4", "--seed", "2", "--max-samples-per-shard", "5"]
    assert make("synthetic-motion", "--out", str(tmp_path / "m"), *args) == (0, "")
    assert make("synthetic-motion", "--out", str(tmp_path / "n"), *args, "--num-workers", "2") == (0, "")
    index = check_index_matches_tars(tmp_path / "m")
    assert index["keys"] == ["cls", "frames.npy", "json", "txt"]
    for s in index["shards"]:
        assert (tmp_path / "m" / s["file"]).read_bytes() == (tmp_path / "n" / s["file"]).read_bytes()
    qs = index["metadata"]["motion_quantiles"]
    assert len(qs) == 4 and qs == sorted(qs) and index["metadata"]["motion_levels"] == 5
    decoded = wds_samples(tmp_path / "m")
    motions = []
    for (key, f), d in zip(all_samples(tmp_path / "m"), decoded):
        clip = np.load(io.BytesIO(f["frames.npy"]))
        info = json.loads(f["json"])
        assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8 and np.array_equal(d["frames.npy"], clip)
        assert len(info["boxes"]) == 4 and d["txt"] == info["caption"]
        x0, y0, x1, y1 = info["boxes"][-1]
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert tuple(clip[-1, cy, cx]) == COLORS[info["color"]]
        assert info["motion"] == pytest.approx(mean_flow(clip), abs=1e-5)
        motions.append((info["speed"], info["motion"]))
    motions.sort()
    assert motions[-1][1] > motions[0][1]  # flow grows with speed
    assert qs == motion_quantiles([m for _, m in sorted(motions, key=lambda x: x)])


# ------------------------------------------------------------------------------------------------------ video
def _write_video(path: Path, n: int, speed: int) -> list[list[float]]:
    import av

    boxes = []
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            a = np.full((48, 64, 3), 30, np.uint8)
            x = 4 + speed * i
            a[16:32, x:x + 12] = 230
            boxes.append([x, 16, x + 12, 32])
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return boxes


def test_video(tmp_path):
    root = tmp_path / "vids"
    root.mkdir()
    rows = []
    for i, speed in enumerate((0, 2)):
        boxes = _write_video(root / f"v{i}.mp4", 20, speed)
        rows.append({"video": f"v{i}.mp4", "caption": f"video {i}", "boxes": boxes})
    listing = tmp_path / "videos.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--videos", str(listing), "--root", str(root), "--frames", "4", "--stride", "2", "--size", "32"]
    assert make("video", "--out", str(tmp_path / "a"), *args) == (0, "")
    assert make("video", "--out", str(tmp_path / "b"), *args, "--num-workers", "2") == (0, "")
    index = check_index_matches_tars(tmp_path / "a")
    for s in index["shards"]:
        assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()
    assert index["keys"] == ["frames.npy", "json", "txt"] and index["total_samples"] == 4  # 2 clips of 7 per video
    assert len(index["metadata"]["motion_quantiles"]) == 4
    decoded = wds_samples(tmp_path / "a")
    got = all_samples(tmp_path / "a")
    assert [k for k, _ in got] == ["000000_0000", "000000_0001", "000001_0000", "000001_0001"]
    for (key, f), d in zip(got, decoded):
        clip = np.load(io.BytesIO(f["frames.npy"]))
        info = json.loads(f["json"])
        assert clip.shape == (4, 32, 32, 3) and np.array_equal(d["frames.npy"], clip)
        assert info["frame_indices"] == [7 * int(key[-1]) + 2 * k for k in range(4)]
        assert len(info["boxes"]) == 4 and d["txt"] == info["caption"]
        x0, y0, x1, y1 = info["boxes"][0]
        assert clip[0, int((y0 + y1) / 2), int((x0 + x1) / 2)].mean() > 150  # box is on the bright block
    still = [json.loads(f["json"])["motion"] for k, f in got if k.startswith("000000")]
    moving = [json.loads(f["json"])["motion"] for k, f in got if k.startswith("000001")]
    assert max(still) < min(moving)
    # bad inputs
    out = tmp_path / "bad"
    (root / "broken.mp4").write_bytes(b"nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"video": "broken.mp4", "caption": "x"}) + "\n")
    assert_bad(make("video", "--out", str(out), "--videos", str(bad), "--root", str(root)), "broken.mp4", out)
    bad.write_text(json.dumps({"video": "v0.mp4", "caption": "x", "boxes": [[0, 0, 1, 1]]}) + "\n")
    assert_bad(make("video", "--out", str(out), "--videos", str(bad), "--root", str(root)), "bad.jsonl:1", out)
    bad.write_text(json.dumps({"video": "v0.mp4"}) + "\n")
    assert_bad(make("video", "--out", str(out), "--videos", str(bad), "--root", str(root)), "'caption'", out)

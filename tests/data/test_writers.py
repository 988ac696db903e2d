"""The shard writers as Python functions (datamodules/writers, lightning_modules/<method>/shards.py): each returns the
index it wrote, refuses bad input with a one-line UsageError and leaves nothing behind, and launch/make_shards.py
offers exactly these kinds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import UsageError
from datamodules.shards import read_index
from datamodules.synthetic_shapes import CLASS_NAMES
from datamodules.video import MOTION_LEVELS, write_video
from datamodules.writers import classification
from datamodules.writers.captions import write_caption_shards
from datamodules.writers.classification import write_classification_shards
from datamodules.writers.common import ShardOptions, check_out, read_rows, remove_datasets, seeded_subset
from datamodules.writers.retrieval import write_retrieval_shards
from datamodules.writers.synthetic_shapes import write_synthetic_shapes_shards
from datamodules.writers.video import write_video_shards
from datamodules.writers.vqa import write_vqa_shards
from launch import make_shards
from lightning_modules.flexecontrol.shards import write_synthetic_control_shards
from lightning_modules.mojito.shards import write_synthetic_motion_shards


def assert_refused(call, message: str, out: Path) -> None:
    """`call()` raises a one-line UsageError containing `message`, and `out` holds no dataset, shard or temp file."""
    with pytest.raises(UsageError) as caught:
        call()
    assert len(caught.value.lines) == 1 and "\n" not in caught.value.lines[0], caught.value.lines
    assert message in caught.value.lines[0], caught.value.lines[0]
    if out.exists():
        assert not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


def write_images(root: Path, names: list[str], size: tuple[int, int] = (6, 5)) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (i * 30 % 256, 90, 200)).save(root / name)


# ----------------------------------------------------------------------------------------------------- options
def test_options_are_checked_and_the_size_parsed():
    assert ShardOptions(shard_size="64MB").shard_size == 64_000_000
    assert ShardOptions().shard_size == 256_000_000
    for kwargs, message in (({"shard_size": "12XB"}, "--shard-size: not a size"),
                            ({"max_samples_per_shard": 0}, "--max-samples-per-shard: must be positive, got 0"),
                            ({"num_workers": 0}, "--num-workers: must be positive, got 0")):
        with pytest.raises(UsageError, match=message):
            ShardOptions(**kwargs)


def test_make_shards_offers_the_generic_and_the_method_kinds():
    assert list(make_shards.KINDS) == ["synthetic-shapes", "classification", "captions", "retrieval", "vqa", "video",
                                       "synthetic-control", "control-images", "multigen", "synthetic-motion",
                                       "winoground", "svo-probes", "comvg", "synthetic-compositional"]


# ------------------------------------------------------------------------------------------------ synthetic kinds
def test_synthetic_shapes_returns_its_index_and_records_the_command(tmp_path):
    options = ShardOptions(seed=3, max_samples_per_shard=4, command=("my-script", "--flag"))
    index = write_synthetic_shapes_shards(tmp_path / "s", num=10, size=16, spurious=0.5, options=options)
    assert index == read_index(tmp_path / "s", verify=True)
    assert [s["samples"] for s in index["shards"]] == [4, 4, 2] and index["seed"] == 3
    assert index["command"] == ["my-script", "--flag"] and index["metadata"]["class_names"] == CLASS_NAMES
    assert index["metadata"]["spurious"]["probability"] == 0.5
    # without a command, the one of this process
    assert write_synthetic_shapes_shards(tmp_path / "d", num=1, size=8)["command"] == sys.argv


def test_synthetic_kinds_refuse_bad_arguments(tmp_path):
    out = tmp_path / "out"
    assert_refused(lambda: write_synthetic_shapes_shards(out, num=0), "--num: must be positive, got 0", out)
    assert_refused(lambda: write_synthetic_shapes_shards(out, num=2, size=7), "--size: must be at least 8", out)
    assert_refused(lambda: write_synthetic_shapes_shards(out, num=2, spurious=1.5), "--spurious: must be in [0, 1]",
                   out)
    assert_refused(lambda: write_synthetic_control_shards(out, num=2, spurious=-0.1), "--spurious", out)
    assert_refused(lambda: write_synthetic_motion_shards(out, num=2, frames=1), "--frames: must be at least 2", out)
    assert_refused(lambda: write_synthetic_motion_shards(out, num=2, size=15), "--size: must be at least 16", out)
    assert not out.exists()


def test_output_that_is_a_file_or_holds_a_dataset_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert_refused(lambda: write_synthetic_shapes_shards(file, num=1, size=8), "exists and is not a directory",
                   tmp_path / "nothing")
    done = tmp_path / "done"
    write_synthetic_shapes_shards(done, num=1, size=8)
    before = sorted(p.name for p in done.iterdir())
    with pytest.raises(UsageError, match="already holds a dataset"):
        write_synthetic_control_shards(done, num=1, size=8)
    assert sorted(p.name for p in done.iterdir()) == before
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x-000000.tar").write_bytes(b"")
    with pytest.raises(UsageError, match="already holds shards"):
        check_out(stray)


def test_method_kinds_return_their_index(tmp_path):
    control = write_synthetic_control_shards(tmp_path / "c", num=3, size=16)
    assert control["keys"] == ["canny.png", "cls", "depth.png", "json", "png", "seg.png"]
    assert control["metadata"]["kind"] == "synthetic-control" and "seg.png" in control["metadata"]["conditions"]
    motion = write_synthetic_motion_shards(tmp_path / "m", num=5, size=16, frames=3)
    assert motion == read_index(tmp_path / "m") and motion["total_samples"] == 5
    qs = motion["metadata"]["motion_quantiles"]
    assert len(qs) == MOTION_LEVELS - 1 == motion["metadata"]["motion_levels"] - 1 and qs == sorted(qs)


# ------------------------------------------------------------------------------------------------ classification
@pytest.fixture
def split_json(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(("ant", "bee", "cow", "dog")):
        files = [f"{name}/{i}.png" for i in range(4)]
        write_images(root, files)
        for i, rel in enumerate(files):
            split["train" if i < 2 else "val" if i == 2 else "test"].append([rel, label, name])
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    return path, root


def test_classification_returns_an_index_per_split(tmp_path, split_json):
    path, root = split_json
    indexes = write_classification_shards(tmp_path / "o", split_json=path, root=root, subset="new", shots=1,
                                          options=ShardOptions(seed=2))
    assert set(indexes) == {"train", "val", "test"}
    for split, index in indexes.items():
        assert index == read_index(tmp_path / "o" / split)
        assert index["metadata"]["class_names"] == ["cow", "dog"] and index["metadata"]["split"] == split
    assert indexes["train"]["total_samples"] == 2 and indexes["test"]["total_samples"] == 2
    folder = write_classification_shards(tmp_path / "f", images=root)
    assert list(folder) == ["train"] and folder["train"]["total_samples"] == 16


def test_classification_refuses_bad_arguments(tmp_path, split_json):
    path, root = split_json
    out = tmp_path / "out"
    assert_refused(lambda: write_classification_shards(out), "give exactly one of --images DIR or --split-json", out)
    assert_refused(lambda: write_classification_shards(out, images=root, split_json=path), "exactly one", out)
    assert_refused(lambda: write_classification_shards(out, split_json=path), "--root: required with --split-json",
                   out)
    assert_refused(lambda: write_classification_shards(out, split_json=path, root=root, subset="odd"),
                   "--subset: must be one of all, base, new, got 'odd'", out)
    assert_refused(lambda: write_classification_shards(out, split_json=path, root=root, shots=3),
                   "--shots 3: class 'ant' (label 0) has only 2 training images", out)


def test_classification_failing_in_a_later_split_removes_the_finished_ones(tmp_path, split_json, monkeypatch):
    path, root = split_json
    real = classification.write_shards
    calls = []

    def fail_on_the_second_split(out, *args, **kwargs):
        calls.append(out.name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(out, *args, **kwargs)

    monkeypatch.setattr(classification, "write_shards", fail_on_the_second_split)
    with pytest.raises(RuntimeError, match="disk full"):
        write_classification_shards(tmp_path / "o", split_json=path, root=root)
    assert calls == ["train", "val"]
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file()]


def test_remove_datasets_removes_index_then_shards(tmp_path):
    write_synthetic_shapes_shards(tmp_path / "a", num=3, size=8, options=ShardOptions(max_samples_per_shard=1))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index.json").write_text("{damaged")
    (tmp_path / "a" / "keep.txt").write_text("not ours")
    remove_datasets([tmp_path / "a", tmp_path / "b", tmp_path / "missing"])
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["keep.txt"] and not list((tmp_path / "b").iterdir())


# ------------------------------------------------------------------------------------------------------ captions
def test_captions_with_conditions_and_bad_columns(tmp_path):
    root = tmp_path / "r"
    write_images(root, ["img/0.png", "img/1.png", "depth/0.png", "depth/1.png"], size=(12, 12))
    listing = tmp_path / "caps.jsonl"
    listing.write_text("".join(json.dumps({"image": f"img/{i}.png", "caption": f"c{i}", "depth": f"depth/{i}.png"})
                               + "\n" for i in range(2)))
    index = write_caption_shards(tmp_path / "o", captions=listing, root=root, conditions=["depth"], canny=True)
    assert index["keys"] == ["canny.png", "depth.png", "json", "png", "txt"]
    assert index["metadata"]["conditions"] == ["depth", "canny"] and index["total_samples"] == 2
    out = tmp_path / "bad"
    assert_refused(lambda: write_caption_shards(out, captions=listing, root=root, conditions=["caption"]),
                   "--conditions: column 'caption' clashes with another field", out)
    assert_refused(lambda: write_caption_shards(out, captions=listing, root=root, conditions=["de.pth"]),
                   "--conditions: column name 'de.pth' must be letters, digits, _ or -", out)
    assert_refused(lambda: write_caption_shards(out, captions=listing, root=tmp_path / "nowhere"),
                   "--root", out)


def test_read_rows_edge_cases(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UsageError, match="--videos .*empty.jsonl: no rows"):
        read_rows(empty, ["video"], "--videos")
    other = tmp_path / "rows.txt"
    other.write_text("a")
    with pytest.raises(UsageError, match="expected a .jsonl or .csv file"):
        read_rows(other, ["video"], "--captions")
    short = tmp_path / "short.csv"
    short.write_text("image,caption\na.png\n")
    with pytest.raises(UsageError, match="short.csv:2: row has fewer fields than the header"):
        read_rows(short, ["image", "caption"], "--captions")
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text(json.dumps({"image": 3}) + "\n")
    with pytest.raises(UsageError, match="numbers.jsonl:1: column 'image' must be a string, got 3"):
        read_rows(numbers, ["image"], "--captions")


def test_seeded_subset_is_nested_and_sorted():
    small, large = seeded_subset(20, 5, 1, "x"), seeded_subset(20, 12, 1, "x")
    assert small == sorted(small) and len(set(small)) == 5 and set(small) <= set(large)
    assert seeded_subset(20, 20, 1, "x") == list(range(20)) and seeded_subset(20, 0, 1, "x") == []
    assert seeded_subset(20, 5, 1, "y") != small or seeded_subset(20, 5, 2, "x") != small


# ------------------------------------------------------------------------------------------- retrieval and vqa
@pytest.fixture
def karpathy(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    write_images(root, [f"{i}.png" for i in range(6)])
    images = [{"filename": f"{i}.png", "split": ("train", "test")[i % 2],
               "sentences": [{"raw": f"picture {i}"}, {"raw": f"image {i}"}]} for i in range(6)]
    path = tmp_path / "karpathy.json"
    path.write_text(json.dumps({"dataset": "tiny", "images": images}))
    return path, root


def test_retrieval_returns_its_index_and_refuses_two_subset_sizes(tmp_path, karpathy):
    path, root = karpathy
    index = write_retrieval_shards(tmp_path / "o", karpathy=path, root=root, split="test", max_images=2)
    assert index == read_index(tmp_path / "o") and index["metadata"]["num_images"] == 2
    assert index["metadata"]["captions"][0][0].startswith("picture ")
    out = tmp_path / "bad"
    assert_refused(lambda: write_retrieval_shards(out, karpathy=path, root=root, split="test", fraction=0.5,
                                                  max_images=2), "--fraction, --max-images: give at most one", out)
    assert_refused(lambda: write_retrieval_shards(out, karpathy=path, root=root, split="restval"),
                   "--split: must be one of train, val, test, got 'restval'", out)
    assert_refused(lambda: write_retrieval_shards(out, karpathy=path, root=root, split="val"),
                   "no image in split val", out)


def _vqa_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "vqa"
    write_images(root, [f"val/{i:06d}.png" for i in (1, 2)])
    questions = [{"image_id": i, "question": f"what is {i}?", "question_id": 10 * i} for i in (1, 2)]
    annotations = [{"question_id": 10 * i, "image_id": i, "multiple_choice_answer": ("Two", "a dog")[i - 1],
                    "answers": [{"answer": a} for a in ("2", "two", "dogs")]} for i in (1, 2)]
    qpath, apath = tmp_path / "q.json", tmp_path / "a.json"
    qpath.write_text(json.dumps({"data_subtype": "val", "questions": questions}))
    apath.write_text(json.dumps({"annotations": annotations}))
    return qpath, apath, root


def test_vqa_returns_its_index_and_needs_one_vocabulary(tmp_path):
    qpath, apath, root = _vqa_files(tmp_path)
    common = {"questions": qpath, "annotations": apath, "root": root,
              "image_pattern": "{data_subtype}/{image_id:06d}.png"}
    train = write_vqa_shards(tmp_path / "train", top_answers=5, **common)
    assert train == read_index(tmp_path / "train") and train["metadata"]["answers"] == ["2", "dog"]
    assert train["metadata"]["answer_normalization"] == "datamodules/writers/vqa.py normalize_answer"
    val = write_vqa_shards(tmp_path / "val", answers_from=tmp_path / "train", **common)
    assert val["metadata"]["answers"] == ["2", "dog"] and val["metadata"]["answers_from"] == str(tmp_path / "train")
    out = tmp_path / "bad"
    assert_refused(lambda: write_vqa_shards(out, **common),
                   "vqa: give exactly one of --top-answers N or --answers-from", out)
    assert_refused(lambda: write_vqa_shards(out, top_answers=2, answers_from=tmp_path / "train", **common),
                   "exactly one", out)
    assert_refused(lambda: write_vqa_shards(out, answers_from=tmp_path / "nowhere", **common),
                   "--answers-from", out)


# --------------------------------------------------------------------------------------------------------- video
def test_video_returns_its_index_and_names_what_is_wrong(tmp_path):
    root = tmp_path / "vids"
    clip = np.zeros((7, 16, 16, 3), np.uint8)
    for t in range(7):
        clip[t, 4:10, 2 + t:8 + t] = 220
    write_video(root / "a.mp4", clip, fps=8)
    listing = tmp_path / "videos.jsonl"
    listing.write_text(json.dumps({"video": "a.mp4", "caption": "a block"}) + "\n")
    index = write_video_shards(tmp_path / "o", videos=listing, root=root, frames=3, stride=2, size=16)
    assert index == read_index(tmp_path / "o") and index["total_samples"] == 1  # one window of 5 of 7 frames
    assert len(index["metadata"]["motion_quantiles"]) == MOTION_LEVELS - 1
    out = tmp_path / "bad"
    assert_refused(lambda: write_video_shards(out, videos=tmp_path / "none.jsonl", root=root),
                   "--videos " + str(tmp_path / "none.jsonl") + ": no such file", out)
    assert_refused(lambda: write_video_shards(out, videos=listing, root=root, frames=8),
                   "no video is long enough for one clip of 8 frames", out)
    assert_refused(lambda: write_video_shards(out, videos=listing, root=root, stride=0),
                   "--stride: must be at least 1, got 0", out)
    (root / "broken.mp4").write_bytes(b"not a video")
    listing.write_text(json.dumps({"video": "broken.mp4", "caption": "x"}) + "\n")
    # PyAV's own error type and message, as the video kind reported them before it decoded through datamodules/video
    assert_refused(lambda: write_video_shards(out, videos=listing, root=root),
                   f"{root / 'broken.mp4'}: unreadable video (InvalidDataError: ", out)

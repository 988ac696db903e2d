"""FlexEControl's real-image shard kinds (lightning_modules/flexecontrol/shards.py): control-images (condition maps
extracted while writing: canny, sketch, and depth / seg through real transformers pipelines on tiny random models
built here) and multigen (a tiny tree in MultiGen-20M's released layout)."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datamodules.errors import UsageError
from datamodules.shards import read_index
from datamodules.writers.common import ShardOptions
from launch import make_shards
from lightning_modules.flexecontrol.shards import (MULTIGEN_TASKS, depth_map, sketch_map, write_control_image_shards,
                                                   write_multigen_shards)


# ------------------------------------------------------------------------------------------------------ helpers
def make(*args: str) -> tuple[int, str]:
    """make_shards in-process; returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = make_shards.main(list(args))
    return rc, err.getvalue()


def samples(d: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Every sample of a dataset, in order, as {ext: bytes}."""
    out: list[tuple[str, dict[str, bytes]]] = []
    for shard in read_index(d, verify=True)["shards"]:
        with tarfile.open(d / shard["file"]) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                if not out or out[-1][0] != key:
                    out.append((key, {}))
                out[-1][1][ext] = tf.extractfile(member).read()
    return out


def decoded(raw: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im)


def assert_refused(call, message: str, out: Path) -> None:
    """`call()` raises a one-line UsageError containing `message`, and nothing is written to `out`."""
    with pytest.raises(UsageError) as caught:
        call()
    assert len(caught.value.lines) == 1 and "\n" not in caught.value.lines[0], caught.value.lines
    assert message in caught.value.lines[0], caught.value.lines[0]
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def assert_cli_refused(rc_err: tuple[int, str], message: str, out: Path) -> None:
    rc, err = rc_err
    assert rc == 2 and err.count("\n") == 1 and message in err, (rc, err)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def block_image(h: int, w: int, seed: int) -> np.ndarray:
    """A bright background with a dark rectangle and a mid-gray disc: flat regions and sharp edges."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 225, np.uint8)
    top, left = int(rng.integers(3, h // 3)), int(rng.integers(3, w // 3))
    image[top:top + h // 2, left:left + w // 2] = (30, 40, 50)
    yy, xx = np.mgrid[0:h, 0:w]
    image[(yy - 3 * h // 4) ** 2 + (xx - 3 * w // 4) ** 2 < (min(h, w) // 8) ** 2] = (120, 90, 160)
    return image


# ------------------------------------------------------------------------------------------------ control-images
@pytest.fixture
def rows_file(tmp_path) -> Path:
    """rows.jsonl beside an images/ folder: three PNGs of different sizes, paths relative to the file."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, (h, w) in enumerate(((40, 48), (36, 36), (30, 52))):
        Image.fromarray(block_image(h, w, i)).save(data / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "caption": f"a dark block, number {i}"})
    path = data / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def models(vision_models) -> dict[str, Path]:
    return vision_models


def test_canny_and_sketch_maps_of_the_images_as_they_are(tmp_path, rows_file):
    index = write_control_image_shards(tmp_path / "out", rows_file=rows_file, conditions="canny,sketch",
                                       canny_low=50, canny_high=150)
    assert index["keys"] == ["canny.png", "json", "png", "sketch.png"] and index["total_samples"] == 3
    meta = index["metadata"]
    assert meta["kind"] == "control-images" and list(meta["conditions"]) == ["canny", "sketch"]
    assert meta["image_ext"] == "png" and "cv2.Canny(gray, 50, 150)" in meta["conditions"]["canny"]
    for i, (key, fields) in enumerate(samples(tmp_path / "out")):
        source = rows_file.parent / "images" / f"{i}.png"
        assert key == f"{i:08d}" and fields["png"] == source.read_bytes()
        assert json.loads(fields["json"]) == {"caption": f"a dark block, number {i}", "path": f"images/{i}.png"}
        gray = cv2.cvtColor(np.asarray(Image.open(source)), cv2.COLOR_RGB2GRAY)
        canny, sketch = decoded(fields["canny.png"]), decoded(fields["sketch.png"])
        assert canny.dtype == sketch.dtype == np.uint8 and canny.shape == sketch.shape == gray.shape
        assert np.array_equal(canny, cv2.Canny(gray, 50, 150)) and canny.any()
        # white lines on black: flat regions are 0, the dark side of an edge is a line, most of the map is black
        assert sketch[0, 0] == 0 and sketch.max() > 100 and (sketch == 0).mean() > 0.5
        dark = gray < 100
        inner_edge = dark & ~cv2.erode(dark.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert sketch[inner_edge].min() > 0
        deep_inside = cv2.erode(dark.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert deep_inside.any() and sketch[deep_inside].max() <= 2


def test_sketch_of_a_flat_image_is_black_and_in_range():
    assert not sketch_map(np.full((20, 20), 0, np.uint8)).any()
    assert not sketch_map(np.full((20, 20), 255, np.uint8)).any()
    noisy = sketch_map(np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8))
    assert noisy.dtype == np.uint8 and 0 < noisy.max() <= 255


def test_resize_and_centre_crop_and_a_jpeg_source(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(block_image(40, 60, 7)).save(tmp_path / "images" / "wide.jpg", quality=90)
    rows = tmp_path / "jpeg.csv"
    rows.write_text("image,caption\nimages/wide.jpg,\"a wide one, in JPEG\"\n")
    kept = write_control_image_shards(tmp_path / "kept", rows_file=rows, conditions=["canny"])
    assert kept["metadata"]["image_ext"] == "jpg" and kept["keys"] == ["canny.png", "jpg", "json"]
    [(_, fields)] = samples(tmp_path / "kept")
    assert fields["jpg"] == (tmp_path / "images" / "wide.jpg").read_bytes()
    assert decoded(fields["canny.png"]).shape == (40, 60)
    assert json.loads(fields["json"])["caption"] == "a wide one, in JPEG"

    resized = write_control_image_shards(tmp_path / "resized", rows_file=rows, conditions=["canny", "sketch"], size=32)
    assert resized["metadata"]["image_ext"] == "png" and resized["metadata"]["size"] == 32
    [(_, fields)] = samples(tmp_path / "resized")
    image = decoded(fields["png"])
    assert image.shape == (32, 32, 3)
    assert decoded(fields["sketch.png"]).shape == (32, 32)
    assert np.array_equal(decoded(fields["canny.png"]), cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200))
    # the centre was kept: the source's middle column and the crop's agree, its left edge was cut
    source = np.asarray(Image.open(tmp_path / "images" / "wide.jpg").convert("RGB"))
    middle = cv2.resize(source, (48, 32), interpolation=cv2.INTER_AREA)[:, 8:40]
    assert np.abs(middle.astype(int) - image.astype(int)).mean() < 2


def test_depth_and_seg_through_real_pipelines(tmp_path, rows_file, models):
    from transformers import pipeline

    index = write_control_image_shards(tmp_path / "out", rows_file=rows_file, conditions="depth,seg",
                                       depth_model=models["dpt"], seg_model=models["seg"], model_batch_size=2)
    assert index["keys"] == ["depth.png", "json", "png", "seg.png"] and index["total_samples"] == 3
    meta = index["metadata"]
    assert meta["depth_model"] == str(models["dpt"]) and meta["seg_model"] == str(models["seg"])
    assert "near = bright" in meta["conditions"]["depth"] and "inverted" not in meta["conditions"]["depth"]
    depth_pipe = pipeline("depth-estimation", model=str(models["dpt"]), device="cpu")
    seg_pipe = pipeline("image-segmentation", model=str(models["seg"]), device="cpu")
    for i, (_, fields) in enumerate(samples(tmp_path / "out")):
        image = Image.open(rows_file.parent / "images" / f"{i}.png").convert("RGB")
        depth, seg = decoded(fields["depth.png"]), decoded(fields["seg.png"])
        assert depth.dtype == seg.dtype == np.uint8 and depth.shape == seg.shape == (image.height, image.width)
        # DPT predicts relative inverse depth: stored as it is, normalised to the full 0..255
        predicted = depth_pipe(image)["predicted_depth"].numpy()
        expected = (predicted - predicted.min()) / (predicted.max() - predicted.min()) * 255
        assert np.abs(depth.astype(float) - expected).max() <= 1.0 and depth.min() == 0 and depth.max() == 255
        segments = json.loads(fields["json"])["segments"]
        found = seg_pipe(image)
        assert set(segments.values()) == {s["label"] for s in found} <= {"sky", "tree", "car"}
        assert set(np.unique(seg).tolist()) == {int(k) for k in segments}
        for segment in found:
            [sid] = [int(k) for k, label in segments.items() if label == segment["label"]]
            assert np.array_equal(seg == sid, np.asarray(segment["mask"]) > 0)


def test_metric_depth_is_inverted_so_near_is_bright(tmp_path, rows_file, models):
    from transformers import pipeline

    index = write_control_image_shards(tmp_path / "out", rows_file=rows_file, conditions=["depth"],
                                       depth_model=models["glpn"], size=32)
    assert "metric depth inverted" in index["metadata"]["conditions"]["depth"]
    depth_pipe = pipeline("depth-estimation", model=str(models["glpn"]), device="cpu")
    for _, fields in samples(tmp_path / "out"):
        image = decoded(fields["png"])
        predicted = depth_pipe(Image.fromarray(image))["predicted_depth"].numpy()
        expected = 255 - (predicted - predicted.min()) / (predicted.max() - predicted.min()) * 255
        assert np.abs(decoded(fields["depth.png"]).astype(float) - expected).max() <= 1.0
    assert not depth_map(np.full((4, 4), 3.0), metric=True).any()


def test_model_maps_are_the_same_for_any_number_of_workers(tmp_path, rows_file, models):
    kwargs = dict(rows_file=rows_file, conditions="canny,depth", depth_model=models["dpt"], model_batch_size=2)
    one = write_control_image_shards(tmp_path / "one", **kwargs)
    two = write_control_image_shards(tmp_path / "two", **kwargs, options=ShardOptions(num_workers=2))
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_control_images_refuses_bad_inputs_before_writing(tmp_path, rows_file, models):
    out = tmp_path / "out"

    def write(**kwargs):
        return lambda: write_control_image_shards(out, **{"rows_file": rows_file, "conditions": "canny", **kwargs})

    assert_refused(write(rows_file=tmp_path / "none.jsonl"), "--rows", out)
    assert_refused(write(rows_file=tmp_path / "none.jsonl"), "none.jsonl: no such file", out)
    assert_refused(write(conditions="canny,cany,depht"), "unknown condition type 'cany' (did you mean canny?)", out)
    assert_refused(write(conditions=""), "--conditions: name at least one of canny, sketch, depth, seg", out)
    assert_refused(write(conditions="depth"), "--depth-model: the depth condition needs it", out)
    assert_refused(write(conditions="canny,seg"), "--seg-model: the seg condition needs it", out)
    assert_refused(write(conditions="depth", depth_model=tmp_path / "nowhere"),
                   f"--depth-model {tmp_path / 'nowhere'}: not a local directory", out)
    assert_refused(write(seg_model=models["seg"]), "--seg-model", out)
    assert_refused(write(seg_model=models["seg"]), "given, but --conditions has no seg", out)
    assert_refused(write(conditions="depth", depth_model=models["seg"]),
                   f"--depth-model {models['seg']}: not a usable depth-estimation model", out)
    assert_refused(write(conditions="depth", depth_model=tmp_path),
                   f"--depth-model {tmp_path}: not a usable depth-estimation model", out)
    assert_refused(write(canny_low=200, canny_high=100), "--canny-low/--canny-high", out)
    assert_refused(write(size=0), "--size: must be positive", out)
    assert_refused(write(model_batch_size=0), "--model-batch-size: must be positive", out)
    (rows_file.parent / "images" / "1.png").unlink()
    assert_refused(write(), "1.png: listed in", out)
    (rows_file.parent / "images" / "1.png").write_bytes(b"not a png")
    assert_refused(write(), "1.png: unreadable image", out)


def test_control_images_through_make_shards(tmp_path, rows_file, models, capsys):
    out = tmp_path / "out"
    rc, err = make("control-images", "--rows", str(rows_file), "--conditions", "canny,sketch,depth", "--depth-model",
                   str(models["dpt"]), "--size", "24", "--out", str(out), "--max-samples-per-shard", "2")
    assert rc == 0, err
    index = read_index(out, verify=True)
    assert [s["samples"] for s in index["shards"]] == [2, 1]
    assert index["keys"] == ["canny.png", "depth.png", "json", "png", "sketch.png"]
    assert all(decoded(f["depth.png"]).shape == (24, 24) for _, f in samples(out))
    assert capsys.readouterr().out.startswith(f"wrote {out}: 2 shards, 3 samples")
    bad = tmp_path / "bad"
    assert_cli_refused(make("control-images", "--rows", str(rows_file), "--conditions", "depth", "--out", str(bad)),
                       "--depth-model", bad)
    assert_cli_refused(make("control-images", "--rows", str(tmp_path / "no.csv"), "--conditions", "canny", "--out",
                            str(bad)), "no.csv", bad)
    assert_cli_refused(make("control-images", "--rows", str(rows_file), "--out", str(bad)), "--conditions", bad)


def test_make_shards_offers_the_flexecontrol_kinds():
    assert {"synthetic-control", "control-images", "multigen"} <= set(make_shards.KINDS)
    assert "control-images" in make_shards.__doc__ and "multigen" in make_shards.__doc__


# ------------------------------------------------------------------------------------------------------ multigen
def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def multigen(tmp_path) -> Path:
    """MultiGen-20M's released layout in small: json_files/ (one task file per task, JSON lines), images/ and
    conditions/group_<n>_<task>/. Four images with prompts; seg listed by both seg and segbase for image 2 (two
    different maps); image 3's canny file is missing; image 1's depth row has no prompt (its other rows do); image 4
    is listed only by a depth row without a prompt; hedsketch maps are black lines on white, as released; depth
    maps are at half the image's size."""
    root = tmp_path / "MultiGen-20M"
    for folder in ("json_files", "images/aesthetics_6_plus_0", "conditions"):
        (root / folder).mkdir(parents=True)
    rows: dict[str, list[dict]] = {task: [] for task in ("canny", "depth", "hedsketch", "segbase", "seg", "openpose")}
    rng = np.random.default_rng(3)
    for i in range(4):
        source = f"aesthetics_6_plus_0/{i:09d}.jpg"
        image = block_image(40, 56, i)
        Image.fromarray(image).save(root / "images" / source, quality=92)
        prompt = f"photo number {i}, a block"

        def condition(task: str, array: np.ndarray, group: int = 0, name: str = f"{i:09d}.png") -> str:
            rel = f"group_{group}_{task}/{name}"
            (root / "conditions" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / "conditions" / rel)
            return rel

        canny = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200)
        rows["canny"].append({"source": ("./" if i % 2 else "") + source, "control_canny": condition("canny", canny),
                              "prompt": prompt})
        depth = rng.integers(0, 256, (20, 28), dtype=np.uint8)
        rows["depth"].append({"source": source, "control_depth": condition("depth", np.stack([depth] * 3, -1)),
                              "prompt": prompt if i != 1 else None})
        if i < 3:
            sketch = np.full((40, 56), 255, np.uint8)
            sketch[10:30, 20] = 0
            rows["hedsketch"].append({"source": source, "control_hedsketch": condition("hedsketch", sketch),
                                      "prompt": prompt})
        seg = rng.integers(0, 4, (40, 56)).astype(np.uint8)[..., None] * np.array([[[60, 20, 200]]], np.uint8)
        rows["segbase"].append({"source": source, "control_seg": condition("segbase", seg), "prompt": prompt})
        if i == 2:
            rows["seg"].append({"source": source, "control_seg": condition("seg", 255 - seg, group=1),
                                "prompt": prompt})
        if i == 0:
            pose = np.zeros((40, 56, 3), np.uint8)
            pose[5:35, 28] = (255, 0, 85)
            rows["openpose"].append({"source": source, "control_openpose": condition("openpose", pose),
                                     "prompt": prompt})
    (root / "conditions" / rows["canny"][3]["control_canny"]).unlink()
    Image.fromarray(block_image(40, 56, 4)).save(root / "images" / "aesthetics_6_plus_0" / "000000004.jpg")
    Image.fromarray(np.zeros((20, 28), np.uint8)).save(root / "conditions" / "group_0_depth" / "000000004.png")
    rows["depth"].append({"source": "aesthetics_6_plus_0/000000004.jpg",
                          "control_depth": "group_0_depth/000000004.png", "prompt": None})
    for task, task_rows in rows.items():
        write_lines(root / "json_files" / f"aesthetics_plus_all_group_{task}_all.json", task_rows)
    return root


def test_multigen_one_sample_per_image_with_all_its_conditions(tmp_path, multigen):
    index = write_multigen_shards(tmp_path / "out", root=multigen)
    meta = index["metadata"]
    assert meta["kind"] == "multigen" and index["total_samples"] == 4
    assert list(meta["tasks"]) == ["canny", "hedsketch", "depth", "seg", "segbase", "openpose"]  # MULTIGEN_TASKS order
    assert meta["tasks"]["hedsketch"] == "sketch" and meta["tasks"]["segbase"] == meta["tasks"]["seg"] == "seg"
    assert set(meta["conditions"]) == {"canny", "depth", "sketch", "seg", "openpose"}
    assert meta["missing"] == {"images": 0, "conditions": {"canny": 1}, "samples_without_conditions": 0,
                               "images_without_prompt": 1}
    got = samples(tmp_path / "out")
    keys = [sorted(fields) for _, fields in got]
    assert keys[0] == ["canny.png", "depth.png", "jpg", "json", "openpose.png", "seg.png", "sketch.png"]
    assert keys[1] == ["canny.png", "depth.png", "jpg", "json", "seg.png", "sketch.png"]
    assert keys[2] == ["canny.png", "depth.png", "jpg", "json", "seg.1.png", "seg.2.png", "sketch.png"]
    assert keys[3] == ["depth.png", "jpg", "json", "seg.png"]  # its canny file is missing, it has no sketch
    for i, (key, fields) in enumerate(got):
        source = f"aesthetics_6_plus_0/{i:09d}.jpg"
        info = json.loads(fields["json"])
        assert key == f"{i:08d}" and info["caption"] == f"photo number {i}, a block" and info["source"] == source
        assert fields["jpg"] == (multigen / "images" / source).read_bytes()
        for field, rel in info["conditions"].items():
            assert field in fields and (multigen / "conditions" / rel).is_file()
        depth = decoded(fields["depth.png"])
        assert depth.shape == (40, 56) and depth.dtype == np.uint8  # released at half size, stored at the image's
        for field in [f for f in fields if f.startswith("seg")] + (["openpose.png"] if i == 0 else []):
            assert decoded(fields[field]).shape == (40, 56, 3)
        if "canny.png" in fields:
            released = np.asarray(Image.open(multigen / "conditions" / info["conditions"]["canny.png"]))
            assert np.array_equal(decoded(fields["canny.png"]), released)
        if "sketch.png" in fields:
            sketch = decoded(fields["sketch.png"])
            assert sketch.shape == (40, 56) and sketch[10:30, 20].min() == 255 and sketch[:, :19].max() == 0
    assert not np.array_equal(decoded(got[2][1]["seg.1.png"]), decoded(got[2][1]["seg.2.png"]))


def test_multigen_tasks_limit_and_size(tmp_path, multigen):
    index = write_multigen_shards(tmp_path / "canny", root=multigen, tasks="canny", limit=2, size=32)
    assert index["total_samples"] == 2 and index["keys"] == ["canny.png", "json", "png"]
    assert list(index["metadata"]["conditions"]) == ["canny"]
    for _, fields in samples(tmp_path / "canny"):
        assert decoded(fields["png"]).shape == (32, 32, 3) and decoded(fields["canny.png"]).shape == (32, 32)
    # every image, only the ones with a file of the tasks asked for: image 3 lacks canny and has no hedsketch row
    index = write_multigen_shards(tmp_path / "two", root=multigen, tasks=["canny", "hedsketch"])
    assert index["total_samples"] == 3 and index["metadata"]["missing"]["conditions"] == {"canny": 1}
    assert index["metadata"]["missing"]["samples_without_conditions"] == 1


def test_multigen_refuses_what_is_not_its_layout(tmp_path, multigen):
    out = tmp_path / "out"
    images_only = tmp_path / "photos"
    (images_only / "images").mkdir(parents=True)
    assert_refused(lambda: write_multigen_shards(out, root=images_only), "not MultiGen-20M's layout (no json_files/",
                   out)
    assert_refused(lambda: write_multigen_shards(out, root=images_only),
                   "expected json_files/aesthetics_plus_all_group_<task>_all.json, images/ and conditions/", out)
    assert_refused(lambda: write_multigen_shards(out, root=tmp_path / "nowhere"), "no such directory", out)
    empty = tmp_path / "empty"
    for folder in ("json_files", "images", "conditions"):
        (empty / folder).mkdir(parents=True)
    assert_refused(lambda: write_multigen_shards(out, root=empty), "json_files/ has no task file", out)
    assert_refused(lambda: write_multigen_shards(out, root=multigen, tasks="cany"),
                   "unknown MultiGen-20M task 'cany' (did you mean canny?)", out)
    assert_refused(lambda: write_multigen_shards(out, root=multigen, tasks="hed"),
                   "aesthetics_plus_all_group_hed_all.json is missing", out)
    assert_refused(lambda: write_multigen_shards(out, root=multigen, limit=0), "--limit: must be positive", out)
    bad_line = multigen / "json_files" / "aesthetics_plus_all_group_openpose_all.json"
    bad_line.write_text(bad_line.read_text() + '{"source": "x.jpg", "prompt": "p"}\n')
    assert_refused(lambda: write_multigen_shards(out, root=multigen, tasks="openpose"),
                   "aesthetics_plus_all_group_openpose_all.json:2: 'control_openpose' must be a file path", out)
    bad_line.write_text("not json\n")
    assert_refused(lambda: write_multigen_shards(out, root=multigen, tasks="openpose"), "openpose_all.json:1: not "
                   "valid JSON", out)
    for rel in (multigen / "conditions").rglob("group_*_canny/*.png"):
        rel.unlink()
    assert_refused(lambda: write_multigen_shards(out, root=multigen, tasks="canny"),
                   "none of the 4 condition files the task files list is under conditions/", out)
    for image in (multigen / "images").rglob("*.jpg"):
        image.unlink()
    # depth alone: images 1 and 4 have no prompt, three images are left
    assert_refused(lambda: write_multigen_shards(out, root=multigen, tasks="depth"),
                   "none of the 3 images the task files list is under images/", out)


def test_multigen_through_make_shards_reports_missing_files_in_one_line(tmp_path, multigen, capsys):
    out = tmp_path / "out"
    rc, err = make("multigen", "--root", str(multigen), "--out", str(out), "--tasks", "canny,depth")
    assert rc == 0 and err == ("multigen: 1 listed condition files missing (canny 1), 0 images missing, 0 samples "
                               "without any condition file skipped, 1 images without a prompt skipped\n"), err
    assert capsys.readouterr().out.startswith(f"wrote {out}: 1 shard, 4 samples")
    assert read_index(out)["metadata"]["tasks"] == {"canny": "canny", "depth": "depth"}
    rc, err = make("multigen", "--root", str(multigen), "--out", str(tmp_path / "quiet"), "--tasks", "openpose")
    assert (rc, err) == (0, "")
    bad = tmp_path / "bad"
    assert_cli_refused(make("multigen", "--root", str(tmp_path), "--out", str(bad)), "not MultiGen-20M's layout", bad)
    assert_cli_refused(make("multigen", "--root", str(multigen), "--out", str(bad), "--tasks", "pose"),
                       "unknown MultiGen-20M task 'pose'", bad)


def test_every_multigen_task_has_a_type_and_a_control_key():
    assert MULTIGEN_TASKS["segbase"].key == "control_seg" and MULTIGEN_TASKS["hedsketch"].type == "sketch"
    assert all(spec.key.startswith("control_") for spec in MULTIGEN_TASKS.values())

"""The retrieval (Karpathy split JSON) and vqa (VQAv2) shard kinds through launch/make_shards.py, and the synthetic CPL
task writers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules.shards import read_index
from datamodules.synthetic_shapes import COLORS, SHAPES
from datamodules.writers.vqa import normalize_answer
from tests.data.test_shards import all_samples as samples
from tests.data.test_shards import assert_bad, make

# --------------------------------------------------------------------------------------------------- retrieval
# (split, filepath or None): 12 train images, 2 restval between them, 2 val, 2 test
LAYOUT = ([("train", "train2014")] * 5 + [("restval", "val2014")] + [("train", None)] * 7 + [("restval", None)]
          + [("val", "val2014")] * 2 + [("test", None)] * 2)


@pytest.fixture
def karpathy(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    images = []
    for i, (split, filepath) in enumerate(LAYOUT):
        folder = root / filepath if filepath else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (7, 5), (i * 10, 255 - i * 10, 3)).save(folder / f"img{i:02d}.png")
        entry = {"filename": f"img{i:02d}.png", "split": split, "imgid": i, "cocoid": 100 + i,
                 "sentences": [{"raw": f"  Image {i} caption {j}. ", "tokens": ["image", str(i)]}
                               for j in range(3 + i % 3)]}
        if filepath:
            entry["filepath"] = filepath
        images.append(entry)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path, root


def _retrieval(path: Path, root: Path, out: Path, *extra: str) -> tuple[int, str]:
    return make("retrieval", "--karpathy", str(path), "--root", str(root), "--out", str(out), *extra)


def _file_positions(d: Path) -> list[int]:
    """Position in LAYOUT of each sample's image (from its filename)."""
    return [int(json.loads(f["json"])["filename"].split("img")[1][:2]) for _, f in samples(d)]


def test_retrieval_round_trip(tmp_path, karpathy):
    path, root = karpathy
    out = tmp_path / "test"
    assert _retrieval(path, root, out, "--split", "test") == (0, "")
    assert _retrieval(path, root, tmp_path / "val", "--split", "val", "--max-samples-per-shard", "1") == (0, "")
    index = read_index(out, verify=True)
    assert index["keys"] == ["cls", "json", "png"] and index["total_samples"] == 2
    assert index["command"][:2] == ["launch/make_shards.py", "retrieval"] and "--karpathy" in index["command"]
    meta = index["metadata"]
    expected_captions = [[f"Image {i} caption {j}." for j in range(3 + i % 3)] for i in (16, 17)]
    assert meta == {"kind": "retrieval", "split": "test", "dataset": "coco", "source": str(path),
                    "captions": expected_captions, "num_images": 2, "num_captions": 4 + 5, "fraction": None,
                    "max_images": None, "restval_as_train": False, "image_ext": "png"}
    got = samples(out)
    for i, (key, f) in enumerate(got):
        info = json.loads(f["json"])
        assert key == f"{i:08d}" and int(f["cls"]) == info["image_index"] == i
        assert info["captions"] == meta["captions"][info["image_index"]]
        assert info["filename"] == f"img{16 + i}.png" and f["png"] == (root / info["filename"]).read_bytes()
    # filepath/filename, two shards: captions still aligned with image_index across shards
    val = read_index(tmp_path / "val")
    assert len(val["shards"]) == 2
    for i, (_, f) in enumerate(samples(tmp_path / "val")):
        info = json.loads(f["json"])
        assert info["filename"] == f"val2014/img{14 + i}.png" and info["image_index"] == i
        assert info["captions"] == val["metadata"]["captions"][i] == [f"Image {14 + i} caption {j}."
                                                                      for j in range(3 + (14 + i) % 3)]
        assert f["png"] == (root / info["filename"]).read_bytes()


def test_retrieval_restval_and_mixed_formats(tmp_path, karpathy):
    path, root = karpathy
    assert _retrieval(path, root, tmp_path / "t", "--split", "train") == (0, "")
    assert _file_positions(tmp_path / "t") == [i for i, (s, _) in enumerate(LAYOUT) if s == "train"]
    assert _retrieval(path, root, tmp_path / "tr", "--split", "train", "--restval-as-train") == (0, "")
    assert _file_positions(tmp_path / "tr") == list(range(14))  # file order, restval in place
    assert read_index(tmp_path / "tr")["metadata"]["restval_as_train"] is True
    # one JPEG among PNGs: everything is stored as png, the JPEG re-encoded
    Image.new("RGB", (7, 5), (1, 2, 3)).save(root / "img17.png", format="JPEG")
    assert _retrieval(path, root, tmp_path / "m", "--split", "test") == (0, "")
    assert read_index(tmp_path / "m")["metadata"]["image_ext"] == "png"
    last = samples(tmp_path / "m")[-1][1]["png"]
    assert last.startswith(b"\x89PNG") and Image.open(io.BytesIO(last)).size == (7, 5)


def test_retrieval_selection_seeded(tmp_path, karpathy):
    path, root = karpathy
    args = ("--split", "train", "--restval-as-train", "--fraction", "0.5")
    assert _retrieval(path, root, tmp_path / "a", *args, "--seed", "3") == (0, "")
    assert _retrieval(path, root, tmp_path / "b", *args, "--seed", "3", "--num-workers", "2") == (0, "")
    for s in read_index(tmp_path / "a")["shards"]:
        assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()
    picked = _file_positions(tmp_path / "a")
    assert len(picked) == 7 and picked == sorted(picked) and set(picked) <= set(range(14))
    meta = read_index(tmp_path / "a")["metadata"]
    assert meta["fraction"] == 0.5 and meta["num_images"] == 7
    assert [c[0] for c in meta["captions"]] == [f"Image {i} caption 0." for i in picked]
    picks = {tuple(picked)}
    for seed in range(4):
        o = tmp_path / f"s{seed}"
        assert _retrieval(path, root, o, *args, "--seed", str(seed)) == (0, "")
        picks.add(tuple(_file_positions(o)))
    assert len(picks) > 1
    # --max-images: the same seeded order, so a smaller subset lies inside a larger one
    assert _retrieval(path, root, tmp_path / "m3", "--split", "train", "--max-images", "3", "--seed", "3") == (0, "")
    assert _retrieval(path, root, tmp_path / "m6", "--split", "train", "--max-images", "6", "--seed", "3") == (0, "")
    small, large = _file_positions(tmp_path / "m3"), _file_positions(tmp_path / "m6")
    assert len(small) == 3 and len(large) == 6 and set(small) <= set(large) and large == sorted(large)
    assert read_index(tmp_path / "m3")["metadata"]["max_images"] == 3
    assert _retrieval(path, root, tmp_path / "all", "--split", "test", "--max-images", "99") == (0, "")
    assert _file_positions(tmp_path / "all") == [16, 17]


def test_retrieval_bad_inputs(tmp_path, karpathy):
    path, root = karpathy
    out = tmp_path / "out"
    assert_bad(_retrieval(tmp_path / "nope.json", root, out, "--split", "test"), "--karpathy", out)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_bad(_retrieval(bad, root, out, "--split", "test"), "not valid JSON", out)
    bad.write_text(json.dumps({"dataset": "coco"}))
    assert_bad(_retrieval(bad, root, out, "--split", "test"), "\"images\" list", out)
    data = json.loads(path.read_text())
    data["images"][16]["sentences"] = []
    bad.write_text(json.dumps(data))
    assert_bad(_retrieval(bad, root, out, "--split", "test"), "images[16] (img16.png): no sentences", out)
    assert _retrieval(bad, root, tmp_path / "v", "--split", "val") == (0, "")  # only the selected images matter
    data = json.loads(path.read_text())
    data["images"][3]["split"] = "holdout"
    bad.write_text(json.dumps(data))
    assert_bad(_retrieval(bad, root, out, "--split", "test"), "images[3]: unknown split 'holdout'", out)
    data = json.loads(path.read_text())
    data["images"] = [e for e in data["images"] if e["split"] != "test"]
    bad.write_text(json.dumps(data))
    assert_bad(_retrieval(bad, root, out, "--split", "test"), "no image in split test", out)
    assert_bad(_retrieval(path, root, out, "--split", "holdout"), "--split", out)
    assert_bad(_retrieval(path, root, out, "--split", "test", "--fraction", "0"), "--fraction", out)
    assert_bad(_retrieval(path, root, out, "--split", "test", "--max-images", "0"), "--max-images", out)
    assert_bad(_retrieval(path, root, out, "--split", "test", "--fraction", "0.5", "--max-images", "2"),
               "not allowed with", out)
    assert_bad(_retrieval(path, root, out, "--split", "test", "--restval-as-train"), "--restval-as-train", out)
    (root / "train2014" / "img03.png").unlink()
    assert_bad(_retrieval(path, root, out, "--split", "train"), "img03.png: image 3 of", out)
    (root / "img17.png").write_bytes(b"not an image")  # the last image: nothing may be written before it is checked
    assert_bad(_retrieval(path, root, out, "--split", "test"), "img17.png: unreadable image", out)


# --------------------------------------------------------------------------------------------------------- vqa
@pytest.mark.parametrize("text, expected", [
    ("yes", "yes"), ("Yes!", "yes"), ("  NO.  ", "no"), ("Two", "2"), ("two dogs", "2 dogs"), ("ten", "10"),
    ("zero", "0"), ("2.5", "2.5"), ("2.", "2"), ("1,000", "1000"), ("1, 2", "1 2"), ("10:30", "10:30"),
    ("a dog", "dog"), ("The Dog", "dog"), ("an apple", "apple"), ("the   red    one", "red 1"), ("T-shirt", "t shirt"),
    ("don't", "dont"), ("man's", "mans"), ("U.S.A.", "usa"), ("red, white and blue", "red white and blue"),
    ("the", ""), ("theater", "theater"), ("anyone", "anyone"), ("(left)", "left"), ("fifteen", "fifteen"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# question_id -> (image_id, question, multiple_choice_answer, the 10 annotators' answers)
VQA = {
    11: (1, "How many dogs?", "Two", ["2", "two", "Two.", "3", "three", "2", "2", "2", "two", "4"]),
    12: (1, "Is it sunny?", "yes", ["yes"] * 8 + ["no", "Yes!"]),
    21: (2, "What animal is this?", "a dog", ["dog", "the dog", "Dog", "dogs", "cat", "a cat", "dog", "dog", "puppy",
                                              "dog"]),
    22: (2, "Is it raining?", "no", ["no"] * 10),
    31: (3, "What color is the car?", "Red", ["red"] * 5 + ["orange"] * 5),
    32: (3, "How many cats?", "2", ["2"] * 9),  # 9 annotators
}
# normalised multiple_choice_answer counts: 2 x2, then dog, no, red, yes once each (ties: alphabetical)
VOCAB5 = ["2", "dog", "no", "red", "yes"]
COUNTS5 = {11: {"0": 7}, 12: {"4": 9, "2": 1}, 21: {"1": 6}, 22: {"2": 10}, 31: {"3": 5}, 32: {"0": 9}}


def _write_vqa_files(tmp_path: Path, vqa: dict, subtype: str | None = "val2014") -> tuple[Path, Path, Path]:
    root = tmp_path / "coco"
    root.mkdir(exist_ok=True)
    for image_id in sorted({v[0] for v in vqa.values()}):
        Image.new("RGB", (8, 6), (image_id * 60, 20, 200)).save(root / f"COCO_val2014_{image_id:012d}.jpg")
    questions = {"questions": [{"image_id": v[0], "question": v[1], "question_id": q} for q, v in vqa.items()]}
    if subtype is not None:
        questions["data_subtype"] = subtype
    annotations = {"annotations": [
        {"question_id": q, "image_id": v[0], "multiple_choice_answer": v[2], "answer_type": "other",
         "question_type": "what", "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                                              for n, a in enumerate(v[3])]}
        for q, v in reversed(list(vqa.items()))]}  # annotations need not be in question order
    qpath, apath = tmp_path / "questions.json", tmp_path / "annotations.json"
    qpath.write_text(json.dumps(questions))
    apath.write_text(json.dumps(annotations))
    return qpath, apath, root


@pytest.fixture
def vqa_files(tmp_path) -> tuple[Path, Path, Path]:
    return _write_vqa_files(tmp_path, VQA)


def _vqa(files: tuple[Path, Path, Path], out: Path, *extra: str) -> tuple[int, str]:
    qpath, apath, root = files
    return make("vqa", "--questions", str(qpath), "--annotations", str(apath), "--root", str(root),
                "--out", str(out), *extra)


def test_vqa_top_answers_round_trip(tmp_path, vqa_files):
    qpath, apath, root = vqa_files
    out = tmp_path / "train"
    assert _vqa(vqa_files, out, "--top-answers", "5") == (0, "")
    index = read_index(out, verify=True)
    assert index["keys"] == ["cls", "jpg", "json"] and index["command"][:2] == ["launch/make_shards.py", "vqa"]
    meta = index["metadata"]
    assert meta["kind"] == "vqa" and meta["split"] == "val2014" and meta["answers"] == VOCAB5
    assert meta["num_questions"] == 6 and meta["image_ext"] == "jpg"
    assert meta["source"] == {"questions": str(qpath), "annotations": str(apath)}
    assert meta["questions"] == [[v[1], VOCAB5.index(normalize_answer(v[2]))] for v in VQA.values()]
    got = samples(out)
    assert len(got) == 6
    for i, ((key, f), (qid, (image_id, question, mca, answers))) in enumerate(zip(got, VQA.items())):
        info = json.loads(f["json"])
        assert key == f"{i:08d}"
        assert (info["question"], info["question_id"], info["image_id"]) == (question, qid, image_id)
        assert int(f["cls"]) == VOCAB5.index(normalize_answer(mca)) == meta["questions"][i][1]
        assert meta["questions"][i][0] == question
        assert info["answer_counts"] == COUNTS5[qid], qid
        assert info["num_annotators"] == len(answers)
        assert f["jpg"] == (root / f"COCO_val2014_{image_id:012d}.jpg").read_bytes()
    # a smaller vocabulary drops the training questions it cannot answer
    assert _vqa(vqa_files, tmp_path / "t3", "--top-answers", "3") == (0, "")
    meta3 = read_index(tmp_path / "t3")["metadata"]
    assert meta3["answers"] == ["2", "dog", "no"]
    assert meta3["questions"] == [["How many dogs?", 0], ["What animal is this?", 1], ["Is it raining?", 2],
                                  ["How many cats?", 0]]
    assert [json.loads(f["json"])["answer_counts"] for _, f in samples(tmp_path / "t3")] == [
        {"0": 7}, {"1": 6}, {"2": 10}, {"0": 9}]


def test_vqa_answers_from_and_max_questions(tmp_path, vqa_files):
    assert _vqa(vqa_files, tmp_path / "train", "--top-answers", "3") == (0, "")
    out = tmp_path / "val"
    assert _vqa(vqa_files, out, "--answers-from", str(tmp_path / "train")) == (0, "")
    meta = read_index(out)["metadata"]
    assert meta["answers"] == ["2", "dog", "no"] and meta["num_questions"] == 6  # every question kept
    assert [cls for _, cls in meta["questions"]] == [0, -1, 1, 2, -1, 0]
    got = samples(out)
    assert [int(f["cls"]) for _, f in got] == [0, -1, 1, 2, -1, 0]
    counts = [json.loads(f["json"])["answer_counts"] for _, f in got]
    assert counts == [{"0": 7}, {"2": 1}, {"1": 6}, {"2": 10}, {}, {"0": 9}]  # only vocabulary answers counted
    # --max-questions: seeded, reproducible, file order
    runs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6"), ("d", "7"), ("e", "8")):
        assert _vqa(vqa_files, tmp_path / name, "--answers-from", str(tmp_path / "train"), "--max-questions", "3",
                    "--seed", seed) == (0, "")
        runs.append([json.loads(f["json"])["question_id"] for _, f in samples(tmp_path / name)])
    assert runs[0] == runs[1] and len(runs[0]) == 3 and runs[0] == [q for q in VQA if q in runs[0]]
    assert len({tuple(r) for r in runs}) > 1
    assert read_index(tmp_path / "a")["metadata"]["max_questions"] == 3


def test_vqa_bad_inputs(tmp_path, vqa_files):
    qpath, apath, root = vqa_files
    out = tmp_path / "out"
    # --answers-from a dataset that is not vqa
    other = tmp_path / "shapes"
    assert make("synthetic-shapes", "--out", str(other), "--num", "2", "--size", "16") == (0, "")
    assert_bad(_vqa(vqa_files, out, "--answers-from", str(other)), "'synthetic-shapes' dataset, not vqa", out)
    assert_bad(_vqa(vqa_files, out, "--answers-from", str(tmp_path / "nowhere")), "--answers-from", out)
    assert_bad(_vqa(vqa_files, out), "--top-answers", out)  # one of the two is required
    assert_bad(_vqa(vqa_files, out, "--top-answers", "0"), "--top-answers: must be at least 1", out)
    assert_bad(_vqa(vqa_files, out, "--top-answers", "2", "--max-questions", "0"), "--max-questions", out)
    assert_bad(make("vqa", "--questions", str(tmp_path / "q.json"), "--annotations", str(apath), "--root",
                    str(root), "--out", str(out), "--top-answers", "3"), "--questions", out)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": {}}))
    assert_bad(make("vqa", "--questions", str(qpath), "--annotations", str(bad), "--root", str(root),
                    "--out", str(out), "--top-answers", "3"), "\"annotations\" list", out)
    # a question without annotation
    data = json.loads(apath.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["question_id"] != 22]
    bad.write_text(json.dumps(data))
    assert_bad(make("vqa", "--questions", str(qpath), "--annotations", str(bad), "--root", str(root),
                    "--out", str(out), "--top-answers", "3"), "no annotation for question_id 22", out)
    # no data_subtype and no --image-pattern; a pattern makes it work
    no_subtype = tmp_path / "nosub"
    no_subtype.mkdir()
    files = _write_vqa_files(no_subtype, VQA, subtype=None)
    assert_bad(_vqa(files, out, "--top-answers", "3"), "--image-pattern", out)
    assert _vqa(files, tmp_path / "pat", "--top-answers", "3", "--image-pattern",
                "COCO_val2014_{image_id:012d}.jpg") == (0, "")
    assert read_index(tmp_path / "pat")["metadata"]["split"] is None
    # empty selection
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_bad(_vqa(_write_vqa_files(empty, {}), out, "--answers-from", str(tmp_path / "pat")), "no question left",
               out)
    # a missing image, and an unreadable one (the last image): nothing written
    (root / "COCO_val2014_000000000002.jpg").unlink()
    assert_bad(_vqa(vqa_files, out, "--top-answers", "3"), "COCO_val2014_000000000002.jpg", out)
    Image.new("RGB", (8, 6)).save(root / "COCO_val2014_000000000002.jpg")
    (root / "COCO_val2014_000000000003.jpg").write_bytes(b"garbage")
    assert_bad(_vqa(vqa_files, out, "--top-answers", "3"), "COCO_val2014_000000000003.jpg: unreadable image", out)


# ------------------------------------------------------------------------------------------ synthetic writers
def test_synthetic_writers_load(tmp_path):
    from datamodules.shard_dataset import read_sample
    from lightning_modules.cpl.synthetic import write_retrieval, write_vqa

    def loaded(d: str) -> tuple[dict, list[dict]]:
        index = read_index(d, verify=True)
        out = []
        for shard in index["shards"]:
            with open(Path(d) / shard["file"], "rb") as f:
                out += [read_sample(f, offset) for offset in shard["offsets"]]
        return index["metadata"], out

    dirs = write_retrieval(tmp_path / "r", train_images=10, test_images=6, size=24, seed=1)
    for split, n in (("train", 10), ("test", 6)):
        meta, got = loaded(dirs[split])
        assert meta["kind"] == "retrieval" and meta["split"] == split and meta["num_images"] == n == len(got)
        assert meta["num_captions"] == 5 * n
        for i, s in enumerate(got):
            info = json.loads(s["json"])
            assert info["image_index"] == int(s["cls"]) == i and info["captions"] == meta["captions"][i]
            assert Image.open(io.BytesIO(s["png"])).size == (24, 24)
            color, shape = info["captions"][0].split()[1:]
            assert color in COLORS and shape in SHAPES
            assert all(f"{color} {shape}" in c for c in info["captions"])
    again = write_retrieval(tmp_path / "r2", train_images=10, test_images=6, size=24, seed=1)
    assert loaded(again["test"])[0]["captions"] == loaded(dirs["test"])[0]["captions"]

    dirs = write_vqa(tmp_path / "v", train_questions=30, test_questions=14, size=24, seed=1)
    train_meta, train = loaded(dirs["train"])
    test_meta, test = loaded(dirs["test"])
    assert train_meta["kind"] == test_meta["kind"] == "vqa"
    assert len(train) == train_meta["num_questions"] == 30 and len(test) == test_meta["num_questions"] == 14
    assert test_meta["answers"] == train_meta["answers"]
    assert set(train_meta["answers"]) <= {*COLORS, *SHAPES, "yes", "no"}
    disagree = 0
    for meta, got in ((train_meta, train), (test_meta, test)):
        for (question, cls), s in zip(meta["questions"], got):
            info = json.loads(s["json"])
            assert info["question"] == question and int(s["cls"]) == cls and info["num_annotators"] == 10
            assert Image.open(io.BytesIO(s["png"])).size == (24, 24)
            if cls >= 0:
                assert info["answer_counts"][str(cls)] >= 7  # the majority answer
                disagree += info["answer_counts"][str(cls)] < 10
            answer = meta["answers"][cls] if cls >= 0 else None
            if question.startswith("is the shape"):
                assert answer in ("yes", "no", None)
            elif question.startswith("what color"):
                assert answer in (*COLORS, None)
    assert disagree > 0

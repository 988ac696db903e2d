"""ComCLIP's shard kinds through launch/make_shards.py, on fixture files written in the released layouts (Winoground's
examples.jsonl + images/, SVO-Probes' svo_probes.csv + downloaded images, ComVG.csv + Visual Genome images), and the
synthetic compositional generator."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.shards import read_index
from datamodules.synthetic_shapes import COLORS
from lightning_modules.comclip.shards import parse_triplet
from lightning_modules.comclip.synthetic import RELATIONS, draw_pair, pair_spec
from tests.data.test_shards import all_samples, assert_bad, make


def _image(path: Path, shade: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (shade, 255 - shade, 40)).save(path, format=fmt)


def _jsons(d: Path) -> list[dict]:
    return [json.loads(fields["json"]) for _, fields in all_samples(d)]


# -------------------------------------------------------------------------------------------------- winoground
WINOGROUND = [
    {"id": 0, "caption_0": "an old person kisses a young person", "caption_1": "a young person kisses an old person",
     "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "tag": "Noun", "secondary_tag": "", "num_main_preds": 1,
     "collapsed_tag": "Object"},
    {"id": 1, "caption_0": "the taller person hugs the shorter person",
     "caption_1": "the shorter person hugs the taller person", "image_0": "ex_1_img_0", "image_1": "ex_1_img_1",
     "tag": "Adjective-Size", "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Relation"},
    {"id": 2, "caption_0": "there is a mug in some grass", "caption_1": "there is some grass in a mug",
     "image_0": "ex_2_img_0", "image_1": "ex_2_img_1", "tag": "Noun", "secondary_tag": "Symbolic",
     "num_main_preds": 1, "collapsed_tag": "Object"},
]


@pytest.fixture
def winoground(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in WINOGROUND))
    for e in WINOGROUND:
        for j in (0, 1):
            _image(data / "images" / f"{e[f'image_{j}']}.png", 40 * e["id"] + j)
    return data / "examples.jsonl"


def test_winoground_round_trip(tmp_path, winoground):
    out = tmp_path / "out"
    assert make("winoground", "--examples", str(winoground), "--out", str(out)) == (0, "")
    index = read_index(out, verify=True)
    assert index["keys"] == ["image_0.png", "image_1.png", "json"]
    meta = index["metadata"]
    assert (meta["task"], meta["benchmark"], meta["samples"], meta["image_ext"]) == ("winoground", "winoground", 3,
                                                                                     "png")
    assert meta["tags"] == {"tag": {"Noun": 2, "Adjective-Size": 1}, "secondary_tag": {"": 2, "Symbolic": 1},
                            "collapsed_tag": {"Object": 2, "Relation": 1}}
    images = winoground.parent / "images"
    for (key, fields), e in zip(all_samples(out), WINOGROUND):
        info = json.loads(fields["json"])
        assert info == {"id": str(e["id"]), "task": "winoground", "captions": [e["caption_0"], e["caption_1"]],
                        "image_names": [e["image_0"], e["image_1"]], "tag": e["tag"],
                        "secondary_tag": e["secondary_tag"], "collapsed_tag": e["collapsed_tag"], "num_main_preds": 1}
        for j in (0, 1):
            assert fields[f"image_{j}.png"] == (images / f"{e[f'image_{j}']}.png").read_bytes()
    # a JPEG among the PNGs (and --images given): every image stored as PNG, the JPEG re-encoded
    moved = tmp_path / "elsewhere"
    images.rename(moved)
    _image(moved / "ex_2_img_1.jpg", 7, "JPEG")
    (moved / "ex_2_img_1.png").unlink()
    assert make("winoground", "--examples", str(winoground), "--images", str(moved), "--out",
                str(tmp_path / "m")) == (0, "")
    last = all_samples(tmp_path / "m")[-1][1]["image_1.png"]
    assert last.startswith(b"\x89PNG") and Image.open(io.BytesIO(last)).size == (6, 4)


def test_winoground_bad_inputs(tmp_path, winoground):
    out = tmp_path / "out"
    bad = winoground.parent / "bad.jsonl"

    def run(*lines: str, path: Path = bad) -> tuple[int, str]:
        path.write_text("".join(line + "\n" for line in lines))
        return make("winoground", "--examples", str(path), "--out", str(out))

    good = [json.dumps(e) for e in WINOGROUND]
    assert_bad(run(good[0], "{not json", good[2]), "bad.jsonl:2: not valid JSON", out)
    no_caption = dict(WINOGROUND[1])
    del no_caption["caption_1"]
    assert_bad(run(good[0], json.dumps(no_caption)), "bad.jsonl:2: missing column 'caption_1'", out)
    assert_bad(run(good[0], good[0]), "id 0 repeats", out)
    no_id = {k: v for k, v in WINOGROUND[0].items() if k != "id"}
    assert_bad(run(json.dumps(no_id)), "example 1: needs an \"id\"", out)
    assert_bad(make("winoground", "--examples", str(tmp_path / "nope.jsonl"), "--images",
                    str(winoground.parent / "images"), "--out", str(out)), "nope.jsonl: no such file", out)
    assert_bad(make("winoground", "--examples", str(winoground), "--images", str(tmp_path / "noimages"), "--out",
                    str(out)), "--images", out)
    (winoground.parent / "images" / "ex_2_img_1.png").unlink()  # the last image: nothing may be written before
    assert_bad(make("winoground", "--examples", str(winoground), "--out", str(out)),
               "ex_2_img_1.png: image_1 of example 2", out)
    (winoground.parent / "images" / "ex_2_img_1.png").write_bytes(b"not an image")
    assert_bad(make("winoground", "--examples", str(winoground), "--out", str(out)),
               "ex_2_img_1.png: unreadable image", out)


# -------------------------------------------------------------------------------------------------- svo-probes
SVO_HEADER = ["index", "sentence", "pos_triplet", "neg_triplet", "subj_neg", "verb_neg", "obj_neg", "pos_url",
              "neg_url", "pos_image_id", "neg_image_id"]
# (sentence, pos triplet, neg triplet, subj_neg, verb_neg, obj_neg, pos id, neg id)
SVO_ROWS = [
    ("A man is riding a horse.", "man,ride,horse", "woman,ride,horse", "True", "False", "False", "101", "102"),
    ("A dog is catching a ball.", "dog,catch,ball", "dog,chase,ball", "False", "True", "False", "103", "104"),
    ("Two girls are holding a kite.", "girl,hold,kite", "girl,hold,balloon", "False", "False", "True", "105", "106"),
    ("A woman plays a guitar.", "woman,play,guitar", "man,hold,guitar", "True", "True", "False", "107", "108"),
    ("A child eats a cake.", "child,eat,cake", "child,bake,cake", "False", "True", "False", "109", "999"),
]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def svo(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "svo_images"
    rows = []
    for n, (sentence, pos, neg, s, v, o, pos_id, neg_id) in enumerate(SVO_ROWS):
        rows.append([str(n), sentence, pos, neg, s, v, o, f"http://x/{pos_id}.jpg", f"http://x/{neg_id}.jpg",
                     pos_id, neg_id])
        for image_id in (pos_id, neg_id):
            if image_id != "999":  # never downloaded
                _image(images / f"{image_id}.jpg", int(image_id) - 100, "JPEG")
    path = tmp_path / "svo_probes.csv"
    _write_csv(path, SVO_HEADER, rows)
    return path, images


def test_svo_probes_round_trip(tmp_path, svo, capsys):
    path, images = svo
    out = tmp_path / "out"
    assert make("svo-probes", "--csv", str(path), "--images", str(images), "--out", str(out)) == (0, "")
    printed = capsys.readouterr().out
    assert ("svo_probes: left out 2 of 5 rows (missing_image 1, no_single_negative_type 1); 1 image ids not in"
            in printed)
    index = read_index(out, verify=True)
    assert index["keys"] == ["image_0.jpg", "image_1.jpg", "json"]
    meta = index["metadata"]
    assert {k: meta[k] for k in ("task", "benchmark", "rows", "samples", "negative_types", "left_out",
                                 "missing_image_ids", "image_ext")} == {
        "task": "pairs", "benchmark": "svo_probes", "rows": 5, "samples": 3,
        "negative_types": {"object": 1, "subject": 1, "verb": 1},
        "left_out": {"missing_image": 1, "no_single_negative_type": 1}, "missing_image_ids": 1, "image_ext": "jpg"}
    samples = all_samples(out)
    for (key, fields), (sentence, pos, neg, *_, pos_id, neg_id), kind, n in zip(
            samples, SVO_ROWS, ("subject", "verb", "object"), range(3)):
        info = json.loads(fields["json"])
        subject, verb, obj = pos.split(",")
        assert info == {"id": str(n), "task": "pairs", "captions": [sentence], "negative_type": kind,
                        "triplet": {"subject": subject, "verb": verb, "object": obj}, "neg_triplet": neg,
                        "image_ids": [pos_id, neg_id]}
        assert fields["image_0.jpg"] == (images / f"{pos_id}.jpg").read_bytes()
        assert fields["image_1.jpg"] == (images / f"{neg_id}.jpg").read_bytes()
    # an image that does not decode (a failed download) is left out too, and counted apart
    (images / "105.jpg").write_bytes(b"<html>404</html>")
    assert make("svo-probes", "--csv", str(path), "--images", str(images), "--out", str(tmp_path / "u")) == (0, "")
    assert read_index(tmp_path / "u")["metadata"]["left_out"] == {"missing_image": 1, "no_single_negative_type": 1,
                                                                   "unreadable_image": 1}
    # a row missing both its images: one row left out, two image ids missing
    (images / "109.jpg").unlink()
    assert make("svo-probes", "--csv", str(path), "--images", str(images), "--out", str(tmp_path / "v")) == (0, "")
    meta = read_index(tmp_path / "v")["metadata"]
    assert meta["left_out"]["missing_image"] == 1 and meta["missing_image_ids"] == 2


def test_svo_probes_bad_inputs(tmp_path, svo):
    path, images = svo
    out = tmp_path / "out"
    base = ("svo-probes", "--images", str(images), "--out", str(out))
    assert_bad(make(*base, "--csv", str(path), "--require-all-images"), "no image 999", out)
    (images / "101.jpg").write_bytes(b"garbage")
    assert_bad(make(*base, "--csv", str(path), "--require-all-images"), "101.jpg: unreadable image", out)
    bad = tmp_path / "bad.csv"
    rows = list(csv.reader(open(path, encoding="utf-8")))
    _write_csv(bad, [c for c in rows[0] if c != "obj_neg"], [r[:6] + r[7:] for r in rows[1:]])
    assert_bad(make(*base, "--csv", str(bad)), "bad.csv: missing column 'obj_neg'", out)
    rows[2][5] = "maybe"
    _write_csv(bad, rows[0], rows[1:])
    assert_bad(make(*base, "--csv", str(bad)), "row 2: verb_neg must be True or False, got 'maybe'", out)
    rows[2][5], rows[3][2] = "True", "girl hold kite"
    _write_csv(bad, rows[0], rows[1:])
    assert_bad(make(*base, "--csv", str(bad)), "row 3: pos_triplet 'girl hold kite'", out)
    for name in ("102.jpg", "104.jpg", "106.jpg"):
        (images / name).unlink()
    assert_bad(make(*base, "--csv", str(path)), "no row of", out)


# ------------------------------------------------------------------------------------------------------- comvg
COMVG_HEADER = ["id", "sentence", "pos_triplet", "neg_triplet", "pos_image_id", "neg_image_id", "neg_value"]
COMVG_ROWS = [
    ["1", "a man is sitting at a table", "man,sit,table", "('dog', 'sit', 'table')", "2358258", "2357994", "subject"],
    ["2", "a man is standing on the water.", "man,stand,water", "('man', 'stand', 'table')", "2334910", "2392514",
     "object"],
    ["3", "a woman is feeding a baby.", "woman,feed,baby", "('woman', 'wash', 'baby')", "2355800", "2397261", "verb"],
    ["4", "a cat is drinking the water.", "cat,drink,water", "('dog', 'drink', 'water')", "2402707", "1", "subject"],
]


@pytest.fixture
def comvg(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "vg"
    for row in COMVG_ROWS:
        for image_id in row[4:6]:
            if image_id != "1":
                _image(images / f"{image_id}.jpg", int(image_id) % 200, "JPEG")
    path = tmp_path / "ComVG.csv"
    _write_csv(path, COMVG_HEADER, COMVG_ROWS)
    return path, images


def test_comvg_round_trip(tmp_path, comvg, capsys):
    path, images = comvg
    out = tmp_path / "out"
    assert make("comvg", "--csv", str(path), "--images", str(images), "--out", str(out)) == (0, "")
    assert "comvg: left out 1 of 4 rows (missing_image 1)" in capsys.readouterr().out
    meta = read_index(out, verify=True)["metadata"]
    assert (meta["benchmark"], meta["samples"], meta["negative_types"], meta["left_out"]) == (
        "comvg", 3, {"object": 1, "subject": 1, "verb": 1}, {"missing_image": 1})
    got = _jsons(out)
    assert [g["id"] for g in got] == ["1", "2", "3"] and [g["negative_type"] for g in got] == ["subject", "object",
                                                                                               "verb"]
    assert got[0]["triplet"] == {"subject": "man", "verb": "sit", "object": "table"}
    assert got[0]["neg_triplet"] == "('dog', 'sit', 'table')" and got[0]["captions"] == ["a man is sitting at a table"]
    assert got[2]["image_ids"] == ["2355800", "2397261"]
    # every image there: nothing left out, nothing printed
    _image(images / "1.png", 9)
    assert make("comvg", "--csv", str(path), "--images", str(images), "--out", str(tmp_path / "all")) == (0, "")
    assert capsys.readouterr().out.count("\n") == 1  # only the "wrote" line
    meta = read_index(tmp_path / "all")["metadata"]
    assert meta["samples"] == 4 and meta["left_out"] == {} and meta["image_ext"] == "png"  # jpg + png: re-encoded


def test_comvg_bad_inputs(tmp_path, comvg):
    path, images = comvg
    out = tmp_path / "out"
    base = ("comvg", "--images", str(images), "--out", str(out))
    bad = tmp_path / "bad.csv"
    _write_csv(bad, COMVG_HEADER[:-1], [r[:-1] for r in COMVG_ROWS])
    assert_bad(make(*base, "--csv", str(bad)), "bad.csv: missing column 'neg_value'", out)
    _write_csv(bad, COMVG_HEADER, [*COMVG_ROWS[:2], [*COMVG_ROWS[2][:6], "adjective"]])
    assert_bad(make(*base, "--csv", str(bad)), "row 3: neg_value must be one of subject, verb, object", out)
    assert_bad(make(*base, "--csv", str(path), "--require-all-images"), "no image 1 ", out)
    assert_bad(make("comvg", "--csv", str(path), "--images", str(tmp_path / "none"), "--out", str(out)), "--images",
               out)


@pytest.mark.parametrize("cell, expected", [
    ("man,sit,table", ("man", "sit", "table")), ("('dog', 'sit', 'table')", ("dog", "sit", "table")),
    ("['girl,hold,kite', 'girl,fly,kite']", ("girl", "hold", "kite")), (" man , laying in , grass ",
                                                                         ("man", "laying in", "grass")),
    ("man,sit", None), ("('a', 'b')", None), ("", None), ("a,,c", None),
])
def test_parse_triplet(cell, expected):
    assert parse_triplet(cell) == expected


# ------------------------------------------------------------------------------------- synthetic-compositional
def test_synthetic_pairs_swap_colours_and_boxes_cover_the_shapes():
    relations = set()
    for size in (24, 64):
        for index in range(60):
            spec = pair_spec(3, index)
            relations.add(spec.relation)
            (a, b), (x, y) = spec.colors, spec.shapes
            assert a != b and x != y
            assert spec.captions == (f"a {a} {x} {spec.relation} a {b} {y}", f"a {b} {x} {spec.relation} a {a} {y}")
            drawn = draw_pair(spec, size)
            assert drawn["boxes"][0] == drawn["boxes"][1] and set(drawn["boxes"][0]) == {x, y}
            for image, colors in zip(drawn["images"], ((a, b), (b, a))):
                assert image.shape == (size, size, 3) and image.dtype == np.uint8
                for shape, color in zip((x, y), colors):
                    ys, xs = np.nonzero(np.all(image == COLORS[color], axis=-1))
                    # the box is the tight box of the shape's pixels (x1, y1 exclusive)
                    assert drawn["boxes"][0][shape] == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
            (bx,), (by,) = drawn["boxes"][0][x], drawn["boxes"][0][y]
            axis, first_low = RELATIONS[spec.relation]
            if first_low:
                assert bx[axis + 2] < by[axis]  # x (or y) of the first shape ends before the second begins
            else:
                assert by[axis + 2] < bx[axis]
    assert relations == set(RELATIONS)
    assert pair_spec(3, 5) == pair_spec(3, 5) and pair_spec(3, 5) != pair_spec(4, 5)
    with pytest.raises(ValueError, match="size: must be at least 24"):
        draw_pair(pair_spec(0, 0), 16)


def test_synthetic_compositional_kind(tmp_path):
    def write(name: str, *extra: str) -> Path:
        assert make("synthetic-compositional", "--num", "12", "--out", str(tmp_path / name), *extra) == (0, "")
        return tmp_path / name

    a, b, c = write("a", "--seed", "5"), write("b", "--seed", "5"), write("c", "--seed", "6")
    shard = read_index(a)["shards"][0]["file"]
    assert (a / shard).read_bytes() == (b / shard).read_bytes() != (c / shard).read_bytes()
    index = read_index(a, verify=True)
    assert index["keys"] == ["image_0.png", "image_1.png", "json"]
    meta = index["metadata"]
    assert (meta["task"], meta["benchmark"], meta["size"]) == ("winoground", "synthetic_compositional", 64)
    infos = _jsons(a)
    assert meta["tags"]["tag"] == dict(sorted(
        {t: [i["tag"] for i in infos].count(t) for t in {i["tag"] for i in infos}}.items(),
        key=lambda kv: (-kv[1], kv[0])))
    for (_, fields), info in zip(all_samples(a), infos):
        spec = pair_spec(5, int(info["id"]))
        assert info["captions"] == list(spec.captions) and info["tag"] == info["relation"] == spec.relation
        first = np.asarray(Image.open(io.BytesIO(fields["image_0.png"])))
        assert first.shape == (64, 64, 3) and np.array_equal(first, draw_pair(spec, 64)["images"][0])
        assert info["boxes"] == draw_pair(spec, 64)["boxes"]
    small = write("s", "--size", "32")
    assert np.asarray(Image.open(io.BytesIO(all_samples(small)[0][1]["image_1.png"]))).shape == (32, 32, 3)
    assert_bad(make("synthetic-compositional", "--num", "0", "--out", str(tmp_path / "x")), "--num", tmp_path / "x")
    assert_bad(make("synthetic-compositional", "--num", "2", "--size", "16", "--out", str(tmp_path / "x")), "--size",
               tmp_path / "x")

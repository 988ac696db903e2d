"""The bytes of every shard kind at fixed inputs and seeds: recorded once, so that moving or restructuring the writers
can never change what they write. A change here means datasets written before and after differ; that needs a new
format version (datamodules/shards.py FORMAT), not a new recording.

Inputs are generated here with PIL, numpy and PyAV only (no project code), and every path is relative to the working
directory, because samples record paths (classification `path`, video `source`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch import make_shards

RECORDED = {
    "synthetic-shapes": {
        "data-000000.tar": "27fe0a0349fa67ad43c3daea1d47d72d262b6f57579473470cb734c0f0601d27",
        "data-000001.tar": "f70e593c3556c1cff096b949ab63f499bdbde0964e29be818fdbe789421ca2aa",
        "data-000002.tar": "0bc4e0339da26fde6c9b579e0adf1ced227034deed6f7ca535e7ee256ac36d24",
    },
    "synthetic-control": {
        "data-000000.tar": "86d0435c5849a18d55c9e5aed55bc260b5069bf34c0145deffb26512bb7358e1",
        "data-000001.tar": "d2948352632d4b56e39ef4c6cc9cdb8a2d549f1521a04d8c53f4f4da420c106d",
    },
    "synthetic-motion": {
        "data-000000.tar": "5e2a596c8ea6ba3f2964962cc490c4ac7118d13cbfe7b94ef4bba2558e146d69",
        "data-000001.tar": "d2b7bbc7dacb229e054a108ccd066b367928e2dce90ca5af08fa95b60701ac2b",
    },
    "classification-folder": {
        "train/data-000000.tar": "0591befef42a61dbac2ef9e94f4e9d6e3a45681e9edbc83303a574e1ebaa655f",
        "train/data-000001.tar": "eb9bf269a290eb780360de3b76cf0a85a6d3a82fbaac65dbd6749a310ce5f555",
        "train/data-000002.tar": "3cf517c63eb6ac680e261d20e89c6dd2fcf3e2e620a5a1e93a9d0d63721ee73f",
        "train/data-000003.tar": "ab5300436dcba8865bc6c4ab84282661a133c51471f375e6d638ede639733717",
        "train/data-000004.tar": "411a360ae54084752241be9a4047a0bf96330c369141ca2b76b6689aa5d579b8",
    },
    "classification-split": {
        "test/data-000000.tar": "7caa3760d48e82db8dfc517fe73a6b83bf8f3d7d29f18d600a5e9364e9bce232",
        "train/data-000000.tar": "d8567305a751e2939180150c36e86cf5d92a86d38677046d3edae54f2acbc629",
        "train/data-000001.tar": "e9b02d15ac8aa830aff64f257b489b06a5850fc49fe85edb295068e4d169e8a6",
        "val/data-000000.tar": "774789504b1316e96b12dbf1d333f20a71c2a82e14681893318466f4f71b178b",
    },
    "captions": {
        "data-000000.tar": "2a30494830e91a7ea5a306121c53106cac02d11543af87192a805964f20dd0f8",
        "data-000001.tar": "b05eea41e04543a4177b01a42731e651fca96c92b2ba3c2a7f2e88e541c76902",
    },
    "retrieval": {
        "data-000000.tar": "061b59892acb29428b03852232ef17e86fad94bb7a1a8993acea9d5969473058",
        "data-000001.tar": "c5587cec97231da9db4fbcbe69b946544a959a0e4e87ab24ccaa77de3c217939",
    },
    "vqa": {
        "data-000000.tar": "88a73d34fe11ef40ef17ac506f5c28c1ea131d36ff2590eaffbe9fe0422db439",
        "data-000001.tar": "4a8e5ff82915ffd5d806413ddc37bb7af90cc9e7607f53cd9d17730f2dcdb179",
    },
    "video": {
        "data-000000.tar": "428d3db57c5eb9603e18c9195a9a4c342007367d66ad762808fe89fcf00259eb",
    },
}


def _image(rng: np.random.Generator, h: int = 12, w: int = 10) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _classification_inputs() -> None:
    rng = np.random.default_rng(11)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(("cat", "dog", "bird")):
        (Path("folder") / name).mkdir(parents=True)
        for i in range(5):
            rel = f"{name}/{i}.png" if i % 2 else f"{name}/{i}.jpg"
            _image(rng).save(Path("folder") / rel)
            split["train" if i < 3 else "val" if i == 3 else "test"].append([rel, label, name])
    Path("split.json").write_text(json.dumps(split))


def _caption_inputs() -> None:
    rng = np.random.default_rng(12)
    Path("cap/img").mkdir(parents=True)
    Path("cap/depth").mkdir()
    rows = []
    for i in range(4):
        img = np.zeros((20, 20, 3), np.uint8)
        img[3 + i:12 + i, 4:15] = rng.integers(0, 256, size=3, dtype=np.uint8)
        Image.fromarray(img).save(f"cap/img/{i}.png")
        Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8)).save(f"cap/depth/{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"a block, number {i}", "depth": f"depth/{i}.png"})
    Path("captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _retrieval_inputs() -> None:
    rng = np.random.default_rng(13)
    Path("ret/a").mkdir(parents=True)
    images = []
    for i in range(6):
        _image(rng).save(f"ret/a/{i}.png")
        images.append({"filepath": "a", "filename": f"{i}.png", "split": ("train", "test", "restval")[i % 3],
                       "sentences": [{"raw": f"picture {i} caption {j}"} for j in range(2 + i % 2)]})
    Path("karpathy.json").write_text(json.dumps({"dataset": "tiny", "images": images}))


def _vqa_inputs() -> None:
    rng = np.random.default_rng(14)
    Path("vqa/val").mkdir(parents=True)
    questions, annotations = [], []
    answers = ["red", "Two", "yes", "no", "blue"]
    for image_id in range(1, 5):
        _image(rng).save(f"vqa/val/{image_id:06d}.png")
        for j in range(2):
            qid = image_id * 10 + j
            answer = answers[(image_id + j) % len(answers)]
            questions.append({"image_id": image_id, "question": f"what is {j}?", "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "answer_type": "other",
                                "multiple_choice_answer": answer,
                                "answers": [{"answer": a, "answer_id": n + 1}
                                            for n, a in enumerate([answer] * 8 + ["blue", "2"])]})
    Path("questions.json").write_text(json.dumps({"data_subtype": "val", "questions": questions}))
    Path("annotations.json").write_text(json.dumps({"annotations": annotations}))


def _video_inputs() -> None:
    import av

    Path("vid").mkdir()
    rows = []
    for v, speed in enumerate((1, 3)):
        boxes = []
        with av.open(f"vid/v{v}.mp4", "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
            for i in range(9):
                frame = np.full((32, 48, 3), 40, np.uint8)
                x = 2 + speed * i
                frame[10:22, x:x + 10] = 220
                boxes.append([x, 10, x + 10, 22])
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        rows.append({"video": f"v{v}.mp4", "caption": f"a block moving {v}", "boxes": boxes})
    Path("videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


COMMON = ["--seed", "7", "--max-samples-per-shard", "3"]
KINDS = {
    "synthetic-shapes": (None, ["synthetic-shapes", "--num", "7", "--size", "16", "--spurious", "0.5"]),
    "synthetic-control": (None, ["synthetic-control", "--num", "4", "--size", "16"]),
    "synthetic-motion": (None, ["synthetic-motion", "--num", "4", "--size", "16", "--frames", "3"]),
    "classification-folder": (_classification_inputs, ["classification", "--images", "folder"]),
    "classification-split": (_classification_inputs, ["classification", "--split-json", "split.json", "--root",
                                                      "folder", "--shots", "2", "--subset", "base"]),
    "captions": (_caption_inputs, ["captions", "--captions", "captions.jsonl", "--root", "cap", "--conditions",
                                   "depth", "--canny"]),
    "retrieval": (_retrieval_inputs, ["retrieval", "--karpathy", "karpathy.json", "--root", "ret", "--split",
                                      "train", "--restval-as-train"]),
    "vqa": (_vqa_inputs, ["vqa", "--questions", "questions.json", "--annotations", "annotations.json", "--root",
                          "vqa", "--image-pattern", "{data_subtype}/{image_id:06d}.png", "--top-answers", "3"]),
    "video": (_video_inputs, ["video", "--videos", "videos.jsonl", "--root", "vid", "--frames", "3", "--stride",
                              "2", "--size", "16"]),
}


def shard_digests(out: Path) -> dict[str, str]:
    """sha256 of every shard under `out` (split sub-directories included), by relative path."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}


def write_kind(kind: str) -> dict[str, str]:
    prepare, args = KINDS[kind]
    if prepare is not None:
        prepare()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = make_shards.main([*args, "--out", "out", *COMMON])
    assert rc == 0, err.getvalue()
    return shard_digests(Path("out"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_shard_bytes_are_unchanged(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digests = write_kind(kind)
    assert digests, f"{kind} wrote no shard"
    assert digests == RECORDED[kind]

"""A synthetic base-to-new task for CPL: coloured shapes whose training images carry a spurious background.

Each of the 12 colour-shape classes has its own background colour. In the training split a sample's background is its
class's with probability `spurious` (else random); in the test split it is always random, so a model that learned
the background instead of the shape and colour loses accuracy there. The split JSON has CoOp's layout and goes
through the classification shard writer like a real dataset: base = the first 6 classes, new = the other 6.
The retrieval and VQA tasks below are written the same way, in the Karpathy and VQAv2 formats.

`tiny_inputs` writes what configs/cpl/tiny.yaml needs (the task, a random tiny CLIP, a word-level BERTScore scorer):
the method contract test (tests/test_method_contract.py) fits CPL with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from datamodules.synthetic_shapes import CLASS_NAMES, COLORS, SHAPES, draw_shape
from datamodules.writers.classification import write_classification_shards
from datamodules.writers.common import ShardOptions
from datamodules.writers.retrieval import write_retrieval_shards
from datamodules.writers.vqa import write_vqa_shards
from lightning_modules.clip_pretrain.random_clip import write_random_clip


def write_split(out: Path, *, per_class_train: int, per_class_test: int, size: int, spurious: float,
                seed: int = 0) -> Path:
    """Images under out/images and out/split.json ({"train"|"val"|"test": [[relative path, label, class name]]})."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    split: dict[str, list[list]] = {"train": [], "val": [], "test": []}
    counts = {"train": per_class_train, "val": max(per_class_test // 4, 1), "test": per_class_test}
    for part, (name, count) in enumerate(counts.items()):
        per_label: dict[int, int] = {}
        index = 0
        # draw_shape picks the label from (seed, index): draw until every class has `count` images
        while min(per_label.get(c, 0) for c in range(len(CLASS_NAMES))) < count:
            shape = draw_shape(index, size, seed * 1000 + part, spurious if name == "train" else None)
            index += 1
            label = shape["label"]
            if per_label.get(label, 0) >= count:
                continue
            per_label[label] = per_label.get(label, 0) + 1
            relative = f"{name}/{label:02d}_{index:06d}.png"
            (images / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shape["image"]).save(images / relative)
            split[name].append([relative, label, CLASS_NAMES[label]])
    path = out / "split.json"
    path.write_text(json.dumps(split))
    return path


def write_base_to_new(out: Path, *, shots: int = 16, per_class_test: int = 20, size: int = 32,
                      spurious: float = 0.9, seed: int = 0) -> dict[str, str]:
    """Shards for base-to-new: {"train": base training shards, "base": base test, "new": new test}."""
    split = write_split(out / "raw", per_class_train=shots, per_class_test=per_class_test, size=size,
                        spurious=spurious, seed=seed)
    for subset in ("base", "new"):
        write_classification_shards(out / subset, split_json=split, root=out / "raw" / "images", subset=subset,
                                    shots=shots if subset == "base" else None, options=ShardOptions(seed=seed))
    return {"train": str(out / "base" / "train"), "base": str(out / "base" / "test"), "new": str(out / "new" / "test")}


def tiny_inputs(root: Path) -> list[str]:
    """Everything configs/cpl/tiny.yaml reads, written under `root`; returns the overrides that point it there."""
    root = Path(root)
    data = write_base_to_new(root / "data", shots=8, per_class_test=4, size=16)
    clip = write_random_clip(root / "clip", image_size=16)
    scorer = write_word_scorer(root / "scorer", sorted({w for name in CLASS_NAMES for w in name.split()}))
    return [f"model.params.clip.pretrained={clip}", f"model.params.scorer.model={scorer}",
            f"model.params.negatives_cache={root / 'negatives'}", f"data.params.train={data['train']}",
            f"data.params.val.base={data['base']}", f"data.params.val.new={data['new']}"]


def write_word_scorer(directory: Path, words: list[str], seed: int = 0, model_max_length: int | None = 64) -> Path:
    """A tiny BERT (random weights) over a word-level vocabulary, for BERTScore negatives where no pretrained scorer
    can be downloaded. Read at layer 1, its token embeddings are nearly the words themselves, so its BERTScore ranks
    class names by the words they share ("red circle" is nearest "red square" and "blue circle")."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # bert-score cannot truncate to transformers' "unset" length (about 1e30): give the tokenizer a real limit
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), **limit)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    return directory


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _shape_captions(shape: dict) -> list[str]:
    """Five captions of a drawn shape (draw_shape), in the tiny CLIP's words: "a red circle", ..."""
    color, name, background = shape["color"], shape["shape"], shape["background"]
    size = "small" if shape["radius"] < 0.25 * len(shape["image"]) else "large"
    return [f"a {color} {name}", f"a photo of a {color} {name}", f"a picture of the {color} {name}",
            f"an image of a {color} {name} on {_article(background)} {background} background",
            f"a {size} {color} {name}"]


def write_retrieval(out: Path, *, train_images: int = 48, test_images: int = 24, size: int = 32,
                    seed: int = 0) -> dict[str, str]:
    """Image-text retrieval shards of shapes: a Karpathy-format JSON (out/raw/dataset_shapes.json, 5 captions per
    image from its colour, shape, size and background) through the retrieval shard writer, splits train and test."""
    raw = out / "raw"
    images: list[dict] = []
    for part, (split, count) in enumerate((("train", train_images), ("test", test_images))):
        (raw / "images" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            shape = draw_shape(index, size, seed * 1000 + part, None)
            filename = f"{index:06d}.png"
            Image.fromarray(shape["image"]).save(raw / "images" / split / filename)
            images.append({"filepath": split, "filename": filename, "split": split, "imgid": len(images),
                           "sentences": [{"raw": text, "tokens": text.split()} for text in _shape_captions(shape)]})
    path = raw / "dataset_shapes.json"
    path.write_text(json.dumps({"dataset": "synthetic-shapes", "images": images}))
    for split in ("train", "test"):
        write_retrieval_shards(out / split, karpathy=path, root=raw / "images", split=split,
                               options=ShardOptions(seed=seed))
    return {"train": str(out / "train"), "test": str(out / "test")}


def _shape_questions(shape: dict, rng) -> list[tuple[str, str, str, list[str]]]:
    """(question, answer, answer type, wrong answers an annotator may give) for one drawn shape."""
    colors, shapes = list(COLORS), list(SHAPES)
    asked = shape["color"] if rng.random() < 0.5 else colors[int(rng.integers(len(colors)))]
    yes = "yes" if asked == shape["color"] else "no"
    return [("what color is the shape?", shape["color"], "other", [c for c in colors if c != shape["color"]]),
            ("what shape is this?", shape["shape"], "other", [s for s in shapes if s != shape["shape"]]),
            (f"is the shape {asked}?", yes, "yes/no", ["no" if yes == "yes" else "yes"])]


def write_vqa(out: Path, *, train_questions: int = 96, test_questions: int = 48, size: int = 32,
              seed: int = 0) -> dict[str, str]:
    """VQAv2-format shards of shapes: three questions per image (its colour, its shape, "is the shape {colour}?"),
    10 annotator answers each of which up to 3 disagree or are written differently ("Red.", "a circle"), so that
    answer_counts vary; train uses `--top-answers` over every synthetic answer, test `--answers-from` train."""
    import numpy as np

    raw = out / "raw"
    all_answers = [*COLORS, *SHAPES, "yes", "no"]
    for part, (split, count) in enumerate((("train", train_questions), ("test", test_questions))):
        rng = np.random.default_rng([seed, part])
        (raw / "images" / split).mkdir(parents=True, exist_ok=True)
        questions: list[dict] = []
        annotations: list[dict] = []
        image_id = 0
        while len(questions) < count:
            image_id += 1
            shape = draw_shape(image_id, size, seed * 1000 + part, None)
            Image.fromarray(shape["image"]).save(raw / "images" / split / f"{image_id:06d}.png")
            for j, (question, answer, answer_type, wrong) in enumerate(_shape_questions(shape, rng)):
                if len(questions) == count:
                    break
                question_id = image_id * 10 + j
                answers = [answer] * 10
                for k in rng.choice(10, size=int(rng.integers(0, 4)), replace=False):
                    answers[k] = (wrong[int(rng.integers(len(wrong)))] if rng.random() < 0.5
                                  else rng.choice([answer.capitalize() + ".", f"a {answer}", f" {answer.upper()}"]))
                questions.append({"image_id": image_id, "question": question, "question_id": question_id})
                annotations.append({"question_id": question_id, "image_id": image_id, "answer_type": answer_type,
                                    "question_type": " ".join(question.split()[:2]), "multiple_choice_answer": answer,
                                    "answers": [{"answer": str(a), "answer_confidence": "yes", "answer_id": n + 1}
                                                for n, a in enumerate(answers)]})
        (raw / f"questions_{split}.json").write_text(json.dumps({"data_subtype": split, "questions": questions}))
        (raw / f"annotations_{split}.json").write_text(json.dumps({"data_subtype": split,
                                                                  "annotations": annotations}))
    for split in ("train", "test"):
        vocabulary = {"top_answers": len(all_answers)} if split == "train" else {"answers_from": out / "train"}
        write_vqa_shards(out / split, questions=raw / f"questions_{split}.json",
                         annotations=raw / f"annotations_{split}.json", root=raw / "images",
                         image_pattern="{data_subtype}/{image_id:06d}.png", options=ShardOptions(seed=seed),
                         **vocabulary)
    return {"train": str(out / "train"), "test": str(out / "test")}

"""A synthetic base-to-new task for CPL: coloured shapes whose training images carry a spurious background.

Each of the 12 colour-shape classes has its own background colour. In the training split a sample's background is its
class's with probability `spurious` (else random); in the test split it is always random, so a model that learned
the background instead of the shape and colour loses accuracy there. The split JSON has CoOp's layout and goes
through `launch/make_shards.py classification` like a real dataset: base = the first 6 classes, new = the other 6.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from launch import make_shards


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
        while min(per_label.get(c, 0) for c in range(len(make_shards.CLASS_NAMES))) < count:
            shape = make_shards.draw_shape(index, size, seed * 1000 + part,
                                           spurious if name == "train" else None)
            index += 1
            label = shape["label"]
            if per_label.get(label, 0) >= count:
                continue
            per_label[label] = per_label.get(label, 0) + 1
            relative = f"{name}/{label:02d}_{index:06d}.png"
            (images / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shape["image"]).save(images / relative)
            split[name].append([relative, label, make_shards.CLASS_NAMES[label]])
    path = out / "split.json"
    path.write_text(json.dumps(split))
    return path


def write_base_to_new(out: Path, *, shots: int = 16, per_class_test: int = 20, size: int = 32,
                      spurious: float = 0.9, seed: int = 0) -> dict[str, str]:
    """Shards for base-to-new: {"train": base training shards, "base": base test, "new": new test}."""
    split = write_split(out / "raw", per_class_train=shots, per_class_test=per_class_test, size=size,
                        spurious=spurious, seed=seed)
    root = str(out / "raw" / "images")
    for subset in ("base", "new"):
        args = ["classification", "--split-json", str(split), "--root", root, "--subset", subset,
                "--out", str(out / subset), "--seed", str(seed)]
        if subset == "base":
            args += ["--shots", str(shots)]
        rc = make_shards.main(args)
        if rc != 0:
            raise RuntimeError(f"make_shards {' '.join(args)} failed with exit code {rc}")
    return {"train": str(out / "base" / "train"), "base": str(out / "base" / "test"), "new": str(out / "new" / "test")}


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

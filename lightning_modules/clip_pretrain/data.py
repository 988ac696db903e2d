"""Synthetic-shapes shards (launch/make_shards.py synthetic-shapes) as image-caption pairs for CLIP pretraining.

Each sample's caption is written from its json fields: "a photo of a red circle on a teal background". Captions
vary so that the prompts zero-shot classification and prompt learners use ("a photo of a {class name}", CoOp's
"... {class name}.") are texts the encoder has seen: the background clause is kept with `background_probability`
and a final period added with `period_probability`. The draws are seeded per sample and epoch
(`sample_generator`), so a resumed run sees the same captions; validation captions always name the background and
have no period. Images are resized and centre-cropped to `image_size` and normalised with CLIP's mean and std;
captions are tokenized in the loader's workers and padded to `context_length`.
"""

from __future__ import annotations

from typing import Any

import torch

from datamodules.errors import raise_param_problems
from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.shards import DatasetError
from datamodules.transforms import center_crop, normalize, resize_shorter, sample_generator
from lightning_modules.clip_pretrain.tokenizer import load_tokenizer


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def caption(color: str, shape: str, background: str | None = None, period: bool = False) -> str:
    """'a photo of a red circle', with a background 'a photo of a red circle on a teal background' (+ '.')."""
    text = f"a photo of {article(color)} {color} {shape}"
    if background is not None:
        text += f" on {article(background)} {background} background"
    return text + "." if period else text


class ShapeCaptionSample(DecodeSample):
    """png + json (+ cls) -> pixel_values, input_ids, attention_mask, cls (and the caption text)."""

    def __init__(self, image_size: int, context_length: int, tokenizer: str | None = None,
                 background_probability: float = 1.0, period_probability: float = 0.0, seed: int = 0):
        super().__init__(required=["png", "json"])
        self.image_size, self.context_length, self.tokenizer_path = image_size, context_length, tokenizer
        self.background_probability, self.period_probability = background_probability, period_probability
        self.seed = seed
        self._tokenizer: Any = None
        self._tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:  # workers build their own tokenizer and token cache
        return {**self.__dict__, "_tokenizer": None, "_tokens": {}}

    def tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) padded to the context length; few distinct captions, so they are cached."""
        if text not in self._tokens:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.tokenizer_path)
            encoded = self._tokenizer(text, padding="max_length", truncation=True, max_length=self.context_length,
                                      return_tensors="pt")
            self._tokens[text] = (encoded["input_ids"][0], encoded["attention_mask"][0])
        return self._tokens[text]

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        meta = sample["json"]
        generator = sample_generator(self.seed, epoch, sample["__key__"])
        keep_background, period = torch.rand(2, generator=generator).tolist()
        text = caption(meta["color"], meta["shape"], meta["background"] if keep_background < self.background_probability
                       else None, period=period < self.period_probability)
        input_ids, attention_mask = self.tokens(text)
        image = center_crop(resize_shorter(sample["png"], self.image_size), self.image_size)
        label = sample["cls"] if "cls" in sample else int(meta["label"])
        return {"__key__": sample["__key__"], "pixel_values": normalize(image), "input_ids": input_ids,
                "attention_mask": attention_mask, "cls": label, "caption": text}


class ShapeCaptionData(ShardDataModule):
    """ShardDataModule of synthetic-shapes image-caption pairs (see the module docstring)."""

    def __init__(self, train: str | list[str] | None = None,
                 val: str | list[str] | dict[str, str | list[str]] | None = None, image_size: int = 32,
                 context_length: int = 16, tokenizer: str | None = None, background_probability: float = 0.5,
                 period_probability: float = 0.5, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, verify: str = "size"):
        super().__init__(train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, verify=verify)
        problems = []
        if image_size < 8:
            problems.append(("image_size", f"must be >= 8, got {image_size}"))
        if context_length < 4:
            problems.append(("context_length", f"must be >= 4, got {context_length}"))
        for name, p in (("background_probability", background_probability), ("period_probability", period_probability)):
            if not 0 <= p <= 1:
                problems.append((name, f"must be in [0, 1], got {p}"))
        raise_param_problems(problems)
        self.image_size, self.context_length, self.tokenizer = image_size, context_length, tokenizer
        self.background_probability, self.period_probability = background_probability, period_probability

    def make_sample(self, split: str) -> ShapeCaptionSample:
        train = split == "train"  # validation captions: a fixed set whatever the epoch (background, no period)
        return ShapeCaptionSample(self.image_size, self.context_length, self.tokenizer,
                                  self.background_probability if train else 1.0,
                                  self.period_probability if train else 0.0, self.seed)

    def class_names(self, split: str) -> list[str]:
        names = self.metadata(split).get("class_names")
        if not names:
            raise DatasetError(f"{self.sources[split].description}: its index has no metadata.class_names; write it "
                               f"with launch/make_shards.py synthetic-shapes")
        return list(names)

"""CLIP inputs from shards, one data module per CPL task (DESIGN.md "CPL", Tasks).

- ClipClassificationData (launch/make_shards.py classification or synthetic-shapes): `train` is the few-shot
  training set (e.g. the base classes); `val` names one or more evaluation sets, each with its own classes
  ({base: DIR, new: DIR} for base-to-new). Class names come from each dataset's index metadata.
- ClipRetrievalData (make_shards.py retrieval, Karpathy splits): every caption is a class. A training sample carries
  one of its image's captions, drawn per (seed, epoch, image), and a step's classes are the batch's captions; an
  evaluation image is ranked against every caption of its set (image->text R@1).
- ClipVQAData (make_shards.py vqa): a question's classes are the answer vocabulary, each prompted as
  `qa_template.format(question=..., answer=...)`; a sample carries the VQA accuracy each answer would score.

Images are resized and centre-cropped to the CLIP input size and normalised with CLIP's statistics; with `augment`,
a random resized crop and a horizontal flip, seeded per sample and epoch so that a resumed run sees the same pixels.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Any, Literal, Mapping

import torch

from datamodules.errors import ParamError, raise_param_problems
from datamodules.shard_datamodule import ShardDataModule
from datamodules.shard_dataset import DecodeSample
from datamodules.shards import DatasetError
from datamodules.transforms import (center_crop, normalize, random_horizontal_flip, random_resized_crop, resize_shorter,
                                    sample_generator)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tiff", "gif")
BASE_TO_NEW = ("base", "new")  # the validation sets whose harmonic mean base-to-new reports
Task = Literal["classification", "retrieval", "vqa"]


class ClipImageSample(DecodeSample, ABC):
    """The image of a sample as CLIP pixels; subclasses add the task's fields (`fields`)."""

    def __init__(self, image_size: int, augment: bool, seed: int, required: list[str]):
        super().__init__(required=required)
        self.image_size, self.augment, self.seed = image_size, augment, seed

    def transform(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise KeyError(f"no image field (one of {', '.join(IMAGE_EXTENSIONS)})")
        image: torch.Tensor = sample[ext]
        if self.augment:
            generator = sample_generator(self.seed, epoch, sample["__key__"])
            image = random_horizontal_flip(random_resized_crop(image, self.image_size, generator), generator)
        else:
            image = center_crop(resize_shorter(image, self.image_size), self.image_size)
        return {"__key__": sample["__key__"], "pixel_values": normalize(image), **self.fields(sample, epoch)}

    @abstractmethod
    def fields(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        """The task's fields of a decoded sample (labels, captions, questions)."""


class ClipClassificationSample(ClipImageSample):
    def __init__(self, image_size: int, augment: bool, seed: int, label_key: str = "cls"):
        super().__init__(image_size, augment, seed, required=[label_key])
        self.label_key = label_key

    def fields(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        return {"cls": sample[self.label_key]}


class ClipRetrievalSample(ClipImageSample):
    def __init__(self, image_size: int, augment: bool, seed: int, train: bool):
        super().__init__(image_size, augment, seed, required=["json", "cls"])
        self.train = train

    def fields(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        captions = sample["json"].get("captions") if isinstance(sample["json"], dict) else None
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise KeyError("json.captions must be a non-empty list of non-empty strings")
        out = {"image_index": sample["cls"]}
        if self.train:  # its own stream (not the augmentation's), so augment on/off draws the same captions
            pick = torch.randint(len(captions), (1,), generator=sample_generator(self.seed, epoch,
                                                                                 sample["__key__"] + "/caption"))
            out["caption"] = captions[int(pick)]
        return out


def vqa_accuracy(matches: int, annotators: int) -> float:
    """VQA accuracy of an answer `matches` of `annotators` humans gave: min(matches / 3, 1) averaged over the
    leave-one-annotator-out subsets (the VQA challenge's definition)."""
    if annotators < 1:
        return 0.0
    with_it = matches * min((matches - 1) / 3, 1.0)  # subsets that dropped one of the matching annotators
    without = (annotators - matches) * min(matches / 3, 1.0)
    return (with_it + without) / annotators


class ClipVQASample(ClipImageSample):
    def __init__(self, image_size: int, augment: bool, seed: int, num_answers: int):
        super().__init__(image_size, augment, seed, required=["json", "cls"])
        self.num_answers = num_answers

    def fields(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        meta = sample["json"]
        if not isinstance(meta, dict) or not isinstance(meta.get("question"), str) or not meta["question"].strip():
            raise KeyError("json.question must be a non-empty string")
        scores = torch.zeros(self.num_answers)
        annotators = int(meta.get("num_annotators", 10))
        for answer, count in dict(meta.get("answer_counts", {})).items():
            if not 0 <= int(answer) < self.num_answers:
                raise KeyError(f"json.answer_counts names answer {answer}, outside the {self.num_answers} answers")
            scores[int(answer)] = vqa_accuracy(int(count), annotators)
        return {"question": meta["question"], "cls": sample["cls"], "answer_scores": scores}


class ClipData(ShardDataModule):
    """What the three tasks share: the image settings and the metadata checks."""

    task: Task
    kind: str  # the make_shards kind the index metadata must name

    def __init__(self, train: str | list[str] | None = None,
                 val: str | list[str] | dict[str, str | list[str]] | None = None, image_size: int = 224,
                 augment: bool = False, batch_size: int = 32, num_workers: int = 2, seed: int = 0,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, verify: str = "sha256"):
        super().__init__(train=train, val=val, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, verify=verify)
        raise_param_problems([("image_size", f"must be >= 8, got {image_size}")] if image_size < 8 else [])
        self.image_size, self.augment = image_size, augment

    def _metadata_field(self, split: str, field: str, writer: str) -> Any:
        meta = self.metadata(split)
        value = meta.get(field)
        if not value or (self.kind and meta.get("kind") not in (self.kind, None)):
            raise DatasetError(f"{self.sources[split].description}: its index has no metadata.{field} for "
                               f"{self.task} (kind {meta.get('kind')!r}); write it with launch/make_shards.py {writer}")
        return value


class ClipClassificationData(ClipData):
    task, kind = "classification", ""

    @classmethod
    def config_problems(cls, params: Mapping[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """Base-to-new reads the validation sets named base and new (and their harmonic mean): a set named one typo
        away from one of them while that one is missing is a mistake, not a set of its own."""
        val = params.get("val")
        names = list(val) if isinstance(val, Mapping) else []
        missing = [name for name in BASE_TO_NEW if name not in names]
        return [(f"val.{name}", f"'{name}' looks like {close[0]}, which is missing (base-to-new reads the sets named "
                                f"base and new): rename it, or give it a name unlike both")
                for name in names if (close := difflib.get_close_matches(name, missing, n=1, cutoff=0.6))]

    def make_sample(self, split: str) -> ClipClassificationSample:
        return ClipClassificationSample(self.image_size, self.augment and split == "train", self.seed)

    def class_names(self, split: str) -> list[str]:
        return list(self._metadata_field(split, "class_names", "classification (or synthetic-shapes)"))

    def training_texts(self) -> list[str]:
        """The texts BERTScore negatives are computed between."""
        return self.class_names("train")


class ClipRetrievalData(ClipData):
    task, kind = "retrieval", "retrieval"

    def make_sample(self, split: str) -> ClipRetrievalSample:
        return ClipRetrievalSample(self.image_size, self.augment and split == "train", self.seed, split == "train")

    def captions(self, split: str) -> list[list[str]]:
        """Per image (in `image_index` order) its captions."""
        return [list(c) for c in self._metadata_field(split, "captions", "retrieval")]

    def training_texts(self) -> list[str]:
        return list(dict.fromkeys(c.strip() for group in self.captions("train") for c in group))


class ClipVQAData(ClipData):
    task, kind = "vqa", "vqa"

    def __init__(self, train: str | list[str] | None = None,
                 val: str | list[str] | dict[str, str | list[str]] | None = None, image_size: int = 224,
                 augment: bool = False, batch_size: int = 32, num_workers: int = 2, seed: int = 0,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, verify: str = "sha256",
                 qa_template: str = "question: {question} answer: {answer}"):
        super().__init__(train=train, val=val, image_size=image_size, augment=augment, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, shuffle_buffer=shuffle_buffer,
                         max_bad_fraction=max_bad_fraction, verify=verify)
        try:
            qa_template.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ParamError([("qa_template", f"must use only {{question}} and {{answer}}, got {qa_template!r}")]) from e
        if "{question}" not in qa_template or "{answer}" not in qa_template:
            raise ParamError([("qa_template", f"must contain {{question}} and {{answer}}, got {qa_template!r}")])
        self.qa_template = qa_template

    def make_sample(self, split: str) -> ClipVQASample:
        return ClipVQASample(self.image_size, self.augment and split == "train", self.seed, len(self.answers()))

    def answers(self) -> list[str]:
        """The answer vocabulary: the training set's, which every evaluation set must share."""
        first = "train" if "train" in self.sources else self.val_names[0]
        vocabulary = list(self._metadata_field(first, "answers", "vqa"))
        for split in self.sources:
            if list(self._metadata_field(split, "answers", "vqa")) != vocabulary:
                raise DatasetError(f"{self.sources[split].description}: its answers differ from "
                                   f"{self.sources[first].description}'s; write it with make_shards.py vqa "
                                   f"--answers-from {self.sources[first].description}")
        return vocabulary

    def prompt(self, question: str, answer: str) -> str:
        return self.qa_template.format(question=question.strip(), answer=answer)

    def training_texts(self) -> list[str]:
        answers = self.answers()
        questions = self._metadata_field("train", "questions", "vqa")
        if any(c < 0 for _, c in questions):
            raise DatasetError(f"{self.sources['train'].description}: training questions whose answer is outside the "
                               f"vocabulary (cls -1); write the training set with make_shards.py vqa --top-answers N")
        return list(dict.fromkeys(self.prompt(q, answers[c]) for q, c in questions))

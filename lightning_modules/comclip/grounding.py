"""Where a caption's entities are in the image: boxes from a zero-shot object detector or from the data, and the
sub-images ComCLIP embeds (the image blacked out outside an entity's boxes; not a crop, so the entity keeps its
place and size in the frame).

- `region_mask(height, width, boxes)`: the union of the boxes as a bool [H, W] mask (no boxes: the whole image);
  `blackout(image, mask)`: the image with zeros outside the mask.
- `DetectorGrounder`: a transformers zero-shot detector (AutoModelForZeroShotObjectDetection: OWL-ViT, OWLv2,
  Grounding DINO) from a local directory.
- `DataBoxes`: boxes the item carries, fields["boxes"][image_index] = {phrase or noun: [[x0, y0, x1, y1], ...]}.

Both grounders answer `ground(image, image_index, entities, fields) -> [boxes per entity]`, boxes in pixels of the
image as given, clipped to it; an entity with no box is not found (the caller uses the whole image for it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from datamodules.errors import UsageError, count_problems, first_line, raise_param_problems
from lightning_modules.comclip.parsing import Entity

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image as given
OWL_TYPES = ("owlvit", "owlv2")
GROUNDING_DINO_TYPES = ("grounding-dino",)


def clipped_boxes(boxes: Sequence[Sequence[float]], height: int, width: int) -> list[Box]:
    """The boxes clipped to the image, those covering no area left out."""
    kept = []
    for x0, y0, x1, y1 in boxes:
        box = (min(max(float(x0), 0.0), width), min(max(float(y0), 0.0), height),
               min(max(float(x1), 0.0), width), min(max(float(y1), 0.0), height))
        if box[2] > box[0] and box[3] > box[1]:
            kept.append(box)
    return kept


def region_mask(height: int, width: int, boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """bool [H, W]: every pixel a box touches (union of the boxes, clipped to the image); no boxes -> all True."""
    if not boxes:
        return torch.ones(height, width, dtype=torch.bool)
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in clipped_boxes(boxes, height, width):
        mask[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)] = True
    return mask


def blackout(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> a copy with zeros where `mask` [H, W] is False."""
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the image {tuple(image.shape)}")
    return image * mask.to(image.device, image.dtype)


class DetectorGrounder:
    """A transformers zero-shot object detector from a local directory (model + processor, save_pretrained layout).

    threshold: the least detection score a box needs. max_boxes: the most boxes kept per phrase, best first.
    Each phrase is detected on its own (one batch row per phrase): OWL-ViT's post-processing gives a box to the
    query it matches best, so phrases asked together would take boxes from each other, and a caption's grounding
    would depend on the other captions of the call.
    """

    def __init__(self, model_path: str, threshold: float = 0.1, max_boxes: int = 1, device: str | None = None):
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        raise_param_problems(count_problems({"max_boxes": max_boxes}, ["max_boxes"]))
        if not Path(model_path).is_dir():
            raise UsageError(f"detector model_path {model_path}: not a local directory (give a zero-shot object "
                             f"detector saved with save_pretrained, and its processor: OWL-ViT, OWLv2, Grounding DINO)")
        try:
            self.model_type = AutoConfig.from_pretrained(model_path).model_type
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"detector model_path {model_path}: no readable model config ({first_line(e)})") from e
        if self.model_type not in OWL_TYPES + GROUNDING_DINO_TYPES:
            raise UsageError(f"detector model_path {model_path}: unsupported detector type {self.model_type!r} "
                             f"(supported: {', '.join(OWL_TYPES + GROUNDING_DINO_TYPES)})")
        try:
            self.processor = AutoProcessor.from_pretrained(model_path)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model_path).eval()
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"detector model_path {model_path}: cannot load the detector and its processor "
                             f"({first_line(e)})") from e
        if device is not None:
            self.model.to(device)
        self.model_path, self.threshold, self.max_boxes = model_path, threshold, max_boxes
        try:  # a processor's backend can be missing (OWLv2's PIL image processor needs scipy): say so now, once
            self._inputs(torch.zeros(3, 8, 8, dtype=torch.uint8), ["x"])
        except ImportError as e:
            raise UsageError(f"detector model_path {model_path}: its processor cannot run here "
                             f"({first_line(e)})") from e

    def to(self, device: str | torch.device) -> "DetectorGrounder":
        """Run the detector on `device` (the module moves it beside its CLIP when the test loop starts)."""
        self.model.to(device)
        return self

    def _inputs(self, image: torch.Tensor, phrases: Sequence[str]) -> Any:
        """The processor's inputs for one batch row per phrase, each the image with that phrase alone."""
        from PIL import Image

        picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        return self.processor(images=[picture] * len(phrases), text=[[p] for p in phrases], return_tensors="pt",
                              padding=True, truncation=True).to(self.model.device)

    def boxes(self, image: torch.Tensor, phrases: Sequence[str]) -> list[list[Box]]:
        """Per phrase, its boxes scoring >= threshold, best first, at most max_boxes, in the image's pixels."""
        if not phrases:
            return []
        height, width = image.shape[-2:]
        rows = len(phrases)
        inputs = self._inputs(image, phrases)
        with torch.no_grad():
            outputs = self.model(**inputs)
        sizes = [(height, width)] * rows
        # threshold 0 here, ours below: the same rule (>= threshold) whichever detector's post-processing it is
        if self.model_type in GROUNDING_DINO_TYPES:
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=sizes)
        else:
            results = self.processor.post_process_grounded_object_detection(outputs, threshold=0.0,
                                                                             target_sizes=sizes)
        found = []
        for result in results:
            order = torch.argsort(result["scores"], descending=True, stable=True)
            ranked = [(float(result["scores"][i]), result["boxes"][i].tolist()) for i in order.tolist()]
            kept = clipped_boxes([box for score, box in ranked if score >= self.threshold], height, width)
            found.append(kept[: self.max_boxes])
        return found

    def ground(self, image: torch.Tensor, image_index: int, entities: Sequence[Entity],
               fields: Mapping[str, Any]) -> list[list[Box]]:
        return self.boxes(image, [e.phrase for e in entities])


class DataBoxes:
    """Boxes the item gives: fields["boxes"][image_index] is {phrase or noun: [[x0, y0, x1, y1], ...]}, looked up by
    the entity's phrase ("red circle"), then by its noun ("circle"); an entity under neither has none."""

    def boxes(self, fields: Mapping[str, Any], image_index: int, entities: Sequence[Entity]) -> list[list[list[float]]]:
        per_image = fields.get("boxes")
        table = per_image[image_index] if isinstance(per_image, list) and image_index < len(per_image) else None
        if table is None:
            return [[] for _ in entities]
        if not isinstance(table, Mapping):
            raise UsageError(f"boxes[{image_index}]: expected an object {{phrase or noun: [[x0, y0, x1, y1], ...]}}, "
                             f"got {type(table).__name__}")
        found = []
        for entity in entities:
            key = entity.phrase if entity.phrase in table else entity.noun
            boxes = table.get(key, [])
            if not (isinstance(boxes, list) and all(_is_box(b) for b in boxes)):
                raise UsageError(f"boxes[{image_index}][{key!r}]: expected a list of [x0, y0, x1, y1], got {boxes!r}")
            found.append([[float(v) for v in b] for b in boxes])
        return found

    def ground(self, image: torch.Tensor, image_index: int, entities: Sequence[Entity],
               fields: Mapping[str, Any]) -> list[list[Box]]:
        height, width = image.shape[-2:]
        return [clipped_boxes(b, height, width) for b in self.boxes(fields, image_index, entities)]


def _is_box(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))

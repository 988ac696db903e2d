"""ComCLIP's score (arXiv 2211.13854): the image embedding enriched with its entity and relation sub-images.

Per caption and image: v is the image's normalised CLIP embedding, t the caption's. Each parsed entity (subject,
object) is a sub-image -- the image blacked out outside the entity's boxes (grounding.py) -- and the relation a
sub-image of the union of the subject's and the object's regions; e_i is a sub-image's normalised embedding and
s_i = cos(e_i, its phrase's embedding) ("red circle", or the relation words "left of"). With the weights
w = fusion_weights(s), the fused embedding is v' = v + sum_i w_i e_i and the score is cos(v', t).

An entity the grounder does not find uses the whole image (e_i = v); when no entity is found, v' = 2v and the
score is plain CLIP's. A caption no parser can parse is scored by plain CLIP, its failure recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from datamodules.errors import count_problems, raise_param_problems
from datamodules.transforms import center_crop, normalize, resize_shorter
from lightning_modules.comclip.grounding import blackout, region_mask
from lightning_modules.comclip.parsing import CaptionParse, ParseFailure, ParserChain

WEIGHTINGS = ("ratio", "softmax")


def fusion_weights(scores: torch.Tensor, mode: str = "ratio", temperature: float = 0.01) -> torch.Tensor:
    """[k] weights summing to 1. ratio: s_i / sum_j s_j over the scores clamped at 0 -- cosines can be negative,
    and a negative weight would subtract a sub-image, or a sum near 0 blow the weights up; all <= 0 gives uniform
    weights (no sub-image matches its phrase better than another). softmax: softmax(s / temperature)."""
    if mode not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {mode!r}")
    if scores.numel() == 0:
        return scores.clone()
    if mode == "softmax":
        return torch.softmax(scores / temperature, dim=-1)
    positive = scores.clamp_min(0)
    total = positive.sum()
    if total <= 0:
        return torch.full_like(scores, 1.0 / scores.numel())
    return positive / total


@dataclass
class MatchScores:
    """clip and comclip: [n_captions, n_images] cosines. parses: per caption {"parser": name or None, "failure":
    reason or None}. details: [caption][image] {"weights": {role: w}, "found": {role: bool}}."""
    clip: torch.Tensor
    comclip: torch.Tensor
    parses: list[dict[str, str | None]]
    details: list[list[dict[str, dict[str, Any]]]]


class ComCLIPScorer:
    """ComCLIP scores of captions against images with a FrozenCLIP (lightning_modules/frozen_clip.py).

    parser: a ParserChain (parsing.build_parser). grounder: a DetectorGrounder or DataBoxes (grounding.py), or None
    (every entity uses the whole image). weighting / temperature: fusion_weights' mode and softmax temperature.
    batch_size: images per image-encoder pass. Runs without gradients on the CLIP's device.
    """

    def __init__(self, clip: Any, parser: ParserChain, grounder: Any = None, weighting: str = "ratio",
                 temperature: float = 0.01, batch_size: int = 64):
        problems = count_problems({"batch_size": batch_size}, ["batch_size"])
        if weighting not in WEIGHTINGS:
            problems.append(("weighting", f"must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}"))
        if not temperature > 0:
            problems.append(("temperature", f"must be > 0, got {temperature}"))
        raise_param_problems(problems)
        self.clip, self.parser, self.grounder = clip, parser, grounder
        self.weighting, self.temperature, self.batch_size = weighting, temperature, batch_size

    # -- CLIP ---------------------------------------------------------------------------------------------------
    def pixels(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 [3, H, W] images -> CLIP inputs [N, 3, S, S] (resize shorter side, centre crop, CLIP mean/std)."""
        size = self.clip.image_size
        return torch.stack([normalize(center_crop(resize_shorter(image.cpu(), size), size)) for image in images])

    def image_embeddings(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, D] normalised embeddings, in passes of batch_size images."""
        weight = next(iter(self.clip.parameters()))
        chunks = [self.clip.encode_image(self.pixels(images[i:i + self.batch_size]).to(weight.device, weight.dtype))
                  for i in range(0, len(images), self.batch_size)]
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    def text_embeddings(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        unique = list(dict.fromkeys(texts))
        embedded = F.normalize(self.clip.encode_texts(unique).float(), dim=-1)
        return dict(zip(unique, embedded))

    # -- parsing and grounding ----------------------------------------------------------------------------------
    def parse_all(self, captions: Sequence[str], fields: Mapping[str, Any]
                  ) -> tuple[list[CaptionParse | None], list[dict[str, str | None]]]:
        parses, records = [], []
        for caption in captions:
            try:
                name, parse = self.parser.parse_named(caption, fields)
                parses.append(parse)
                records.append({"parser": name, "failure": None})
            except ParseFailure as e:
                parses.append(None)
                records.append({"parser": None, "failure": str(e)})
        return parses, records

    def regions(self, images: Sequence[torch.Tensor], parses: Sequence[CaptionParse | None],
                fields: Mapping[str, Any]) -> list[dict]:
        """Per image {entity: its boxes}, each image grounded once for all the entities of the call's captions."""
        entities = list(dict.fromkeys(e for p in parses if p is not None for e in p.entities))
        if self.grounder is None or not entities:
            return [{e: [] for e in entities} for _ in images]
        return [dict(zip(entities, self.grounder.ground(image, j, entities, fields))) for j, image in enumerate(images)]

    # -- scores -------------------------------------------------------------------------------------------------
    def score(self, images: Sequence[torch.Tensor], captions: Sequence[str], fields: Mapping[str, Any]) -> MatchScores:
        with torch.no_grad():
            return self._score(list(images), list(captions), fields)

    def _score(self, images: list[torch.Tensor], captions: list[str], fields: Mapping[str, Any]) -> MatchScores:
        parses, records = self.parse_all(captions, fields)
        boxes = self.regions(images, parses, fields)
        # Sub-images: (image index, region key) -> position among the embedded images; a region is the whole image
        # (key None: its embedding is v) or the union of the listed boxes.
        sub_images: dict[tuple[int, tuple | None], int] = {(j, None): j for j in range(len(images))}
        pictures = list(images)
        plans = []  # per (caption, image): [(role, region key, phrase, found)]
        for parse in parses:
            row = []
            for j, image in enumerate(images):
                if parse is None:
                    row.append([])
                    continue
                roles = [("subject", parse.subject)] + ([("object", parse.object)] if parse.object else [])
                plan = [(role, tuple(boxes[j][entity]) or None, entity.phrase, bool(boxes[j][entity]))
                        for role, entity in roles]
                if parse.relation and parse.object is not None:
                    whole = any(key is None for _, key, _, _ in plan)  # an entity not found is the whole image
                    union = None if whole else tuple(b for _, key, _, _ in plan for b in key)
                    plan.append(("relation", union, parse.relation, all(found for *_, found in plan)))
                for _, key, _, _ in plan:
                    if (j, key) not in sub_images:
                        height, width = image.shape[-2:]
                        sub_images[(j, key)] = len(pictures)
                        pictures.append(blackout(image, region_mask(height, width, key)))
                row.append(plan)
            plans.append(row)

        embedded = self.image_embeddings(pictures)
        phrases = [phrase for row in plans for plan in row for _, _, phrase, _ in plan]
        texts = self.text_embeddings(captions + phrases)
        caption_embeddings = torch.stack([texts[c] for c in captions])
        clip_scores = caption_embeddings @ embedded[: len(images)].T
        comclip = clip_scores.clone()
        details = []
        for i, (caption, row) in enumerate(zip(captions, plans)):
            detail_row = []
            for j, plan in enumerate(row):
                if not plan:
                    detail_row.append({"weights": {}, "found": {}})
                    continue
                parts = torch.stack([embedded[sub_images[(j, key)]] for _, key, _, _ in plan])
                similarity = (parts * torch.stack([texts[phrase] for _, _, phrase, _ in plan])).sum(-1)
                weights = fusion_weights(similarity, self.weighting, self.temperature)
                fused = embedded[j] + weights @ parts
                comclip[i, j] = F.cosine_similarity(fused, texts[caption], dim=0)
                detail_row.append({"weights": {role: float(w) for (role, *_), w in zip(plan, weights)},
                                   "found": {role: found for role, _, _, found in plan}})
            details.append(detail_row)
        return MatchScores(clip=clip_scores.cpu(), comclip=comclip.cpu(), parses=records, details=details)

import json

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import ParamError
from datamodules.transforms import center_crop, normalize, resize_shorter
from lightning_modules.comclip.fusion import ComCLIPScorer, fusion_weights
from lightning_modules.comclip.grounding import DataBoxes, DetectorGrounder, blackout, region_mask
from lightning_modules.comclip.parsing import ParserChain, RuleParser, TripletParser
from tests.comclip.test_grounding import BLUE_BOX, RED_BOX, drawn_image

CAPTIONS = ["a red circle left of a blue square", "a blue circle left of a red square", "the sky is blue"]
BOXES = {"boxes": [{"red circle": [list(RED_BOX)], "square": [list(BLUE_BOX)]}, {}]}


def images() -> list[torch.Tensor]:
    first = drawn_image()
    return [first, first.flip(-1).contiguous()]  # two images of different content


def scorer(clip, grounder=None, **kwargs) -> ComCLIPScorer:
    return ComCLIPScorer(clip, ParserChain([TripletParser(), RuleParser()]), grounder, **kwargs)


# ------------------------------------------------------------------------------------------------ weights
def test_ratio_weights_sum_to_one_and_ignore_negative_scores():
    weights = fusion_weights(torch.tensor([0.5, -0.2, 0.3]))
    assert weights.tolist() == pytest.approx([0.625, 0.0, 0.375])
    assert fusion_weights(torch.tensor([0.2, 0.6])).tolist() == pytest.approx([0.25, 0.75])
    assert fusion_weights(torch.tensor([-0.1, -0.4, 0.0])).tolist() == pytest.approx([1 / 3] * 3)  # none positive
    assert fusion_weights(torch.tensor([])).numel() == 0


def test_softmax_weights_sum_to_one():
    scores = torch.tensor([0.31, -0.05, 0.28])
    weights = fusion_weights(scores, "softmax", temperature=0.01)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert torch.allclose(weights, torch.softmax(scores / 0.01, 0))
    assert weights.argmax() == 0 and weights[1] < 1e-10
    assert torch.allclose(fusion_weights(scores, "softmax", temperature=100.0), torch.full((3,), 1 / 3), atol=1e-3)
    with pytest.raises(ValueError, match="weighting must be one of ratio, softmax, got 'max'"):
        fusion_weights(scores, "max")


def test_scorer_parameter_problems(tiny_clip):
    with pytest.raises(ParamError) as error:
        scorer(tiny_clip, weighting="mean", temperature=0, batch_size=0)
    assert [name for name, _ in error.value.problems] == ["batch_size", "weighting", "temperature"]


# ------------------------------------------------------------------------------------------------ scores
def test_nothing_found_scores_as_plain_clip(tiny_clip):
    pictures = images()
    for grounder, fields in [(None, {}), (DataBoxes(), {}), (DataBoxes(), {"boxes": [{"star": [[0, 0, 4, 4]]}]})]:
        result = scorer(tiny_clip, grounder).score(pictures, CAPTIONS[:2], fields)
        assert result.clip.shape == result.comclip.shape == (2, 2)
        assert torch.allclose(result.comclip, result.clip, atol=1e-6)
        assert result.details[0][1]["found"] == {"subject": False, "object": False, "relation": False}
        assert sum(result.details[0][1]["weights"].values()) == pytest.approx(1.0)


def test_plain_clip_is_clip_preprocessing_and_cosine(tiny_clip):
    pictures = images()
    result = scorer(tiny_clip).score(pictures, CAPTIONS[:1], {})
    pixels = torch.stack([normalize(center_crop(resize_shorter(p, 16), 16)) for p in pictures])
    v = F.normalize(tiny_clip.encode_image(pixels), dim=-1)
    t = F.normalize(tiny_clip.encode_texts(CAPTIONS[:1]), dim=-1)
    assert torch.allclose(result.clip, t @ v.T, atol=1e-5)


def test_a_parse_failure_scores_as_plain_clip_and_is_recorded(tiny_clip):
    result = scorer(tiny_clip, DataBoxes()).score(images(), CAPTIONS, BOXES)
    assert result.parses[2] == {"parser": None, "failure": "triplets: the item has no triplet; rules: 'is' is "
                                                           "followed by neither a spatial relation nor a verb"}
    assert result.parses[0] == {"parser": "rules", "failure": None}
    assert torch.equal(result.comclip[2], result.clip[2])
    assert result.details[2] == [{"weights": {}, "found": {}}, {"weights": {}, "found": {}}]
    json.dumps({"parses": result.parses, "details": result.details})  # what the module writes


def test_fused_score_is_the_hand_computation(tiny_clip):
    """Caption 0 on image 0: subject "red circle" and object "square" (by noun) have boxes, the relation is their
    union; image 1 has none, so its score is plain CLIP's."""
    pictures = images()
    result = scorer(tiny_clip, DataBoxes()).score(pictures, CAPTIONS[:1], BOXES)

    def embed(image):
        pixels = normalize(center_crop(resize_shorter(image, 16), 16))[None]
        return F.normalize(tiny_clip.encode_image(pixels), dim=-1)[0]

    with torch.no_grad():
        v = embed(pictures[0])
        h, w = pictures[0].shape[-2:]
        masks = [region_mask(h, w, [RED_BOX]), region_mask(h, w, [BLUE_BOX]), region_mask(h, w, [RED_BOX, BLUE_BOX])]
        parts = torch.stack([embed(blackout(pictures[0], m)) for m in masks])
        phrases = F.normalize(tiny_clip.encode_texts(["red circle", "blue square", "left of"]), dim=-1)
        s = (parts * phrases).sum(-1)
        assert (s > 0).all()  # the ratio of the scores themselves (no clamping at work)
        weights = s / s.sum()
        t = F.normalize(tiny_clip.encode_texts(CAPTIONS[:1]), dim=-1)[0]
        expected = F.cosine_similarity(v + weights @ parts, t, dim=0)
    assert float(result.comclip[0, 0]) == pytest.approx(float(expected), abs=1e-5)
    assert abs(float(result.comclip[0, 0] - result.clip[0, 0])) > 1e-4  # the sub-images changed the score
    assert float(result.comclip[0, 1]) == pytest.approx(float(result.clip[0, 1]), abs=1e-6)
    detail = result.details[0][0]
    assert detail["found"] == {"subject": True, "object": True, "relation": True}
    assert list(detail["weights"].values()) == pytest.approx(weights.tolist(), abs=1e-6)


def all_weights(result) -> list[float]:
    return [w for row in result.details for d in row for w in d["weights"].values()]


def test_batch_size_and_weighting(tiny_clip):
    pictures = images()
    big = scorer(tiny_clip, DataBoxes(), batch_size=64).score(pictures, CAPTIONS, BOXES)
    small = scorer(tiny_clip, DataBoxes(), batch_size=1).score(pictures, CAPTIONS, BOXES)
    assert torch.allclose(big.comclip, small.comclip, atol=1e-5)
    assert all_weights(big) == pytest.approx(all_weights(small), abs=1e-6) and len(all_weights(big)) == 12
    soft = scorer(tiny_clip, DataBoxes(), weighting="softmax", temperature=0.01).score(pictures, CAPTIONS, BOXES)
    assert sum(soft.details[0][0]["weights"].values()) == pytest.approx(1.0)
    assert torch.equal(soft.clip, big.clip)


def test_detector_path_end_to_end(tiny_clip, tiny_owl):
    pictures = images()
    found = scorer(tiny_clip, DetectorGrounder(str(tiny_owl), threshold=0.0)).score(pictures, CAPTIONS[:2], {})
    assert all(d["found"] == {"subject": True, "object": True, "relation": True} for row in found.details
               for d in row)
    assert not torch.allclose(found.comclip, found.clip, atol=1e-4)
    none = scorer(tiny_clip, DetectorGrounder(str(tiny_owl), threshold=1.5)).score(pictures, CAPTIONS[:2], {})
    assert torch.allclose(none.comclip, none.clip, atol=1e-6) and torch.allclose(none.clip, found.clip, atol=1e-6)
    assert not any(any(d["found"].values()) for row in none.details for d in row)


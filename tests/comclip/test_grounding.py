import json

import numpy as np
import pytest
import torch

from datamodules.errors import ParamError, UsageError
from lightning_modules.comclip.grounding import DataBoxes, DetectorGrounder, blackout, clipped_boxes, region_mask
from lightning_modules.comclip.parsing import Entity

RED_BOX = (4, 6, 14, 12)  # x0, y0, x1, y1
BLUE_BOX = (20, 2, 28, 18)


def drawn_image() -> torch.Tensor:
    """uint8 [3, 24, 32]: a grey background with a red and a blue rectangle drawn by PIL."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (32, 24), (128, 128, 128))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((RED_BOX[0], RED_BOX[1], RED_BOX[2] - 1, RED_BOX[3] - 1), fill=(255, 0, 0))  # PIL: inclusive
    draw.rectangle((BLUE_BOX[0], BLUE_BOX[1], BLUE_BOX[2] - 1, BLUE_BOX[3] - 1), fill=(0, 0, 255))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def test_region_mask_is_the_union_of_the_boxes_clipped():
    mask = region_mask(24, 32, [RED_BOX, BLUE_BOX])
    assert mask.dtype == torch.bool and mask.shape == (24, 32)
    assert int(mask.sum()) == 10 * 6 + 8 * 16
    assert mask[6, 4] and mask[11, 13] and not mask[12, 13] and not mask[6, 14] and mask[2, 20] and not mask[0, 0]
    assert region_mask(24, 32, []).all()
    assert int(region_mask(24, 32, [(-5, -5, 2.2, 1.5)]).sum()) == 3 * 2  # clipped, partly covered pixels count
    assert not region_mask(24, 32, [(40, 30, 50, 40)]).any()  # a given box outside the image covers nothing


def test_blackout_keeps_only_the_masked_pixels_on_a_drawn_image():
    image = drawn_image()
    red = blackout(image, region_mask(24, 32, [RED_BOX]))
    assert red.dtype == torch.uint8 and red.shape == image.shape
    assert (red[:, 6:12, 4:14] == torch.tensor([255, 0, 0]).view(3, 1, 1)).all()  # the red rectangle kept
    assert int(red.sum()) == 255 * 60  # nothing else: grey and blue are black
    both = blackout(image, region_mask(24, 32, [RED_BOX, BLUE_BOX]))  # the relation sub-image: the union
    assert (both[:, 2:18, 20:28] == torch.tensor([0, 0, 255]).view(3, 1, 1)).all()
    assert int(both.sum()) == 255 * 60 + 255 * 128
    assert (image[:, 0, 0] == 128).all()  # the input is left as it was
    assert torch.equal(blackout(image, region_mask(24, 32, [])), image)
    with pytest.raises(ValueError, match="does not match"):
        blackout(image, torch.ones(3, 3, dtype=torch.bool))


def test_clipped_boxes_drop_what_covers_nothing():
    assert clipped_boxes([(-3, 2, 50, 10), (5, 5, 5, 9), (40, 0, 45, 3)], 24, 32) == [(0.0, 2.0, 32.0, 10.0)]


def test_data_boxes_by_phrase_then_noun():
    fields = {"boxes": [{"red circle": [list(RED_BOX)], "square": [[0, 0, 100, 4]]}, {}]}
    grounder, image = DataBoxes(), drawn_image()
    circle, square, star = Entity("circle", ("red",)), Entity("square", ("blue",)), Entity("star")
    assert grounder.ground(image, 0, [circle, square, star], fields) == [[(4.0, 6.0, 14.0, 12.0)],
                                                                        [(0.0, 0.0, 32.0, 4.0)], []]
    assert grounder.ground(image, 1, [circle], fields) == [[]]
    assert grounder.ground(image, 5, [circle], fields) == [[]]  # no table for that image
    assert grounder.ground(image, 0, [circle], {}) == [[]]
    json.dumps(grounder.ground(image, 0, [circle], fields))
    with pytest.raises(UsageError, match=r"boxes\[0\]\['circle'\]: expected a list of \[x0, y0, x1, y1\]"):
        grounder.ground(image, 0, [Entity("circle")], {"boxes": [{"circle": [[1, 2, 3]]}]})
    with pytest.raises(UsageError, match=r"boxes\[0\]: expected an object"):
        grounder.ground(image, 0, [circle], {"boxes": [[1, 2, 3, 4]]})


# ------------------------------------------------------------------------------------------------ detectors
def corner_boxes(pred_boxes: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    cx, cy, w, h = pred_boxes.unbind(-1)
    return torch.stack([(cx - w / 2) * scale_x, (cy - h / 2) * scale_y, (cx + w / 2) * scale_x,
                        (cy + h / 2) * scale_y], -1)


def check_detector(path, pad_to_square: bool):
    """Threshold 0 finds boxes for every phrase, inside the image, ranked and placed as the raw model output says;
    a threshold above 1 finds none."""
    image = drawn_image()  # 24 x 32, not square: boxes must come back in its own pixels
    phrases = ["red circle", "blue square"]
    grounder = DetectorGrounder(str(path), threshold=0.0, max_boxes=3)
    found = grounder.boxes(image, phrases)
    assert len(found) == 2 and all(1 <= len(boxes) <= 3 for boxes in found)
    for boxes in found:
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 24
    assert grounder.ground(image, 0, [Entity("circle", ("red",)), Entity("square", ("blue",))], {}) == found
    # the best box of "red circle" is the raw output's best query, scaled to the image and clipped
    inputs = grounder._inputs(image, ["red circle"])
    with torch.no_grad():
        outputs = grounder.model(**inputs)
    scores = torch.sigmoid(outputs.logits[0].max(-1).values)
    side = 32 if pad_to_square else None  # OWLv2 pads to a square before resizing
    raw = corner_boxes(outputs.pred_boxes[0], side or 32, side or 24)
    expected = clipped_boxes(raw[scores.argsort(descending=True, stable=True)].tolist(), 24, 32)[0]
    assert found[0][0] == pytest.approx(expected, abs=1e-3)
    assert DetectorGrounder(str(path), threshold=1.5).boxes(image, phrases) == [[], []]
    assert grounder.boxes(image, []) == []
    assert grounder.boxes(image, ["red circle"]) == found[:1]  # a phrase's boxes do not depend on the others asked


def test_owlvit_detector(tiny_owl):
    grounder = DetectorGrounder(str(tiny_owl))
    assert grounder.model_type == "owlvit"
    assert grounder.to("meta") is grounder and next(grounder.model.parameters()).device.type == "meta"
    check_detector(tiny_owl, pad_to_square=False)


def test_owlv2_detector(tmp_path):
    """OWLv2's image processor without torchvision is the PIL one, which needs scipy: without it the grounder says
    so when built, in one line."""
    import importlib.util

    from tests.comclip.tiny_models import write_tiny_owl

    path = write_tiny_owl(tmp_path / "owlv2", version=2)
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(UsageError, match="its processor cannot run here .*requires the scipy library") as error:
            DetectorGrounder(str(path))
        assert len(error.value.lines) == 1
    else:
        check_detector(path, pad_to_square=True)


def test_grounding_dino_detector(tmp_path):
    from tests.comclip.tiny_models import write_tiny_grounding_dino

    path = write_tiny_grounding_dino(tmp_path / "gdino")
    grounder = DetectorGrounder(str(path), threshold=0.0, max_boxes=2)
    assert grounder.model_type == "grounding-dino"
    found = grounder.boxes(drawn_image(), ["red circle", "blue square", "star"])
    assert len(found) == 3 and all(1 <= len(boxes) <= 2 for boxes in found)
    assert all(0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 24 for boxes in found for x0, y0, x1, y1 in boxes)
    assert DetectorGrounder(str(path), threshold=1.5).boxes(drawn_image(), ["red circle"]) == [[]]


def test_detector_path_problems(tmp_path, tiny_clip):
    with pytest.raises(UsageError, match="not a local directory") as error:
        DetectorGrounder(str(tmp_path / "absent"))
    assert len(error.value.lines) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no readable model config"):
        DetectorGrounder(str(tmp_path / "empty"))
    clip_dir = tmp_path / "clip"
    tiny_clip.model.save_pretrained(clip_dir)
    with pytest.raises(UsageError, match="unsupported detector type 'clip' \\(supported: owlvit, owlv2, "
                                         "grounding-dino\\)") as error:
        DetectorGrounder(str(clip_dir))
    assert len(error.value.lines) == 1
    with pytest.raises(ParamError, match="max_boxes: must be >= 1"):
        DetectorGrounder(str(clip_dir), max_boxes=0)

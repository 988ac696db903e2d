"""Condition dropout, the union region and the same-type split (lightning_modules/flexecontrol/conditions.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.errors import ParamError
from lightning_modules.flexecontrol.conditions import ConditionDropout, split_into_regions, union_region


def test_condition_dropout_rates_match_keep_all_drop_all_and_each():
    present = {"canny": torch.ones(20000, 2, dtype=torch.bool), "depth": torch.ones(20000, 1, dtype=torch.bool)}
    kept = ConditionDropout(keep_all=0.1, drop_all=0.1, each=0.5)(present, torch.Generator().manual_seed(0))
    per_sample = torch.cat([kept["canny"], kept["depth"]], dim=1)
    all_kept, none_kept = per_sample.all(1).float().mean(), (~per_sample).all(1).float().mean()
    # all kept: 0.1 + 0.8 * 0.5^3; none kept: 0.1 + 0.8 * 0.5^3
    assert abs(float(all_kept) - 0.2) < 0.015 and abs(float(none_kept) - 0.2) < 0.015
    assert abs(float(per_sample.float().mean()) - (0.1 + 0.8 * 0.5)) < 0.015


def test_condition_dropout_never_adds_an_absent_input_and_is_seeded():
    present = {"canny": torch.tensor([[True, False], [False, False]])}
    dropout = ConditionDropout(keep_all=1.0, drop_all=0.0)
    kept = dropout(present, torch.Generator().manual_seed(1))
    assert torch.equal(kept["canny"], present["canny"])
    half = ConditionDropout()
    a = half({"x": torch.ones(64, 3, dtype=torch.bool)}, torch.Generator().manual_seed(5))["x"]
    b = half({"x": torch.ones(64, 3, dtype=torch.bool)}, torch.Generator().manual_seed(5))["x"]
    assert torch.equal(a, b)


def test_condition_dropout_rejects_probabilities_that_cannot_be():
    with pytest.raises(ParamError) as e:
        ConditionDropout(keep_all=0.7, drop_all=0.6, each=1.5)
    names = [name for name, _ in e.value.problems]
    assert names == ["each", "drop_all"]


def test_union_region_covers_present_inputs_only():
    maps = {"canny": torch.zeros(1, 2, 1, 8, 8), "seg": torch.zeros(1, 1, 1, 8, 8)}
    maps["canny"][0, 0, 0, 0, 0] = 1.0   # present
    maps["canny"][0, 1, 0, 7, 7] = 1.0   # absent slot: must not count
    maps["seg"][0, 0, 0, 4, 4] = 0.5
    present = {"canny": torch.tensor([[True, False]]), "seg": torch.tensor([[True]])}
    region = union_region(maps, present, (4, 4))
    assert region.shape == (1, 1, 4, 4)
    assert region[0, 0, 0, 0] == 1 and region[0, 0, 2, 2] == 1 and region[0, 0, 3, 3] == 0
    assert int(region.sum()) == 2


def test_split_into_regions_gives_disjoint_parts_that_make_the_whole():
    image = np.zeros((12, 12), np.uint8)
    image[1:3, 1:3] = 255
    image[8:11, 8:11] = 200
    image[1:2, 9:11] = 100
    parts = split_into_regions(image, image, max_parts=3)
    assert len(parts) == 3
    assert np.array_equal(np.maximum.reduce(parts), image)
    on = [p > 0 for p in parts]
    assert not (on[0] & on[1]).any() and not (on[1] & on[2]).any() and not (on[0] & on[2]).any()
    assert [int(p.sum() > 0) for p in parts] == [1, 1, 1]
    merged = split_into_regions(image, image, max_parts=2)  # the smallest regions merge into the last part
    assert len(merged) == 2 and np.array_equal(np.maximum.reduce(merged), image)
    assert len(split_into_regions(np.zeros((4, 4)), np.zeros((4, 4)), 3)) == 1
    with pytest.raises(ValueError):
        split_into_regions(image, image, max_parts=0)


def test_condition_inputs_are_checked_alike_for_every_variant_and_all_at_once():
    from lightning_modules.flexecontrol.conditions import check_condition_inputs

    channels = {"canny": 1, "depth": 1}
    good = {"canny": torch.zeros(2, 1, 1, 8, 8)}, {"canny": torch.ones(2, 1, dtype=torch.bool)}
    check_condition_inputs(*good, None, channels, batch=2, size=(8, 8), owner="branch")
    check_condition_inputs({}, {}, None, channels, batch=2, size=(8, 8), owner="branch")  # no condition at all
    with pytest.raises(ValueError) as e:
        check_condition_inputs({"canny": torch.zeros(3, 1, 3, 4, 4), "pose": torch.zeros(2, 1, 1, 8, 8)},
                               {"canny": torch.ones(3, 1)}, {"hed": 1.0}, channels, batch=2, size=(8, 8),
                               owner="adapter")
    problems = str(e.value).split("; ")
    assert problems == [
        "conditions: unknown condition type 'pose' (this adapter has canny, depth)",
        "strengths: unknown condition type 'hed' (this adapter has canny, depth)",
        "present['pose']: missing (every type in conditions needs its present mask)",
        "conditions['canny']: expected batch 2 (the sample's), got 3",
        "conditions['canny']: expected 1 channel(s), got 3",
        "conditions['canny']: expected maps of size 8x8 (the sample's size times the condition scale), got 4x4",
        "present['canny']: expected a bool tensor, got torch.float32"]
    with pytest.raises(TypeError):
        check_condition_inputs([], {}, None, channels, batch=2, size=(8, 8), owner="branch")

"""Control shards as FlexEControl reads them (lightning_modules/flexecontrol/data.py)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from datamodules.errors import ParamError
from datamodules.writers.common import ShardOptions
from lightning_modules.flexecontrol.data import ControlData, ControlSample, condition_keys
from lightning_modules.flexecontrol.shards import write_synthetic_control_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("control") / "train"
    write_synthetic_control_shards(out, num=8, size=16, options=ShardOptions(seed=0))
    return out


def first_batch(data: ControlData) -> dict:
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_a_batch_has_every_type_in_its_slots(shards):
    data = ControlData(train=str(shards), condition_channels={"canny": 1, "seg": 1, "depth": 1}, resolution=16,
                       max_inputs_per_type=2, batch_size=4, num_workers=0, verify="size")
    batch = first_batch(data)
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert -1.0 <= float(batch["pixel_values"].min()) and float(batch["pixel_values"].max()) <= 1.0
    for name in ("canny", "seg", "depth"):
        assert batch[f"cond.{name}"].shape == (4, 2, 1, 16, 16)
        assert batch[f"present.{name}"].tolist() == [[True, False]] * 4
        assert float(batch[f"cond.{name}"][:, 1].abs().sum()) == 0.0  # the empty slot is zeros
    assert all(isinstance(c, str) and c.startswith("a ") for c in batch["caption"])


def test_a_model_may_read_a_subset_of_the_types_in_the_shards(shards):
    batch = first_batch(ControlData(train=str(shards), condition_channels={"depth": 1}, resolution=16,
                                    batch_size=2, num_workers=0, verify="size"))
    assert [k for k in batch if k.startswith("cond.")] == ["cond.depth"]


def test_same_type_split_gives_region_disjoint_inputs(shards):
    always = ControlSample({"seg": 1}, 16, 4, ["seg"], 1.0, {}, 2, train=True, seed=0)
    never = ControlSample({"seg": 1}, 16, 4, ["seg"], 1.0, {}, 2, train=False, seed=0)
    seg = np.zeros((16, 16), np.uint8)
    seg[1:4, 1:4], seg[10:14, 10:14] = 3, 3
    sample = {"__key__": "k", "png": torch.zeros(3, 16, 16, dtype=torch.uint8), "json": {"caption": "a x"},
              "seg.png": torch.from_numpy(np.stack([seg] * 3))}
    split = always.transform(dict(sample), 0)
    assert split["present.seg"].tolist() == [True, True, False, False]
    a, b = split["cond.seg"][0, 0] > 0, split["cond.seg"][1, 0] > 0
    assert a.any() and b.any() and not (a & b).any()
    assert torch.equal((a | b), torch.from_numpy(seg > 0))
    assert never.transform(dict(sample), 0)["present.seg"].tolist() == [True, False, False, False]  # not at eval


def test_token_regions_from_config_and_from_the_sample(shards):
    batch = first_batch(ControlData(train=str(shards), condition_channels={"seg": 1}, resolution=16,
                                    token_regions={"shape": "seg"}, batch_size=2, num_workers=0, verify="size"))
    words = [w.split("|")[0] for w in batch["region_words"]]
    assert all(w in c.split() for w, c in zip(words, batch["caption"]))
    assert batch["region_valid"][:, 0].all() and not batch["region_valid"][:, 1:].any()
    assert torch.equal(batch["region_masks"][:, 0] > 0, batch["cond.seg"][:, 0, 0] > 0)
    own = ControlSample({"seg": 1}, 8, 1, [], 0.0, {"shape": "seg"}, 2, train=False, seed=0)
    sample = {"__key__": "k", "png": torch.zeros(3, 8, 8, dtype=torch.uint8), "seg.png": torch.ones(3, 8, 8) * 255,
              "json": {"caption": "a cat on a mat", "shape": "mat", "token_regions": {"cat": "seg"}}}
    assert own.transform(sample, 0)["region_words"] == "cat"


def test_several_inputs_of_one_type_in_order_and_too_many_is_a_bad_sample():
    keys = condition_keys({"canny.2.png": b"", "canny.png": b"", "canny.1.png": b"", "png": b"", "json": b""})
    assert keys == {"canny": ["canny.png", "canny.1.png", "canny.2.png"]}
    sample = {"__key__": "k", "png": torch.zeros(3, 8, 8, dtype=torch.uint8), "json": {"caption": "a"},
              **{key: torch.full((3, 8, 8), 255, dtype=torch.uint8) for key in ("canny.1.png", "canny.2.png")}}
    two = ControlSample({"canny": 1}, 8, 2, [], 0.0, {}, 1, train=False, seed=0).transform(dict(sample), 0)
    assert two["present.canny"].tolist() == [True, True]
    with pytest.raises(KeyError, match="max_inputs_per_type=1"):
        ControlSample({"canny": 1}, 8, 1, [], 0.0, {}, 1, train=False, seed=0).transform(dict(sample), 0)
    with pytest.raises(KeyError, match="caption"):
        ControlSample({"canny": 1}, 8, 2, [], 0.0, {}, 1, train=False, seed=0).transform({**sample, "json": {}}, 0)


def test_bad_parameters_are_all_reported():
    with pytest.raises(ParamError) as e:
        ControlData(train="x", condition_channels={"canny": 2, "Bad-Name": 1}, resolution=4, max_inputs_per_type=0,
                    split_types=["depth"], token_regions={"shape": "seg"}, split_probability=2.0)
    names = {name for name, _ in e.value.problems}
    assert names == {"condition_channels.canny", "condition_channels.Bad-Name", "resolution", "max_inputs_per_type",
                     "split_types", "token_regions.shape", "split_probability"}

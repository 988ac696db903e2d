"""The generic image logger (callbacks/image_logger.py) on a toy LightningModule that offers image_rows."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from callbacks.image_logger import GAP, TENSORBOARD_TAG, ImageLogger, image_grid
from datamodules.errors import ParamError

SIDE = 6


class Colours(Dataset):
    """Sample i: a flat colour (i / 8 in red, 1 - i / 8 in blue) and a feature vector."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((2,), float(i)), "colour": torch.tensor([i / 8, 0.25, 1 - i / 8]), "name": f"s{i}"}


class Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.calls = 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch["x"]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch["x"]).square().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def image_rows(self, batch, generator):
        self.calls += 1
        n = batch["colour"].shape[0]
        flat = batch["colour"][:, :, None, None].expand(n, 3, SIDE, SIDE)
        return {"inputs": flat, "noise": torch.rand(n, 3, SIDE, SIDE, generator=generator)}


class NoRows(Toy):
    image_rows = None


def fit(tmp_path, module, callback, *, steps=4, tensorboard=True):
    loader = DataLoader(Colours(), batch_size=4)
    trainer = L.Trainer(max_steps=steps, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=1, default_root_dir=str(tmp_path), accelerator="cpu", devices=1,
                        logger=TensorBoardLogger(tmp_path, name="tb", version="") if tensorboard else False,
                        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, loader, loader)
    return trainer


def cell(png: np.ndarray, row: int, column: int) -> np.ndarray:
    top, left = GAP + row * (SIDE + GAP), GAP + column * (SIDE + GAP)
    return png[top:top + SIDE, left:left + SIDE]


def test_the_grid_stacks_rows_in_order_with_gaps_and_blank_ends():
    a = torch.zeros(2, 3, 4, 5)
    b = torch.ones(3, 3, 4, 5) * 0.5
    grid = image_grid({"a": a, "b": b}, gap=1)
    assert grid.shape == (3, 1 + 2 * 5, 1 + 3 * 6)
    assert torch.all(grid[:, 1:5, 1:6] == 0) and torch.all(grid[:, 1:5, 7:12] == 0)
    assert torch.all(grid[:, 1:5, 13:18] == 1)  # row a has two images: its third cell is blank
    assert torch.all(grid[:, 6:10, 13:18] == 0.5)
    assert torch.all(grid[:, 0, :] == 1) and torch.all(grid[:, 5, :] == 1)  # the gaps


@pytest.mark.parametrize("rows, message", [
    ({}, "no rows"),
    ({"a": torch.zeros(2, 1, 4, 4)}, "row 'a'"),
    ({"a": torch.zeros(0, 3, 4, 4)}, "row 'a'"),
    ({"a": [1, 2]}, "row 'a'"),
    ({"a": torch.zeros(1, 3, 4, 4), "b": torch.zeros(1, 3, 5, 4)}, "different image sizes"),
])
def test_rows_that_are_not_images_of_one_size_are_refused(rows, message):
    with pytest.raises(ValueError, match=message):
        image_grid(rows)


def test_grids_follow_the_validation_schedule_and_are_deterministic(tmp_path):
    module = Toy()
    fit(tmp_path, module, ImageLogger(every_n_val=2, max_images=3, seed=7))
    written = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert written == ["step_2.png", "step_4.png"]  # 4 validations, every 2nd; never the sanity check
    assert module.calls == 2
    pngs = []
    for name in written:
        with Image.open(tmp_path / "images" / name) as im:
            assert im.text["rows"] == "inputs,noise"
            pngs.append(np.asarray(im.convert("RGB")))
    first, second = pngs
    assert first.shape == (GAP + 2 * (SIDE + GAP), GAP + 3 * (SIDE + GAP), 3)  # 2 rows, max_images columns
    for column in range(3):  # the first validation batch's first three samples, in order
        expected = np.round(np.array([column / 8, 0.25, 1 - column / 8]) * 255)
        assert np.array_equal(cell(first, 0, column)[0, 0], expected)
    noise = (torch.rand(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(7)) * 255).round()
    assert np.array_equal(cell(first, 1, 0), noise[0].permute(1, 2, 0).numpy())
    assert np.array_equal(first, second)  # the same samples and the same generator seed each time


def test_grids_go_to_tensorboard_at_their_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    fit(tmp_path, Toy(), ImageLogger(every_n_val=1, max_images=2), steps=2)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={IMAGES: 0})
    events.Reload()
    assert TENSORBOARD_TAG in events.Tags()[IMAGES]
    images = events.Images(TENSORBOARD_TAG)
    assert [image.step for image in images] == [1, 2]
    assert (images[0].height, images[0].width) == (GAP + 2 * (SIDE + GAP),) * 2


def test_without_tensorboard_only_the_png_is_written_and_directory_is_honoured(tmp_path):
    out = tmp_path / "elsewhere"
    fit(tmp_path, Toy(), ImageLogger(directory=str(out)), steps=1, tensorboard=False)
    assert [p.name for p in out.iterdir()] == ["step_1.png"]
    assert not (tmp_path / "images").exists()


def test_a_module_without_image_rows_is_refused_at_fit_start(tmp_path):
    with pytest.raises(TypeError, match=r"NoRows has no image_rows\(batch, generator\)"):
        fit(tmp_path, NoRows(), ImageLogger())
    assert not (tmp_path / "images").exists()


def test_other_ranks_keep_nothing_and_draw_nothing(tmp_path):
    logger, module = ImageLogger(), Toy()
    trainer = SimpleNamespace(is_global_zero=False, sanity_checking=False, default_root_dir=str(tmp_path),
                              global_step=3, loggers=[])
    batch = next(iter(DataLoader(Colours(), batch_size=4)))
    logger.on_validation_batch_end(trainer, module, None, batch, 0)
    logger.on_validation_epoch_end(trainer, module)
    assert module.calls == 0 and logger.validations == 1 and not (tmp_path / "images").exists()


def test_bad_arguments_are_reported_together():
    with pytest.raises(ParamError) as e:
        ImageLogger(every_n_val=0, max_images=0)
    assert {name for name, _ in e.value.problems} == {"every_n_val", "max_images"}


def test_the_validation_count_is_checkpointed():
    logger = ImageLogger()
    logger.validations = 5
    again = ImageLogger()
    again.load_state_dict(logger.state_dict())
    assert again.validations == 5

"""Controllability metrics, evaluate_controllability and the ControllabilityEvaluator callback
(lightning_modules/flexecontrol/evaluation.py), with FlexEControlModule.image_rows through the ImageLogger."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from callbacks.image_logger import GAP, ImageLogger
from datamodules.errors import ParamError, UsageError
from datamodules.synthetic_shapes import draw_shape
from datamodules.writers.common import ShardOptions
from lightning_modules.diffusion.tiny import write_tiny_text_to_image
from lightning_modules.flexecontrol.data import ControlData
from lightning_modules.flexecontrol.evaluation import (BorderColourSegmenter, CLIPImageFeatures,
                                                       ControllabilityEvaluator, PipelineSegmenter, canny_edges,
                                                       canny_f1, canny_scores, clip_score, depth_rmse, edge_scores,
                                                       edge_ssim, estimate_nearness, evaluate_controllability, fid,
                                                       load_clip, mean_iou, segmentation_miou)
from lightning_modules.flexecontrol.module import FlexEControlModule
from lightning_modules.flexecontrol.shards import write_synthetic_control_shards

SIZE = 16
TYPES = {"canny": 1, "seg": 1, "depth": 1}
PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle"]


def as_batch(array: np.ndarray) -> torch.Tensor:
    """[H, W, 3] or [H, W] uint8 -> [1, C, H, W]."""
    tensor = torch.from_numpy(np.array(array))  # a copy: PIL's arrays are read-only
    return (tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor[None])[None]


def square_image(top: int, left: int, side: int = 8, size: int = 32) -> np.ndarray:
    image = np.full((size, size, 3), 40, np.uint8)
    image[top:top + side, left:left + side] = (220, 200, 30)
    return image


def gray_canny(image: np.ndarray) -> np.ndarray:
    return cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200)


# ---------------------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def models(tmp_path_factory, vision_models) -> dict[str, Path]:
    """The package's tiny depth and segmentation models, and a tiny CLIP whose scores are positive and differ."""
    from lightning_modules.clip_pretrain.random_clip import write_scoring_clip

    clip_dir = write_scoring_clip(tmp_path_factory.mktemp("eval-models") / "clip", image_size=SIZE, seed=0)
    return {"clip": clip_dir, **vision_models}


def test_edge_scores_by_hand():
    predicted = torch.zeros(3, 4, 4, dtype=torch.bool)
    reference = torch.zeros(3, 4, 4, dtype=torch.bool)
    predicted[0, 0, :] = True  # 4 predicted pixels, 3 of them in the reference
    reference[0, 0, :3] = True
    reference[0, 3, :3] = True  # 6 reference pixels
    reference[2, 1, 1] = True  # image 1: both empty; image 2: nothing predicted
    scores = edge_scores(predicted, reference)
    precision, recall = 3 / 4, 3 / 6
    assert torch.allclose(scores[0], torch.tensor([precision, recall, 2 * precision * recall / (precision + recall)],
                                                  dtype=torch.float64))
    assert scores[1].tolist() == [1.0, 1.0, 1.0]
    assert scores[2].tolist() == [0.0, 0.0, 0.0]


def test_canny_f1_of_an_images_own_edges_is_one_and_of_disjoint_edges_zero():
    shape = draw_shape(3, 32, 0, None)
    image = as_batch(shape["image"])
    own = as_batch(gray_canny(shape["image"]))
    assert canny_f1(image, own) == 1.0
    assert canny_f1(image.float() / 255, own.float() / 255) == 1.0  # float images in [0, 1], maps in [0, 1]
    left, right = square_image(2, 2), square_image(20, 20)
    elsewhere = as_batch(gray_canny(right))
    assert not (gray_canny(left) & gray_canny(right)).any()
    assert canny_f1(as_batch(left), elsewhere) == 0.0


def test_canny_scores_of_a_partial_match_by_hand():
    image = square_image(8, 8, side=12)
    edges = gray_canny(image) > 0
    reference = edges.copy()
    reference[:, 16:] = False  # keep the left part of the edges ...
    reference[0, :5] = True  # ... and add 5 pixels where the image has no edge
    assert not edges[0, :5].any()
    hits, predicted, wanted = int((edges & reference).sum()), int(edges.sum()), int(reference.sum())
    precision, recall = hits / predicted, hits / wanted
    scores = canny_scores(as_batch(image), as_batch(reference.astype(np.uint8) * 255))
    assert 0 < precision < 1 and 0 < recall < 1
    assert scores["precision"] == pytest.approx(precision) and scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_edge_ssim_is_one_for_identical_edge_maps_and_lower_otherwise():
    image = square_image(4, 4, side=10, size=SIZE)
    own = canny_edges(as_batch(image)).float()[:, None]
    assert edge_ssim(as_batch(image), own) == pytest.approx(1.0, abs=1e-5)
    assert edge_ssim(as_batch(image), own.flip(-1).flip(-2)) < 0.9
    small = square_image(1, 1, side=3, size=7)  # a window that fits an image smaller than 11 pixels
    assert edge_ssim(as_batch(small), canny_edges(as_batch(small)).float()[:, None]) == pytest.approx(1.0, abs=1e-5)


def test_maps_that_do_not_fit_the_images_are_refused():
    with pytest.raises(ValueError, match="one map per image"):
        canny_f1(torch.zeros(2, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="one map per image"):
        edge_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        canny_f1(torch.zeros(3, 8, 8), torch.zeros(1, 8, 8))


# ---------------------------------------------------------------------------------------------------- segmentation
def test_the_border_colour_segmenter_finds_a_drawn_shape():
    segmenter = BorderColourSegmenter()
    for idx in range(6):
        shape = draw_shape(idx, 32, 0, None)
        found = segmenter(as_batch(shape["image"]))[0].bool()
        truth = torch.from_numpy(shape["mask"] > 0)
        assert float((found & truth).sum() / (found | truth).sum()) > 0.95
        assert segmentation_miou(as_batch(shape["image"]), as_batch(shape["mask"]), segmenter) > 0.95
        assert segmentation_miou(as_batch(shape["image"]), as_batch((shape["mask"] == 0).astype(np.uint8)),
                                 segmenter) < 0.05


def test_mean_iou_by_hand():
    predicted = torch.zeros(1, 4, 4, dtype=torch.long)
    reference = torch.zeros(1, 4, 4, dtype=torch.long)
    predicted[0, 0, :] = 1  # 4 foreground pixels, all inside the reference's 6
    reference[0, 0, :] = 1
    reference[0, 1, :2] = 1
    # foreground 4 / 6; background: 10 predicted, 12 reference, 10 shared -> 10 / 12
    assert mean_iou(predicted, reference) == pytest.approx((4 / 6 + 10 / 12) / 2)
    three = reference.clone()
    three[0, 3, 3] = 2  # a label only the reference has scores 0 and counts; background is 9 of the 12 predicted
    assert mean_iou(predicted, three) == pytest.approx((4 / 6 + 9 / 12 + 0.0) / 3)


def test_a_segmentation_pipeline_as_segmenter(models):
    segmenter = PipelineSegmenter(models["seg"])
    images = torch.from_numpy(np.stack([draw_shape(i, 32, 0, None)["image"] for i in range(2)])).permute(0, 3, 1, 2)
    labels = segmenter(images)
    assert labels.shape == (2, 32, 32) and set(labels.unique().tolist()) <= {0, 1, 2, 3}
    assert segmentation_miou(images, labels, models["seg"]) == 1.0  # its own labels, through the path form
    assert segmentation_miou(images, (labels % 3) + 1, segmenter) < 1.0


# ----------------------------------------------------------------------------------------------------------- depth
def test_depth_rmse_through_a_real_depth_pipeline(models):
    from transformers import pipeline

    images = torch.from_numpy(np.stack([draw_shape(i, 32, 0, None)["image"] for i in range(3)])).permute(0, 3, 1, 2)
    predicted = [r["predicted_depth"] for r in pipeline("depth-estimation", model=str(models["dpt"]))(
        [Image.fromarray(im) for im in images.permute(0, 2, 3, 1).numpy()])]
    as_8_bit = []
    for p in predicted:  # the prediction as a stored depth map: per image 0..255, near (larger for DPT) = bright
        p = p.reshape(32, 32).double()
        as_8_bit.append(((p - p.min()) / (p.max() - p.min()) * 255).round().to(torch.uint8))
    reference = torch.stack(as_8_bit)[:, None]
    own = depth_rmse(images, reference, models["dpt"])
    assert 0 <= own < 0.01  # 8-bit rounding only
    assert depth_rmse(images, 255 - reference, models["dpt"]) > 0.2


def test_metric_depth_is_inverted_so_near_is_one(models):
    from transformers import pipeline

    images = torch.from_numpy(np.stack([draw_shape(i, 32, 0, None)["image"] for i in range(2)])).permute(0, 3, 1, 2)
    raw = torch.stack([r["predicted_depth"].reshape(32, 32) for r in pipeline(
        "depth-estimation", model=str(models["glpn"]))([Image.fromarray(im) for im in
                                                         images.permute(0, 2, 3, 1).numpy()])]).double()
    low, high = raw.flatten(1).min(1).values[:, None, None], raw.flatten(1).max(1).values[:, None, None]
    # batched and single runs differ in the last float32 bits, which a 0.04-wide depth range magnifies
    assert torch.allclose(estimate_nearness(images, models["glpn"]), 1 - (raw - low) / (high - low), atol=1e-3)


# ------------------------------------------------------------------------------------------------------ CLIP, FID
def test_clip_score_is_torchmetrics_clip_score_with_the_local_clip(models):
    images = (torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    model, processor = load_clip(models["clip"])
    with torch.no_grad():
        image_features = model.get_image_features(processor(images=list(images), return_tensors="pt")["pixel_values"])
        text = processor(text=PROMPTS, return_tensors="pt", padding=True)
        text_features = model.get_text_features(text["input_ids"], text["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features)
    expected = float((100 * cosine).clamp_min(0).mean())
    assert expected > 0
    assert clip_score(images, PROMPTS, models["clip"]) == pytest.approx(expected, rel=1e-4)
    assert clip_score(images.float() / 255, PROMPTS, models["clip"]) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="3 prompts for 4 images"):
        clip_score(images, PROMPTS[:3], models["clip"])


def test_a_model_directory_that_is_missing_or_incomplete_is_named(tmp_path, models):
    from lightning_modules.clip_pretrain.random_clip import write_random_clip

    images = torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)
    with pytest.raises(UsageError, match="no-clip: not a local directory"):
        clip_score(images, PROMPTS[:1], tmp_path / "no-clip")
    bare = write_random_clip(tmp_path / "bare-clip", image_size=SIZE)  # a model and tokenizer, no image processor
    with pytest.raises(UsageError, match="bare-clip: not a CLIP model with its processor"):
        clip_score(images, PROMPTS[:1], bare)
    with pytest.raises(UsageError, match="clip: not a usable depth-estimation model"):
        depth_rmse(images, torch.zeros(1, 1, SIZE, SIZE), models["clip"])


class MeanColour(torch.nn.Module):
    """Per image its mean red, green and blue: a 3-feature extractor for FID."""

    num_features = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3))


def test_fid_is_zero_for_one_set_and_the_mean_shift_for_a_shifted_one():
    real = (torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 200).to(torch.uint8)
    assert abs(fid(real, real, MeanColour())) < 1e-3
    shifted = real + 40  # the same covariance, every mean moved by 40: FID = 3 * 40^2
    assert fid(real, shifted, MeanColour()) == pytest.approx(3 * 40.0 ** 2, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2 images"):
        fid(real[:1], real, MeanColour())


def test_clip_image_features_give_fid_its_features(models):
    features = CLIPImageFeatures(models["clip"])
    images = (torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    assert features.num_features == 16 and features(images).shape == (4, 16)  # any image size, resized
    assert abs(fid(images, images, features)) < 1e-2
    assert fid(images, 255 - images, features) > 1e-2


# -------------------------------------------------------------------------------------------------- the evaluation
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flex-eval")
    base = write_tiny_text_to_image(root / "base", image_size=SIZE, seed=0)
    for split, num, seed in (("train", 8, 0), ("val", 8, 1)):
        write_synthetic_control_shards(root / split, num=num, size=SIZE, options=ShardOptions(seed=seed))
    return {"base": base, "train": root / "train", "val": root / "val"}


def control_data(inputs, types=None) -> ControlData:
    return ControlData(train=str(inputs["train"]), val=str(inputs["val"]), condition_channels=dict(types or TYPES),
                       resolution=SIZE, batch_size=4, num_workers=0, verify="size")


def val_batch(inputs, types=None) -> dict:
    data = control_data(inputs, types)
    data.setup("validate")
    loader = data.val_dataloader()
    return next(iter(loader[0] if isinstance(loader, list) else loader))


def tiny_module(inputs, types=None) -> FlexEControlModule:
    torch.manual_seed(0)
    return FlexEControlModule(base={"pretrained": str(inputs["base"]), "vae": None},
                              condition_channels=dict(types or TYPES), kronecker_rank=2, lr=1e-3)


class Oracle:
    """A stand-in model whose samples under control are the targets themselves and without control a flat gray, so
    the evaluation's metrics have known values."""

    def __init__(self, batch: dict, types: dict[str, int]):
        self.targets, self.condition_channels = batch["pixel_values"], dict(types)
        self.cursor, self.calls, self.device = 0, [], torch.device("cpu")

    condition_inputs = staticmethod(FlexEControlModule.condition_inputs)

    def generate(self, prompts, maps, present, *, resolution, steps, guidance, generator, control):
        assert control == bool(maps)
        self.calls.append({"n": len(prompts), "controlled": bool(maps), "seed": generator.initial_seed(),
                           "steps": steps, "guidance": guidance, "resolution": resolution})
        n, start = len(prompts), self.cursor
        self.cursor = (self.cursor + n) % self.targets.shape[0]
        if not maps:
            return torch.zeros(n, 3, resolution, resolution)
        return self.targets[start:start + n]


def test_an_oracle_scores_perfectly_under_control_and_poorly_without(inputs, models):
    batch = val_batch(inputs)
    oracle = Oracle(batch, TYPES)
    out = evaluate_controllability(oracle, batch, steps=3, guidance=2.0, seed=5, clip_model=models["clip"],
                                   fid_features=models["clip"], seg_model="border_colour", batch_size=3)
    assert [c["n"] for c in oracle.calls] == [3, 1, 3, 1]  # in chunks of batch_size, with then without control
    assert [c["controlled"] for c in oracle.calls] == [True, True, False, False]
    assert {(c["seed"], c["steps"], c["guidance"], c["resolution"]) for c in oracle.calls} == {(5, 3, 2.0, SIZE)}
    assert out["canny_f1"] == 1.0 and out["canny_precision"] == 1.0 and out["canny_recall"] == 1.0
    assert out["edge_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert out["seg_miou"] > 0.95
    assert abs(out["fid"]) < 1e-2
    # a flat image has no edges: it matches only the samples whose canny map is empty too (low-contrast shapes)
    empty = (batch["cond.canny"].flatten(1).amax(1) == 0).double().mean()
    assert 0 < empty < 1 and out["canny_f1_no_control"] == pytest.approx(float(empty))
    assert out["canny_recall_no_control"] == pytest.approx(float(empty)) and out["seg_miou_no_control"] < 0.5
    assert out["fid_no_control"] > out["fid"] and out["clip_score"] != out["clip_score_no_control"]
    assert "depth_rmse" not in out  # no depth model given
    assert all(math.isfinite(v) for v in out.values())


def test_what_is_measured_follows_the_types_and_options(inputs, models):
    batch = val_batch(inputs, {"seg": 1, "depth": 1})
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    out = evaluate_controllability(Oracle(batch, {"seg": 1, "depth": 1}), halves, depth_model=models["dpt"],
                                   seg_model="border_colour", compare_without_control=False)
    assert set(out) == {"seg_miou", "depth_rmse"}  # no canny type, no CLIP, no FID, no comparison
    unjudged = evaluate_controllability(Oracle(batch, {"seg": 1, "depth": 1}), halves, depth_model=models["dpt"],
                                        compare_without_control=False)
    assert set(unjudged) == {"depth_rmse"}  # no seg_model: real images need a segmenter the user names
    assert 0 <= out["depth_rmse"] <= 1
    batch["present.seg"][:] = False  # a type no sample has is not measured
    out = evaluate_controllability(Oracle(batch, {"seg": 1, "depth": 1}), batch, seg_model="border_colour",
                                   compare_without_control=False)
    assert out == {}


def test_a_real_module_is_evaluated_deterministically(inputs):
    module, batch = tiny_module(inputs), val_batch(inputs)
    first = evaluate_controllability(module, batch, steps=2, seg_model="border_colour")
    assert first == evaluate_controllability(module, batch, steps=2, seg_model="border_colour")
    assert {"canny_f1", "edge_ssim", "seg_miou", "canny_f1_no_control"} <= set(first)


def test_bad_evaluator_arguments_are_all_reported(tmp_path):
    with pytest.raises(ParamError) as e:
        ControllabilityEvaluator(subset_size=0, every_n_val=0, steps=0, guidance=-1.0, batch_size=0,
                                 clip_model=str(tmp_path / "no-clip"), depth_model=str(tmp_path / "no-dpt"),
                                 seg_model=str(tmp_path / "no-seg"), fid_features=str(tmp_path / "no-fid"))
    problems = dict(e.value.problems)
    assert set(problems) == {"subset_size", "every_n_val", "steps", "guidance", "batch_size", "clip_model",
                             "depth_model", "seg_model", "fid_features"}
    assert "no-dpt" in problems["depth_model"] and "depth-estimation" in problems["depth_model"]
    assert ControllabilityEvaluator.config_problems({"clip_model": "/nowhere"}, check_files=False) == []
    assert ControllabilityEvaluator.config_problems({"seg_model": "border_colour"}) == []


def test_the_evaluator_refuses_a_model_that_cannot_generate_under_conditions():
    with pytest.raises(TypeError, match="LightningModule is not a control model"):
        ControllabilityEvaluator().setup(None, L.LightningModule(), "fit")


def test_evaluator_and_image_logger_through_a_fit(tmp_path, inputs, models):
    module = tiny_module(inputs)
    evaluator = ControllabilityEvaluator(subset_size=4, steps=2, guidance=2.0, clip_model=str(models["clip"]),
                                         depth_model=str(models["dpt"]), fid_features=str(models["clip"]),
                                         seg_model="border_colour")
    images = ImageLogger(every_n_val=2, max_images=2)
    trainer = L.Trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0, accelerator="cpu", devices=1, default_root_dir=str(tmp_path),
                        logger=[CSVLogger(tmp_path, name="csv", version=""),
                                TensorBoardLogger(tmp_path, name="tb", version="")],
                        callbacks=[evaluator, images], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, datamodule=control_data(inputs))

    lines = [json.loads(line) for line in (tmp_path / "control_metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert lines[0]["subset"] == lines[1]["subset"] and len(lines[0]["subset"]) == 4 == lines[0]["num_samples"]
    names = {"canny_f1", "canny_precision", "canny_recall", "edge_ssim", "seg_miou", "depth_rmse", "clip_score", "fid"}
    for line in lines:
        assert set(line["metrics"]) == names | {f"{name}_no_control" for name in names}
        assert all(math.isfinite(v) for v in line["metrics"].values())
    logged = trainer.logged_metrics
    for name, value in lines[-1]["metrics"].items():
        assert float(logged[f"control/{name}"]) == pytest.approx(value, rel=1e-5, abs=1e-6)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "control/canny_f1" in header and "control/fid_no_control" in header

    assert [p.name for p in (tmp_path / "images").iterdir()] == ["step_4.png"]  # every second validation
    with Image.open(tmp_path / "images" / "step_4.png") as im:
        assert im.text["rows"] == "condition/canny,condition/seg,condition/depth,samples,target"
        assert im.size == (GAP + 2 * (SIZE + GAP), GAP + 5 * (SIZE + GAP))


def test_image_rows_show_the_conditions_the_samples_and_the_targets(inputs):
    module, batch = tiny_module(inputs), val_batch(inputs)
    batch["present.seg"][1] = False  # a sample without a seg input shows a black map
    rows = module.image_rows(batch, torch.Generator().manual_seed(3), steps=2)
    assert list(rows) == ["condition/canny", "condition/seg", "condition/depth", "samples", "target"]
    assert all(images.shape == (4, 3, SIZE, SIZE) and 0 <= images.min() and images.max() <= 1
               for images in rows.values())
    assert torch.equal(rows["condition/canny"], batch["cond.canny"][:, 0].expand(-1, 3, -1, -1))  # 0/1 as they are
    assert rows["condition/seg"][1].max() == 0
    seg = batch["cond.seg"][0, 0]  # label ids / 255, scaled so that the shape is white
    assert 0 < seg.max() < 0.1 and torch.allclose(rows["condition/seg"][0], (seg / seg.max()).expand(3, -1, -1))
    assert torch.allclose(rows["target"], (batch["pixel_values"] + 1) / 2)
    again = module.image_rows(batch, torch.Generator().manual_seed(3), steps=2)["samples"]
    assert torch.equal(rows["samples"], again)


class Recorder:
    """What a LightningModule's log receives, plus what the evaluator's setup asks of a control model."""

    condition_channels = dict(TYPES)
    condition_inputs = staticmethod(FlexEControlModule.condition_inputs)

    def __init__(self):
        self.logged = {}

    def generate(self, *args, **kwargs):
        raise AssertionError("only rank 0 generates")

    def log(self, name, value, sync_dist=False):
        self.logged[name] = value


def distributed_trainer(tmp_path, rank: int, broadcast_result: dict):
    return SimpleNamespace(sanity_checking=False, world_size=2, is_global_zero=rank == 0, global_rank=rank,
                           default_root_dir=str(tmp_path), global_step=6, current_epoch=0,
                           strategy=SimpleNamespace(broadcast=lambda obj, src: broadcast_result))


def test_under_ddp_the_other_ranks_log_what_rank_0_broadcasts_and_write_nothing(tmp_path, monkeypatch):
    from callbacks import rank_zero

    monkeypatch.setattr(rank_zero.dist, "is_initialized", lambda: True)
    evaluator, module = ControllabilityEvaluator(), Recorder()
    trainer = distributed_trainer(tmp_path, 1, {"metrics": {"canny_f1": 0.25, "canny_f1_no_control": 0.5}})
    evaluator.on_validation_batch_end(trainer, module, None, {"caption": ["a x"]}, 0)
    assert evaluator.subset is None  # rank 1 keeps no samples
    evaluator.on_validation_epoch_end(trainer, module)
    assert module.logged == {"control/canny_f1": 0.25, "control/canny_f1_no_control": 0.5}
    assert not (tmp_path / "control_metrics.jsonl").exists()
    failed = distributed_trainer(tmp_path, 1, {"error": "Traceback: out of memory"})
    with pytest.raises(RuntimeError, match="failed on rank 0:\nTraceback: out of memory"):
        evaluator.on_validation_epoch_end(failed, module)


def test_rank_0_without_samples_fails_clearly_and_the_count_is_checkpointed(tmp_path):
    evaluator = ControllabilityEvaluator(every_n_val=2)
    trainer = SimpleNamespace(sanity_checking=False, world_size=1, is_global_zero=True, default_root_dir=str(tmp_path))
    evaluator.on_validation_epoch_end(trainer, Recorder())  # the first validation: not evaluated (every 2nd)
    with pytest.raises(RuntimeError, match="gave no samples"):
        evaluator.on_validation_epoch_end(trainer, Recorder())
    resumed = ControllabilityEvaluator(every_n_val=2)
    resumed.load_state_dict(evaluator.state_dict())
    assert resumed.validations == 2


def test_edge_matching_within_a_tolerance():
    reference = torch.zeros(1, 8, 8, dtype=torch.bool)
    reference[0, 2:6, 3] = True  # a vertical edge
    shifted = torch.roll(reference, 1, dims=2)  # the same edge one pixel to the right
    assert edge_scores(shifted, reference)[0].tolist() == [0.0, 0.0, 0.0]
    assert edge_scores(shifted, reference, tolerance=1)[0].tolist() == [1.0, 1.0, 1.0]
    far = torch.roll(reference, 3, dims=2)
    assert edge_scores(far, reference, tolerance=1)[0, 2] == 0.0
    half = reference.clone()
    half[0, 4:6, 3] = False  # rows 2-3 predicted: rows 2-4 of the reference are found within a pixel, row 5 is not
    assert edge_scores(half, reference, tolerance=1)[0].tolist() == pytest.approx([1.0, 0.75, 1.5 / 1.75])
    with pytest.raises(ValueError):
        edge_scores(shifted, reference, tolerance=-1)

"""Mojito's motion metrics and MotionEvaluator (lightning_modules/mojito/evaluation.py), on fake modules that honour
generate_videos: one draws a red square moving at the requested level's speed and, under direction control, inside
the target boxes; one ignores levels; one ignores boxes. A tiny OWL-ViT built here stands in for a real detector."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.errors import ParamError, UsageError
from datamodules.synthetic_shapes import COLORS
from lightning_modules.mojito.evaluation import (MISSING_DISTANCE, MotionEvaluator, evaluate_motion,
                                                 intensity_fidelity, locate_by_colour, locate_by_detector,
                                                 parse_prompt_set, trajectory_fidelity)

SIZE, FRAMES, SIDE = 32, 6, 6
RED = np.array(COLORS["red"]) / 255
PROMPT_SET = [{"prompt": "a red square moving right", "subject": "red square", "colour": "red",
               "trajectory": "0.2,0.8 0.8,0.2", "box_size": SIDE / SIZE},
              {"prompt": "a red square on gray"}]


class Fake:
    """generate_videos: a red square on grey; level k moves it k pixels a frame to the right from a start that the
    seed and the prompt's place shift by a pixel or two; with boxes and a subject it is drawn at each box instead."""

    follows_levels, follows_boxes = True, True

    def __init__(self):
        self.calls = []

    def generate_videos(self, prompts, *, levels=None, boxes=None, subjects=None, seed=0, steps=None):
        self.calls.append({"levels": levels, "controlled": boxes is not None and boxes[0] is not None, "seed": seed,
                           "steps": steps})
        videos = torch.full((len(prompts), FRAMES, 3, SIZE, SIZE), 0.5)
        for b in range(len(prompts)):
            level = levels[b] if levels is not None and levels[b] is not None and self.follows_levels else 2
            box = boxes[b] if boxes is not None and self.follows_boxes and subjects[b] is not None else None
            for t in range(FRAMES):
                if box is not None:
                    left, top = round(float(box[t, 0]) * SIZE), round(float(box[t, 1]) * SIZE)
                else:
                    left, top = 2 + (seed + b) % 3 + level * t, 12
                videos[b, t, :, top:top + SIDE, left:left + SIDE] = torch.tensor(RED)[:, None, None]
        return videos


class ConstantMotion(Fake):
    follows_levels = False


class IgnoresBoxes(Fake):
    follows_boxes = False


# ------------------------------------------------------------------------------------------------------ metrics
def test_spearman_follows_levels_and_is_zero_for_constant_or_reversed():
    assert intensity_fidelity([1, 2, 3, 4, 5], [0.1, 0.5, 0.7, 2.0, 3.0]) == pytest.approx(1.0)
    assert intensity_fidelity([1, 2, 3, 4, 5], [3.0, 2.0, 0.7, 0.5, 0.1]) == pytest.approx(-1.0)
    assert intensity_fidelity([1, 2, 3], [1.5, 1.5, 1.5]) == 0.0  # no ranking at all
    with pytest.raises(ValueError, match="at least 2"):
        intensity_fidelity([1], [1.0])


def test_trajectory_fidelity_of_perfect_shifted_and_lost_boxes():
    target = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.7, 0.7]])
    assert trajectory_fidelity(target, target, torch.tensor([True, True])) == {"iou": 1.0, "centroid_distance": 0.0}
    shifted = target + torch.tensor([0.1, 0.0, 0.1, 0.0])  # half the box overlaps: IoU 0.1*0.2 / (2*0.04 - 0.02)
    out = trajectory_fidelity(target, shifted, torch.tensor([True, True]))
    assert out["iou"] == pytest.approx(1 / 3) and out["centroid_distance"] == pytest.approx(0.1)
    lost = trajectory_fidelity(target, target, torch.tensor([True, False]))
    assert lost == pytest.approx({"iou": 0.5, "centroid_distance": MISSING_DISTANCE / 2})
    assert MISSING_DISTANCE == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match=r"\[F, 4\]"):
        trajectory_fidelity(target, target[:1], torch.tensor([True]))


def test_locate_by_colour_finds_the_drawn_square():
    video = np.full((2, 20, 10, 3), 128, np.uint8)
    video[0, 4:8, 2:5] = COLORS["red"]
    video[0, 15, 9] = (200, 40, 25)  # within the tolerance of red
    boxes, found = locate_by_colour(video, COLORS["red"], tolerance=40)
    assert found.tolist() == [True, False]
    assert torch.allclose(boxes[0], torch.tensor([2 / 10, 4 / 20, 10 / 10, 16 / 20]))
    assert torch.all(boxes[1] == 0)
    tensor_video = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255  # generate_videos' layout
    boxes, found = locate_by_colour(tensor_video, COLORS["red"], tolerance=10)
    assert torch.allclose(boxes[0], torch.tensor([0.2, 0.2, 0.5, 0.4]))


def test_prompt_set_problems_are_reported_together():
    entries = [{"prompt": "a red ball", "subject": "blue cube", "trajectory": "0.1,0.5 1.5,0.5"},
               {"prompt": "a cat", "trajectory": "0.1,0.1", "colour": "purple", "box_sise": 0.2},
               "a dog", {"prompt": "a ball", "trajectory": "0.5,0.5", "subject": "ball"}]
    _, problems = parse_prompt_set(entries)
    assert dict(problems) == {
        "prompts[0].subject": "'blue cube' is not in the prompt 'a red ball': give words of the prompt",
        "prompts[0].trajectory": "point 1.5,0.5 is outside [0, 1]",
        "prompts[0].colour": "a trajectory needs a way to find the subject: its colour, or the evaluator's detector",
        "prompts[1].box_sise": "unknown key (did you mean box_size?)",
        "prompts[1].colour": "unknown colour 'purple' (a name of red, green, blue, yellow, or [r, g, b])",
        "prompts[1].subject": "a trajectory needs the subject's words, which direction control steers",
        "prompts[2]": "expected a mapping with a prompt, got str",
        "prompts[3].colour": "a trajectory needs a way to find the subject: its colour, or the evaluator's detector"}
    assert parse_prompt_set(entries[3:], detector=True)[1] == []
    assert parse_prompt_set([])[1][0][0] == "prompts"


# -------------------------------------------------------------------------------------------- evaluate_motion
def test_a_module_that_follows_levels_and_boxes_scores_well():
    fake = Fake()
    out = evaluate_motion(fake, PROMPT_SET, seeds=2, steps=3)
    assert out["intensity_spearman"] > 0.9
    flows = [out[f"flow_level_{k}"] for k in range(1, 6)]
    assert flows == sorted(flows) and flows[0] < flows[-1]
    assert out["trajectory_iou"] > 0.8 and out["centroid_distance"] < 0.05
    assert out["trajectory_iou_none"] < 0.3 and out["centroid_distance_none"] > 0.2
    # 2 seeds x (5 levels + uncontrolled + controlled), the steps passed on, one seed for all levels of a seed
    assert len(fake.calls) == 14 and {call["steps"] for call in fake.calls} == {3}
    assert [call["seed"] for call in fake.calls if call["levels"] and call["levels"][0]] == [0] * 5 + [1] * 5
    assert sum(call["controlled"] for call in fake.calls) == 2


def test_constant_motion_and_ignored_boxes_are_found_out():
    constant = evaluate_motion(ConstantMotion(), PROMPT_SET, seeds=2)
    assert abs(constant["intensity_spearman"]) < 0.2
    ignored = evaluate_motion(IgnoresBoxes(), PROMPT_SET, seeds=2)
    assert ignored["trajectory_iou"] == pytest.approx(ignored["trajectory_iou_none"])
    assert ignored["trajectory_iou"] < 0.3


def test_a_module_returning_the_wrong_shape_is_named():
    bad = SimpleNamespace(generate_videos=lambda prompts, **kwargs: torch.zeros(len(prompts), 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"generate_videos must return videos \[2, F, 3, H, W\]"):
        evaluate_motion(bad, PROMPT_SET, seeds=1)
    with pytest.raises(ParamError, match="seeds: must be >= 1, got 0"):
        evaluate_motion(Fake(), PROMPT_SET, seeds=0)


# ------------------------------------------------------------------------------------------------------ detector
@pytest.fixture(scope="module")
def owlvit(tmp_path_factory):
    """A random 1-layer OWL-ViT (32-pixel input) with the project's word-level tokenizer and its processor."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    from lightning_modules.clip_pretrain.random_clip import write_tokenizer

    directory = tmp_path_factory.mktemp("owlvit") / "owlvit"
    tokenizer = write_tokenizer(directory)
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = OwlViTConfig(
        text_config=dict(tiny, vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(tiny, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    OwlViTForObjectDetection(config).save_pretrained(directory)
    OwlViTProcessor(image_processor=OwlViTImageProcessor(size={"height": 32, "width": 32},
                                                         crop_size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_the_detector_finds_a_box_per_frame(owlvit):
    video = Fake().generate_videos(["a red square"], levels=[3])[0]
    boxes, found = locate_by_detector(video, "red square", owlvit, threshold=0.0)
    assert boxes.shape == (FRAMES, 4) and found.dtype == torch.bool and bool(found.all())
    assert bool((boxes >= 0).all() and (boxes <= 1).all())
    boxes, found = locate_by_detector(video, "red square", owlvit, threshold=1.0)  # no sigmoid score exceeds 1
    assert not bool(found.any()) and bool((boxes == 0).all())
    out = evaluate_motion(Fake(), [{"prompt": "a red square", "subject": "red square", "trajectory": "0.2,0.5"}],
                          seeds=1, detector=owlvit, detector_threshold=0.0)  # no colour: the detector finds it
    assert 0 <= out["trajectory_iou"] <= 1 and 0 <= out["centroid_distance"] <= MISSING_DISTANCE


def test_a_missing_or_wrong_detector_directory_is_a_usage_error(tmp_path):
    video = torch.zeros(2, 3, 8, 8)
    with pytest.raises(UsageError, match="no-owl: not a local directory"):
        locate_by_detector(video, "ball", tmp_path / "no-owl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty: not an OWL-ViT or OWLv2 detector with its processor"):
        locate_by_detector(video, "ball", tmp_path / "empty")


# ------------------------------------------------------------------------------------------------------ callback
class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.fake = Fake()

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).square().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def generate_videos(self, prompts, **kwargs):
        assert not torch.is_grad_enabled()
        return self.fake.generate_videos(prompts, **kwargs)


def test_the_evaluator_logs_the_motion_metrics_in_a_fit(tmp_path):
    from lightning_modules.clip_pretrain.random_clip import write_scoring_clip

    clip = write_scoring_clip(tmp_path / "clip", image_size=16)
    module, loader = Module(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    evaluator = MotionEvaluator(PROMPT_SET, every_n_val=2, seeds=1, clip_model=str(clip))
    trainer = L.Trainer(max_steps=2, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=1, default_root_dir=str(tmp_path), accelerator="cpu", devices=1,
                        logger=False, callbacks=[evaluator], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, loader, loader)
    assert len(module.fake.calls) == 7  # once, at the second validation (never the sanity check)
    logged = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("motion/")}
    assert set(logged) == {"motion/intensity_spearman", "motion/clip_similarity", "motion/trajectory_iou",
                           "motion/centroid_distance", "motion/trajectory_iou_none",
                           "motion/centroid_distance_none", *(f"motion/flow_level_{k}" for k in range(1, 6))}
    assert logged["motion/intensity_spearman"] > 0.9 and logged["motion/clip_similarity"] > 0
    assert evaluator.state_dict() == {"validations": 2}


def test_bad_settings_and_missing_models_are_reported_at_construction(tmp_path):
    with pytest.raises(ParamError) as e:
        MotionEvaluator([{"prompt": "a ball", "trajectory": "0.5,0.5"}], every_n_val=0, seeds=0,
                        detector_threshold=2.0, clip_model=str(tmp_path / "no-clip"))
    assert {name for name, _ in e.value.problems} == {"every_n_val", "seeds", "detector_threshold", "clip_model",
                                                      "prompts[0].subject", "prompts[0].colour"}
    assert "no such directory" in dict(e.value.problems)["clip_model"]
    problems = MotionEvaluator.config_problems({"prompts": PROMPT_SET, "detector": str(tmp_path / "no-owl")})
    assert problems == [("detector", f"no such directory: {tmp_path / 'no-owl'} (the local directory of an OWL-ViT "
                                     f"or OWLv2 detector with its processor)")]
    assert MotionEvaluator.config_problems({"detector": "/nowhere"}, check_files=False) == []
    with pytest.raises(TypeError, match="has no generate_videos"):
        MotionEvaluator(PROMPT_SET).setup(None, torch.nn.Linear(1, 1), "fit")

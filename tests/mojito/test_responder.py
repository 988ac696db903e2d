"""Mojito's diffusion-classifier responder (lightning_modules/mojito/responder.py): the frames it denoises, paired
deterministic errors, the option a model denoises the video best with wins, its settings refused with their keys, and
VLM4D BenchmarkValidation answered by the module during a tiny fit."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from callbacks.benchmark_validation import BenchmarkValidation
from datamodules.benchmarks import Question, load_questions, resolve_video, sample_frames
from datamodules.benchmarks.synthetic import crossing_clip, write_synthetic_vlm4d
from datamodules.errors import ParamError
from lightning_modules.diffusion import encode_prompts
from lightning_modules.mojito.data import VideoCaptionData
from lightning_modules.mojito.responder import DenoisingResponder, DenoisingSettings, spread_timesteps
from tests.mojito.test_module import module

CAPTIONS = ("a red circle moving right", "a blue square moving left", "a green triangle moving up",
            "a yellow circle staying still")


def question(options: dict[str, str], text: str = "What is moving?", number: int = 1) -> Question:
    first = next(iter(options))
    return Question(benchmark="vlm4d", split="synthetic", id=f"validation_{number}", video=f"v{number}.mp4",
                    question=text, options=options, answer_letter=first, answer_text=options[first],
                    correct_letters=(first,))


@pytest.fixture(scope="module")
def model(tiny_video):
    return module(tiny_video, sampling={"frames": 4}, responder={"num_timesteps": 2, "template": "{option}"}).eval()


# ----------------------------------------------------------------------------------------------- frames
def test_frames_are_sampled_uniformly_resized_and_centre_cropped(model):
    responder = model.benchmark_responder()
    assert (responder.frames, responder.resolution) == (4, 16)
    # 7 frames of 40 x 60, frame t of value 30 * t; the sides outside the centre crop are white
    frames = np.repeat((30 * np.arange(7, dtype=np.uint8))[:, None, None, None], 40 * 60 * 3, axis=1)
    frames = frames.reshape(7, 40, 60, 3)
    frames[:, :, :5] = frames[:, :, 55:] = 255
    video = responder.video(frames)
    assert video.shape == (1, 4, 3, 16, 16)
    expected = torch.tensor([0, 60, 120, 180], dtype=torch.float32) / 127.5 - 1  # frames 0, 2, 4, 6
    torch.testing.assert_close(video[0], expected.view(4, 1, 1, 1).expand(4, 3, 16, 16))
    # a clip shorter than the model's frames repeats frames, evenly
    short = responder.video(frames[[1, 3]])
    torch.testing.assert_close(short[0, :, 0, 8, 8], torch.tensor([30, 30, 90, 90]) / 127.5 - 1)
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        responder.video(frames[0])
    with pytest.raises(ValueError, match="must be uint8"):
        responder.video(frames.astype(np.float32))


# ----------------------------------------------------------------------------------------------- errors
def test_errors_are_paired_deterministic_and_independent_of_the_batching(model):
    clips = [crossing_clip("circle", "red", "right", 4, 16), crossing_clip("square", "blue", "left", 6, 24)]
    asked = [question(dict(zip("AB", CAPTIONS)), number=1), question(dict(zip("ab", CAPTIONS[2:])), number=2)]
    responder = model.benchmark_responder()
    errors = responder.option_errors(asked, clips)
    assert [list(e) for e in errors] == [["A", "B"], ["a", "b"]]
    assert model.benchmark_responder().option_errors(asked, clips) == errors  # the same pairs every time
    assert responder.option_errors(asked[1:], clips[1:]) == errors[1:]  # not depending on the other questions
    one_pair_per_call = DenoisingResponder(model, DenoisingSettings(num_timesteps=2, template="{option}",
                                                                    batch_size=1))
    for alone, batched in zip(one_pair_per_call.option_errors(asked, clips), errors):
        assert alone == pytest.approx(batched, rel=1e-5)
    # another noise seed, other pairs: other errors
    reseeded = DenoisingResponder(model, DenoisingSettings(num_timesteps=2, template="{option}", noise_seed=1))
    assert reseeded.option_errors(asked, clips) != errors
    with pytest.raises(ValueError, match="2 questions but 1 frame arrays"):
        responder.option_errors(asked, clips[:1])


def test_the_option_the_model_denoises_the_video_with_wins(model, monkeypatch):
    """A model trained to denoise the clip under caption C, exactly: for C's text states it predicts the true noise
    of the clip's latents (a perfect denoiser), for any other text the random UNet's prediction. The clip is given
    as 7 frames (the model's 4 at uniform indices 0, 2, 4, 6, noise between) and 8 columns wider on each side (the
    centre crop removes them): only the frames and pixels the model trains on reach the UNet."""
    clip = crossing_clip("circle", "red", "right", 4, 16)
    given = np.random.default_rng(0).integers(0, 256, (7, 16, 32, 3), dtype=np.uint8)
    given[::2, :, 8:24] = clip
    clean = (torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1).transpose(0, 1)  # [3, F, 16, 16]
    caption = CAPTIONS[2]
    states = encode_prompts(model.text_encoder, model.tokenizer, [caption])[0]
    abar = model.noise_scheduler.alphas_cumprod
    random_unet = model.predict

    def trained(latents, timesteps, context, levels):
        prediction = random_unet(latents, timesteps, context, levels)
        a = abar[timesteps].view(-1, 1, 1, 1, 1)
        true_noise = (latents - a.sqrt() * clean) / (1 - a).sqrt()
        is_caption = (context == states).flatten(1).all(1).view(-1, 1, 1, 1, 1)
        return torch.where(is_caption, true_noise, prediction)

    monkeypatch.setattr(model, "predict", trained)
    asked = question(dict(zip("ABCD", CAPTIONS)))
    errors = model.benchmark_responder().option_errors([asked], [given])[0]
    assert errors["C"] < 1e-8 and min(errors["A"], errors["B"], errors["D"]) > 0.1
    assert model.benchmark_responder().respond([asked], [given]) == ["C"]


def test_texts_fit_the_tokenizer_and_settings_are_checked(tiny_video, model):
    responder = DenoisingResponder(model, DenoisingSettings(timesteps=[10, 990], template="{question} {option}"))
    assert responder.timesteps == [10, 990]
    assert spread_timesteps(4, 1000) == [125, 375, 625, 875]
    asked = question({"A": "left", "B": "right"}, text=" ".join(["the red circle"] * 15))
    texts = responder.option_texts(asked)  # 32 tokens, start and end included: the fewest leading words go
    assert [t.split()[-1] for t in texts] == ["left", "right"] and texts[0].startswith("red circle the")
    assert [len(model.tokenizer(t).input_ids) for t in texts] == [32, 32]
    with pytest.raises(ParamError) as refused:
        module(tiny_video, responder={"timesteps": [5, 1000], "num_timesteps": 3, "template": "{question}",
                                      "batch_size": 0})
    assert refused.value.problems == [
        ("responder.template", "'{question}' has no {option} field"),
        ("responder.num_timesteps", "give timesteps or num_timesteps, not both"),
        ("responder.batch_size", "must be >= 1, got 0")]
    with pytest.raises(ParamError) as refused:
        module(tiny_video, responder={"timesteps": [5, 1000, -1]})
    assert refused.value.problems == [("responder.timesteps", "[1000, -1] outside the scheduler's 0..999")]


# ----------------------------------------------------------------------------------------------- validation
def test_benchmark_validation_in_a_fit_is_answered_by_the_module(tiny_video, tmp_path):
    bench = write_synthetic_vlm4d(tmp_path / "vlm4d", videos=2, frames=6, size=24, real=False)
    mojito = module(tiny_video, sampling={"frames": 4}, responder={"timesteps": [300, 700]})
    callback = BenchmarkValidation("vlm4d", bench["questions"], bench["video_root"], num_frames=6, batch_size=2)
    data = VideoCaptionData(train=str(tiny_video["train"]), val=str(tiny_video["val"]), resolution=16, frames=4,
                            batch_size=2, num_workers=0, verify="size")
    trainer = L.Trainer(max_steps=2, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], default_root_dir=str(tmp_path / "run"),
                        accelerator="cpu", devices=1)
    trainer.fit(mojito, datamodule=data)

    summary = json.loads((tmp_path / "run" / "benchmarks" / "vlm4d-step2.json").read_text())
    asked = load_questions("vlm4d", bench["questions"]["synthetic"], "synthetic")
    assert summary["num_questions"] == len(asked) == 3 and summary["missing"]["ids"] == []
    responses = {(i["split"], i["id"]): i["response"] for i in summary["items"]}
    assert set(responses.values()) <= set("ABCD") and summary["unparsed"]["count"] == 0
    assert trainer.callback_metrics["benchmark/vlm4d/overall"] == pytest.approx(summary["overall"])
    # what the callback logged is what the module's responder answers with the weights it ended with
    frames = [sample_frames(Path(resolve_video(q, bench["video_root"])), 6) for q in asked]
    assert mojito.benchmark_responder().respond(asked, frames) == [responses[q.key] for q in asked]

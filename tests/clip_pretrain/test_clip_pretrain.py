"""The tiny CLIP the project pretrains on synthetic shapes: tokenizer, captioned data, contrastive loss, export and
reload, a short pretraining that learns something, the cache, and the demo config through launch/fit.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel, CLIPTokenizer

from datamodules.synthetic_shapes import BACKGROUND_NAMES, CLASS_NAMES, COLORS, SHAPES
from lightning_modules.clip_pretrain import (VOCABULARY, ShapeCaptionData, TinyCLIPPretrain, build_tokenizer, cache,
                                             caption, contrastive_loss, ensure_tiny_clip, save_tokenizer)
from tests.conftest import REPO, run_fit

CONFIG = REPO / "configs" / "demo" / "clip_pretrain.yaml"
# A short pretraining: 100 steps of 128 on 2000 images reach about 0.40 zero-shot accuracy on held-out images
# (chance 1/12; the colours are learned first, near 1.0, the shapes later) in about 6 s. One torch thread: two are
# only a little faster alone, and many times slower when another process holds a core (see ensure_tiny_clip).
SHORT = {"num_train": 2000, "num_val": 240, "max_steps": 100}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {"train": cache.write_shapes(root / "train", 256, 32, seed=0),
            "val": cache.write_shapes(root / "val", 96, 32, seed=7)}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return ensure_tiny_clip(tmp_path_factory.mktemp("clip-cache"), **SHORT, threads=1)


# -- tokenizer -----------------------------------------------------------------------------------------------------
def test_vocabulary_words_are_single_tokens_and_unknown_words_still_tokenize(tmp_path):
    tokenizer = build_tokenizer()
    for word in VOCABULARY:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"]
    text = "a photo of a red circle on a teal background."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 2 + 11
    unknown = "Zebras jüggle 42!"
    unknown_ids = tokenizer(unknown, add_special_tokens=False)["input_ids"]
    assert len(unknown_ids) > 3 and tokenizer.unk_token_id not in unknown_ids
    for t in (text, unknown):  # CLIP's decoding puts spaces between words and punctuation, and lowercases
        decoded = tokenizer.decode(tokenizer(t)["input_ids"], skip_special_tokens=True)
        assert decoded.replace(" ", "") == t.lower().replace(" ", "")

    save_tokenizer(tokenizer, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= files
    from_files = CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), CLIPTokenizer.from_pretrained(tmp_path), from_files):
        assert loaded(text)["input_ids"] == ids and loaded(unknown)["input_ids"] == tokenizer(unknown)["input_ids"]


# -- data ----------------------------------------------------------------------------------------------------------
def test_samples_carry_normalised_images_and_tokenized_captions_naming_colour_shape_and_background(shards):
    data = ShapeCaptionData(train=str(shards["train"]), val=str(shards["val"]), batch_size=32, context_length=16)
    data.setup("fit")
    assert data.class_names("val") == CLASS_NAMES
    batch = next(iter(data.train_dataloader()))
    assert batch["pixel_values"].shape == (32, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert -3 < batch["pixel_values"].min() < 0 < batch["pixel_values"].max() < 3  # CLIP mean/std, not [0, 255]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (32, 16)
    tokenizer = build_tokenizer()
    for ids, mask, text, label in zip(batch["input_ids"], batch["attention_mask"], batch["caption"], batch["cls"]):
        color, shape = CLASS_NAMES[label].split()
        assert text.startswith(f"a photo of a {color} {shape}")
        real = int(mask.sum())
        assert tokenizer.decode(ids[:real], skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")
        assert (ids[real:] == tokenizer.pad_token_id).all()
    # training captions vary (background clause, period), seeded per sample and epoch
    assert any(" background" in t for t in batch["caption"]) and any(" background" not in t for t in batch["caption"])
    assert any(t.endswith(".") for t in batch["caption"]) and any(not t.endswith(".") for t in batch["caption"])
    again = ShapeCaptionData(train=str(shards["train"]), batch_size=32, context_length=16)
    again.setup("fit")
    assert next(iter(again.train_dataloader()))["caption"] == batch["caption"]
    # validation captions always name the background
    val = next(iter(data.val_dataloader()))
    assert all(any(t.endswith(f" {b} background") for b in BACKGROUND_NAMES) for t in val["caption"])
    assert caption("yellow", "square", "olive") == "a photo of a yellow square on an olive background"


# -- loss ----------------------------------------------------------------------------------------------------------
def test_contrastive_loss_is_clips_symmetric_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    text = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    scale = torch.tensor(2.0)
    logits = scale.exp() * image @ text.t()
    by_hand = -(logits.log_softmax(1).diag().mean() + logits.log_softmax(0).diag().mean()) / 2
    assert torch.allclose(contrastive_loss(image, text, scale), by_hand)
    assert contrastive_loss(image, image, scale) < contrastive_loss(image, image.roll(1, 0), scale)


# -- export --------------------------------------------------------------------------------------------------------
def test_save_pretrained_reloads_with_transformers_and_gives_identical_embeddings(tmp_path, shards):
    module = TinyCLIPPretrain(seed=3).eval()
    path = module.save_pretrained(tmp_path / "clip")
    assert (path / "model.safetensors").is_file()
    model = CLIPModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    preprocessing = json.loads((path / "preprocessor_config.json").read_text())
    assert preprocessing["crop_size"] == {"height": 32, "width": 32}
    assert len(preprocessing["image_mean"]) == len(preprocessing["image_std"]) == 3
    data = ShapeCaptionData(val=str(shards["val"]), batch_size=16)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    texts = [f"a photo of a {name}" for name in CLASS_NAMES]
    tokens = tokenizer(texts, padding="max_length", max_length=32, return_tensors="pt")
    assert torch.equal(tokens["input_ids"], module.tokenizer(texts, padding="max_length", max_length=32,
                                                             return_tensors="pt")["input_ids"])
    with torch.no_grad():
        image = F.normalize(model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        assert torch.equal(image, module.encode_image(batch["pixel_values"]))
        assert torch.equal(text, module.encode_prompts(texts))


# -- pretraining and cache -----------------------------------------------------------------------------------------
def test_short_pretraining_gives_zero_shot_accuracy_well_above_chance(pretrained, shards):
    report = json.loads((pretrained / cache.REPORT).read_text())
    zero_shot = report["zero_shot"]
    assert zero_shot["images"] == SHORT["num_val"] and report["steps"] == SHORT["max_steps"]
    assert zero_shot["accuracy"] > 3 * zero_shot["chance"]
    assert zero_shot["color_correct"] > 0.8
    assert set(zero_shot["by_color"]) == set(COLORS) and set(zero_shot["by_shape"]) == set(SHAPES)
    # the saved model, through plain transformers, on images it has never seen
    model = CLIPModel.from_pretrained(pretrained).eval()
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    data = ShapeCaptionData(val=str(shards["val"]), batch_size=96)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        tokens = tokenizer([f"a photo of a {n}." for n in CLASS_NAMES], padding=True, return_tensors="pt")
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output, dim=-1)
    accuracy = ((image @ text.t()).argmax(-1) == batch["cls"]).float().mean().item()
    assert accuracy > 0.25, accuracy


def test_cached_model_is_returned_without_training(pretrained, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cache was missed: this would train again")

    monkeypatch.setattr(cache, "pretrain", refuse)
    monkeypatch.setattr(cache, "write_shapes", refuse)
    assert ensure_tiny_clip(pretrained.parent, **SHORT) == pretrained  # `refuse` proves nothing was trained again
    with pytest.raises(AssertionError, match="cache was missed"):  # other settings, another entry
        ensure_tiny_clip(pretrained.parent, **{**SHORT, "seed": 1})


def test_an_interrupted_pretraining_leaves_no_entry_and_no_temporary_files(tmp_path, monkeypatch):
    settings = {"num_train": 64, "num_val": 16, "max_steps": 1}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = cache.tiny_clip_path(tmp_path, **settings).name
    stale = tmp_path / f".{name}.{socket.gethostname()}.{dead.pid}.abc.tmp"  # left by a killed run
    stale.mkdir()

    def interrupted(train, val, settings, out, threads):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_tiny_clip(tmp_path, **settings)
    assert list(tmp_path.iterdir()) == []


# -- config --------------------------------------------------------------------------------------------------------
def test_demo_config_fits_through_launch_fit_and_exports_a_loadable_clip(tmp_path, shards):
    result = run_fit("--config", str(CONFIG), f"run.root={tmp_path}", f"data.params.train={shards['train']}",
                     f"data.params.val={shards['val']}", "data.params.batch_size=32", "trainer.max_steps=8",
                     "trainer.val_check_interval=8", timeout=120, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = tmp_path / "clip-pretrain" / "tiny-clip"
    model = CLIPModel.from_pretrained(exported)
    assert model.config.vision_config.image_size == 32
    assert AutoTokenizer.from_pretrained(exported)("red circle", add_special_tokens=False)["input_ids"] == \
        build_tokenizer()("red circle", add_special_tokens=False)["input_ids"]
    metrics = (tmp_path / "clip-pretrain" / "logs" / "csv" / "metrics.csv").read_text()
    assert "val/zero_shot_accuracy" in metrics

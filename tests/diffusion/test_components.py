"""components.py: loading the parts of a pipeline (directory, per-part sources, configs), their problems before
anything loads, saving in diffusers' layout, freezing."""

import copy
import pickle

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNetMotionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from datamodules.errors import ParamError
from lightning_modules.diffusion import (
    FROM_PRETRAINED,
    diffusion_parts_problems,
    freeze,
    is_frozen,
    load_diffusion_parts,
    save_diffusion_parts,
    write_tiny_text_to_image,
)
from lightning_modules.diffusion.tiny import tiny_unet


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_pixel_space_round_trip_through_a_local_directory(pixel_pipeline, tmp_path):
    parts = load_diffusion_parts(str(pixel_pipeline), vae=None)
    assert parts.pixel_space and isinstance(parts.unet, UNet2DConditionModel)
    assert isinstance(parts.text_encoder, CLIPTextModel) and isinstance(parts.scheduler, DDPMScheduler)
    saved = save_diffusion_parts(parts, tmp_path / "copy")
    assert sorted(p.name for p in saved.iterdir()) == ["scheduler", "text_encoder", "tokenizer", "unet"]
    again = load_diffusion_parts(str(saved), vae=None)
    assert again.vae is None
    assert_same_weights(parts.unet, again.unet)
    assert_same_weights(parts.text_encoder, again.text_encoder)
    assert again.tokenizer("a red circle").input_ids == parts.tokenizer("a red circle").input_ids
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(again.scheduler.config) == public(parts.scheduler.config)  # save_pretrained adds _class_name


def test_round_trip_with_a_vae_loads_as_a_stable_diffusion_pipeline(latent_pipeline, tmp_path):
    parts = load_diffusion_parts(str(latent_pipeline))
    assert isinstance(parts.vae, AutoencoderKL) and not parts.pixel_space
    assert parts.unet.config.in_channels == parts.vae.config.latent_channels
    saved = save_diffusion_parts(parts, tmp_path / "copy")
    again = load_diffusion_parts(str(saved))
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(parts, name), getattr(again, name))
    # the export loads without this project's code
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(saved))
    assert_same_weights(parts.unet, pipeline.unet)
    assert_same_weights(parts.vae, pipeline.vae)


def test_parts_built_from_config_dicts(pixel_pipeline):
    unet_config = dict(tiny_unet(16, 3).config)
    text_config = {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "max_position_embeddings": 32}
    parts = load_diffusion_parts(None, unet={"config": unet_config}, vae=None, text_encoder={"config": text_config},
                                 tokenizer=str(pixel_pipeline / "tokenizer"), scheduler="DDIMScheduler",
                                 scheduler_config={"prediction_type": "v_prediction"}, dtype="bfloat16")
    assert isinstance(parts.unet, UNet2DConditionModel) and parts.unet.config.sample_size == 16
    assert parts.text_encoder.config.intermediate_size == 37
    assert isinstance(parts.tokenizer, CLIPTokenizer)
    assert isinstance(parts.scheduler, DDIMScheduler) and parts.scheduler.config.prediction_type == "v_prediction"
    assert {p.dtype for p in parts.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in parts.text_encoder.parameters()} == {torch.bfloat16}


def test_a_part_from_its_own_directory_overrides_the_pipeline(pixel_pipeline, tmp_path):
    other = write_tiny_text_to_image(tmp_path / "other", seed=1)
    parts = load_diffusion_parts(str(pixel_pipeline), unet=str(other / "unet"), vae=None)
    reference = load_diffusion_parts(str(other), vae=None)
    own = load_diffusion_parts(str(pixel_pipeline), vae=None)
    assert_same_weights(parts.unet, reference.unet)
    assert_same_weights(parts.text_encoder, own.text_encoder)
    assert not torch.equal(parts.unet.conv_in.weight, own.unet.conv_in.weight)


def test_a_video_unet_class_from_config(pixel_pipeline):
    config = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64],
              "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlockMotion", "DownBlockMotion"],
              "up_block_types": ["UpBlockMotion", "CrossAttnUpBlockMotion"], "cross_attention_dim": 32,
              "num_attention_heads": 4, "norm_num_groups": 8, "motion_num_attention_heads": 2,
              "motion_max_seq_length": 8}
    parts = load_diffusion_parts(str(pixel_pipeline), unet={"config": config}, vae=None,
                                 unet_class="UNetMotionModel")
    assert isinstance(parts.unet, UNetMotionModel) and parts.unet.config.motion_max_seq_length == 8
    problems = diffusion_parts_problems(str(pixel_pipeline), unet={"config": {**config, "motion_heads": 2}},
                                        vae=None, unet_class="UNetMotionModel")
    assert [name for name, _ in problems] == ["unet.config"]  # checked against the motion UNet's own arguments


def test_a_missing_local_path_is_one_problem_and_nothing_loads(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-such-pipeline")
    problems = diffusion_parts_problems(missing)
    assert problems == [("pretrained", f"'{missing}' is not a local directory")]

    def refuse(*args, **kwargs):
        raise AssertionError("nothing may load when the arguments have problems")

    for cls in (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDPMScheduler):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    with pytest.raises(ParamError) as raised:
        load_diffusion_parts(missing)
    assert raised.value.problems == problems


def test_a_pipeline_directory_without_a_vae_asks_for_vae_null(pixel_pipeline):
    [(name, message)] = diffusion_parts_problems(str(pixel_pipeline))
    assert name == "pretrained"
    assert "no vae/ subfolder" in message and "vae: null for pixel space" in message
    assert diffusion_parts_problems(str(pixel_pipeline), vae=None) == []


def test_unknown_scheduler_with_did_you_mean(pixel_pipeline):
    problems = diffusion_parts_problems(str(pixel_pipeline), vae=None, scheduler="DDIMScheduer")
    assert problems == [("scheduler", "unknown scheduler class 'DDIMScheduer' (did you mean DDIMScheduler?)")]
    with pytest.raises(ParamError, match="did you mean DDIMScheduler"):
        load_diffusion_parts(str(pixel_pipeline), vae=None, scheduler="DDIMScheduer")


def test_a_scheduler_whose_dependency_is_missing_says_which(monkeypatch):
    import diffusers

    class MissingBackend:
        """What diffusers exports in a scheduler's place when its optional dependency is not installed."""

        @classmethod
        def from_config(cls, *args, **kwargs):
            raise ImportError("LMSDiscreteScheduler requires the scipy library but it was not found in your "
                              "environment.\nSee the installation page.")

    monkeypatch.setattr(diffusers, "LMSDiscreteScheduler", MissingBackend)
    [(name, message)] = diffusion_parts_problems(None, unet={"config": {}}, vae=None, text_encoder={"config": {}},
                                                 tokenizer=".", scheduler="LMSDiscreteScheduler")
    assert name == "scheduler" and "scipy" in message


def test_every_problem_is_reported_at_once(pixel_pipeline):
    problems = diffusion_parts_problems()
    assert [name for name, _ in problems] == ["unet", "vae", "text_encoder", "tokenizer"]
    assert all("pretrained is not given" in message for _, message in problems)
    problems = dict(diffusion_parts_problems(
        str(pixel_pipeline), unet={"cfg": {}}, vae={"config": {"latent_channel": 4}}, text_encoder=None,
        tokenizer={"config": {}}, scheduler="DDPMScheduler", scheduler_config={"beta_schedul": "linear"},
        unet_class="UNet4D", dtype="float8"))
    assert set(problems) == {"unet_class", "unet", "vae.config", "text_encoder", "tokenizer", "scheduler_config",
                             "dtype"}
    assert "must be {config: {...}}" in problems["unet"]
    assert problems["vae.config"] == "unknown key latent_channel (did you mean latent_channels?) for AutoencoderKL"
    assert "only the vae may be null" in problems["text_encoder"]
    assert "never built from a config" in problems["tokenizer"]
    assert "did you mean beta_schedule?" in problems["scheduler_config"]
    assert "one of UNet2DConditionModel, UNetMotionModel, UNet3DConditionModel" in problems["unet_class"]
    assert "float8" in problems["dtype"]


def test_text_encoder_config_typos_are_caught_but_clip_keys_pass(pixel_pipeline):
    problems = diffusion_parts_problems(str(pixel_pipeline), vae=None,
                                        text_encoder={"config": {"hidden_sise": 32, "num_hidden_layers": 1}})
    assert problems == [("text_encoder.config",
                         "unknown key hidden_sise (did you mean hidden_size?) for CLIPTextModel")]


def test_scheduler_takes_the_pipelines_config_then_the_overrides(latent_pipeline):
    parts = load_diffusion_parts(str(latent_pipeline), scheduler="DDIMScheduler",
                                 scheduler_config={"prediction_type": "v_prediction"})
    assert isinstance(parts.scheduler, DDIMScheduler)
    assert parts.scheduler.config.beta_schedule == "scaled_linear"  # written by the tiny pipeline's DDPMScheduler
    assert parts.scheduler.config.beta_end == pytest.approx(0.012)
    assert parts.scheduler.config.prediction_type == "v_prediction"


def test_from_pretrained_sentinel_survives_copies():
    assert copy.deepcopy(FROM_PRETRAINED) is FROM_PRETRAINED
    assert pickle.loads(pickle.dumps(FROM_PRETRAINED)) is FROM_PRETRAINED
    assert repr(FROM_PRETRAINED) == "FROM_PRETRAINED"


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = freeze(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
        self.trained = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))


def test_frozen_parts_stay_in_eval_without_gradients():
    holder = Holder()
    holder.train()
    assert holder.training and holder.trained.training and holder.trained[1].training
    assert not holder.frozen.training and not any(m.training for m in holder.frozen.modules())
    assert not any(p.requires_grad for p in holder.frozen.parameters())
    assert all(p.requires_grad for p in holder.trained.parameters())
    holder.frozen.train(True)  # asked directly, too
    assert not holder.frozen[1].training
    x = torch.ones(2, 4)
    assert torch.equal(holder.frozen(x), holder.frozen(x))  # dropout stays off
    assert is_frozen(holder.frozen) and not is_frozen(holder.trained)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))],
                         ids=["deepcopy", "pickle"])
def test_a_copy_of_a_frozen_part_stays_frozen(duplicate):
    holder = duplicate(Holder())
    holder.train()
    assert not holder.frozen[1].training and holder.trained[1].training
    assert is_frozen(holder.frozen)
    holder.frozen.train()
    assert not holder.frozen.training  # the copy's train is bound to the copy, not to the original


def test_a_hub_pipeline_in_the_local_cache_needs_no_lookup(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--tiny-org--tiny-sd" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "models--tiny-org--tiny-sd" / "refs").mkdir()
    (tmp_path / "models--tiny-org--tiny-sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert diffusion_parts_problems("tiny-org/tiny-sd") == []
    [(name, message)] = diffusion_parts_problems("tiny-org/not-cached-sd")
    assert name == "pretrained" and "not in the Hugging Face cache (hub lookups are off)" in message
    [(name, message)] = diffusion_parts_problems("not a/valid hub id")
    assert name == "pretrained" and "neither a local directory nor a Hugging Face hub id" in message

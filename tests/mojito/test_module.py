"""The Mojito module: the intensity path, what trains, the backbones, generation, config errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel

from datamodules.errors import ParamError
from lightning_modules.diffusion.tiny import TEXT_WIDTH
from lightning_modules.mojito import MojitoModule
from lightning_modules.mojito.backbone import temporal_parameter_names, video_unet_forward
from lightning_modules.mojito.intensity import NONE, IntensityEmbedding, intensity_guided


def module(tiny_video, **params) -> MojitoModule:
    base = {"pretrained": str(tiny_video["base"]), "vae": None, "unet_class": "UNetMotionModel",
            **params.pop("base", {})}
    return MojitoModule(base=base, **{"intensity_dim": 8, "gradient_checkpointing": False, **params})


def inputs(batch: int = 2, frames: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, frames, 16, 16, generator=g), torch.tensor([10, 500])[:batch],
            torch.randn(batch, 5, TEXT_WIDTH, generator=g))


@pytest.fixture(scope="module")
def intensity_model(tiny_video) -> MojitoModule:
    return module(tiny_video).eval()


def test_an_untrained_intensity_input_leaves_the_base_unchanged(intensity_model):
    latents, t, context = inputs()
    base = video_unet_forward(intensity_model.unet, latents, t, context)
    for level in range(NONE, 6):
        with torch.no_grad():
            out = intensity_model.predict(latents, t, context, torch.tensor([level, level]))
        torch.testing.assert_close(out, base, rtol=0, atol=0)


def test_the_level_acts_only_through_the_time_embedding_and_none_is_the_base(tiny_video):
    model = module(tiny_video).eval()
    with torch.no_grad():  # what training would do: a projection that is no longer zero
        model.unet.time_embedding.cond_proj.weight.normal_()
    latents, t, context = inputs()
    with torch.no_grad():
        base = video_unet_forward(model.unet, latents, t, context)
        none = model.predict(latents, t, context, torch.tensor([NONE, NONE]))
        fast = model.predict(latents, t, context, torch.tensor([5, 1]))
    torch.testing.assert_close(none, base, rtol=0, atol=0)
    assert (fast - base).abs().max() > 1e-3
    # with the time embedding's output replaced by the unconditioned one, a level changes nothing
    plain = {}
    hook = model.unet.time_embedding.register_forward_hook(
        lambda mod, args, out: plain.setdefault("emb", out) if len(args) < 2 or args[1] is None else plain["emb"])
    try:
        with torch.no_grad():
            video_unet_forward(model.unet, latents, t, context)
            replaced = model.predict(latents, t, context, torch.tensor([5, 1]))
    finally:
        hook.remove()
    torch.testing.assert_close(replaced, base, rtol=0, atol=0)


def test_the_none_embedding_is_zero_and_never_trained():
    embedding = IntensityEmbedding(4)
    out = embedding(torch.tensor([NONE, 3]))
    assert out[0].abs().sum() == 0 and out[1].abs().sum() > 0
    out.sum().backward()
    assert embedding.embedding.weight.grad[NONE].abs().sum() == 0
    with pytest.raises(ValueError, match="0..5"):
        embedding(torch.tensor([6]))
    with pytest.raises(ValueError, match="integer tensor"):
        embedding(torch.tensor([1.0]))


def test_intensity_guidance_combines_the_three_predictions():
    empty, text, level = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([4.0])
    # 1 + 2 * (3 - 1) + 0.5 * (4 - 3)
    assert intensity_guided(empty, text, level, 2.0, 0.5).item() == pytest.approx(5.5)


def learned(model: MojitoModule) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("sets", [["intensity"], ["motion_modules"], ["intensity", "motion_modules"], ["unet"]])
def test_exactly_the_chosen_sets_train_and_are_checkpointed(tiny_video, sets):
    model = module(tiny_video, trainable=sets)
    names = learned(model)
    intensity = {"intensity.embedding.weight", "unet.time_embedding.cond_proj.weight"}
    motion = {f"unet.{n}" for n in temporal_parameter_names(model.unet)}
    expected = set()
    if "intensity" in sets:
        expected |= intensity
    if "motion_modules" in sets:
        expected |= motion
    if "unet" in sets:
        expected |= {f"unet.{n}" for n, _ in model.unet.named_parameters()}
    assert names == expected and motion and all(".motion_modules." in n for n in motion)
    assert set(model.state_dict()) == expected
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def test_lora_adapters_train_alone_and_start_as_the_base(tiny_video):
    model = module(tiny_video, trainable=["lora"], intensity_dim=None,
                   lora={"rank": 2, "alpha": 2, "target_modules": ["to_q", "to_v"]}).eval()
    names = learned(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert any(".attentions." in n for n in names) and any(".motion_modules." in n for n in names)
    plain = module(tiny_video, trainable=["motion_modules"], intensity_dim=None).eval()
    latents, t, context = inputs()
    with torch.no_grad():
        torch.testing.assert_close(video_unet_forward(model.unet, latents, t, context),
                                   video_unet_forward(plain.unet, latents, t, context))


def test_a_checkpoint_without_a_learned_weight_is_refused(tiny_video):
    model = module(tiny_video)
    state = model.state_dict()
    state.pop("intensity.embedding.weight")
    with pytest.raises(KeyError, match="intensity.embedding.weight"):
        module(tiny_video).load_state_dict(state)


def test_every_bad_choice_is_reported_at_once(tiny_video):
    with pytest.raises(ParamError) as error:
        module(tiny_video, trainable=["intensty", "lora"], intensity_dropout=1.5, lr=0, vae_chunk=0,
               sampling={"steps": 0, "scheduler": "NoSuchScheduler"})
    keys = [name for name, _ in error.value.problems]
    assert keys == ["trainable", "lora", "intensity_dropout", "lr", "vae_chunk", "sampling.steps", "sampling.scheduler"]
    assert "did you mean intensity?" in str(error.value)
    with pytest.raises(ParamError, match="intensity_dim: null turns off"):
        module(tiny_video, trainable=["intensity"], intensity_dim=None)


def tiny_2d_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
                                attention_head_dim=8, norm_num_groups=8)


def test_an_sd_unet_with_a_motion_adapter_from_a_directory_becomes_a_motion_unet(tiny_video, tmp_path):
    torch.manual_seed(0)
    tiny_2d_unet().save_pretrained(tmp_path / "unet2d")
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=8, motion_max_seq_length=8).save_pretrained(tmp_path / "adapter")
    model = module(tiny_video, base={"unet": str(tmp_path / "unet2d"), "unet_class": "UNet2DConditionModel"},
                   motion_adapter=str(tmp_path / "adapter"), trainable=["motion_modules"])
    assert isinstance(model.unet, UNetMotionModel)
    assert set(model.state_dict()) == {f"unet.{n}" for n in temporal_parameter_names(model.unet)}
    latents, t, context = inputs()
    assert model.predict(latents, t, context, torch.tensor([1, 2])).shape == latents.shape
    with pytest.raises(ParamError, match="motion_adapter: a 2-D base UNet needs a MotionAdapter"):
        module(tiny_video, base={"unet": str(tmp_path / "unet2d"), "unet_class": "UNet2DConditionModel"})
    with pytest.raises(ParamError, match="motion_adapter: '/no/such/adapter' is not a local directory"):
        module(tiny_video, motion_adapter="/no/such/adapter")


def test_a_unet3d_backbone_trains_its_temporal_layers(tiny_video):
    config = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": (32, 64),
              "layers_per_block": 1, "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
              "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"), "cross_attention_dim": TEXT_WIDTH,
              "attention_head_dim": 8, "norm_num_groups": 8}
    model = module(tiny_video, base={"unet": {"config": config}, "unet_class": "UNet3DConditionModel"},
                   trainable=["intensity", "motion_modules"])
    assert isinstance(model.unet, UNet3DConditionModel)
    temporal = temporal_parameter_names(model.unet)
    assert temporal and all(n.split(".")[0] == "transformer_in" or "temp_" in n for n in temporal)
    batch = {"video": torch.rand(2, 3, 3, 16, 16) * 2 - 1, "caption": ["a red circle", "a blue square"],
             "level": torch.tensor([1, 5])}
    loss = model.loss(batch, torch.Generator().manual_seed(0), train=True)
    loss.backward()
    assert model.unet.time_embedding.cond_proj.weight.grad.abs().sum() > 0


def test_generation_is_seeded_and_an_untrained_level_changes_nothing(intensity_model):
    def run(levels, seed=0):
        return intensity_model.generate(["a red circle moving left", "a blue square"], levels=levels, steps=3,
                                        frames=3, guidance=2.0, generator=torch.Generator().manual_seed(seed))

    plain = run(None)
    assert plain.shape == (2, 3, 3, 16, 16) and plain.min() >= -1 and plain.max() <= 1
    torch.testing.assert_close(run(None), plain, rtol=0, atol=0)
    torch.testing.assert_close(run([5, 1]), plain, rtol=0, atol=1e-4)  # three branches batched, not two
    assert (run(None, seed=1) - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="1 levels for 2 prompts"):
        run([3])
    with pytest.raises(ParamError, match="frames: must be >= 2"):
        intensity_model.generate(["a red circle"], frames=1)

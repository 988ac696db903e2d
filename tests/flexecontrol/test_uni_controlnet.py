"""Uni-ControlNet's local adapter (lightning_modules/flexecontrol/uni_controlnet.py) on a tiny pixel-space UNet: the
stacked input, FDN and where it sits, the start from the UNet (zero residuals, copied weights), the parameter count
worked out by hand, training, errors, and the diffusers save/load round trip."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from datamodules.errors import ParamError
from lightning_modules.flexecontrol.uni_controlnet import (
    ConditionFeatureExtractor,
    FeatureDenormalization,
    UniControlNetAdapter,
    scaled_inject_channels,
    stack_conditions,
)

TYPES = {"canny": 1, "depth": 1, "seg": 1}
SIZE = 16  # pixel space: the image is the sample's size


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    return unet.eval().requires_grad_(False)


@pytest.fixture()
def unet() -> UNet2DConditionModel:
    return tiny_unet()


@pytest.fixture()
def adapter(unet) -> UniControlNetAdapter:
    torch.manual_seed(1)
    return UniControlNetAdapter.from_unet(unet, TYPES, condition_scale=1)


def inputs(batch: int = 2, size: int = SIZE, scale: int = 1) -> dict:
    """A noisy sample, timestep, text states, canny (two inputs, the second absent in sample 0) and depth."""
    generator = torch.Generator().manual_seed(2)
    image = size * scale
    return {"sample": torch.randn(batch, 3, size, size, generator=generator), "timestep": 10,
            "encoder_hidden_states": torch.randn(batch, 4, 32, generator=generator),
            "conditions": {"canny": torch.rand(batch, 2, 1, image, image, generator=generator),
                           "depth": torch.rand(batch, 1, 1, image, image, generator=generator)},
            "present": {"canny": torch.tensor([[True, False]] + [[True, True]] * (batch - 1)),
                        "depth": torch.ones(batch, 1, dtype=torch.bool)}}


def open_zero_convs(adapter: UniControlNetAdapter) -> None:
    """Random weights in every zero-initialised conv, as after training, so the conditions reach the residuals."""
    generator = torch.Generator().manual_seed(3)
    modules = [*adapter.encoder.controlnet_down_blocks, adapter.encoder.controlnet_mid_block,
               *adapter.feature_extractor.zero_convs]
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def conv_params(in_channels: int, out_channels: int, kernel: int) -> int:
    return in_channels * out_channels * kernel * kernel + out_channels


# --- the stacked input ------------------------------------------------------------------------------------------

def test_stacked_input_has_zeros_where_absent_and_the_max_of_several_inputs():
    g = torch.Generator().manual_seed(0)
    canny = torch.randn(2, 2, 1, 8, 8, generator=g)  # signed maps: an absent input must not win the max
    depth = torch.rand(2, 1, 1, 8, 8, generator=g)
    present = {"canny": torch.tensor([[False, False], [True, True]]), "depth": torch.tensor([[True], [False]])}
    stacked = stack_conditions({"canny": canny, "depth": depth}, present, TYPES, batch_size=2, image_size=(8, 8))
    assert stacked.shape == (2, 3, 8, 8)
    # sample 0: only depth
    assert torch.equal(stacked[0, 0], torch.zeros(8, 8))
    assert torch.equal(stacked[0, 1], depth[0, 0, 0])
    # sample 1: canny's two inputs merged by max, depth absent
    assert torch.equal(stacked[1, 0], torch.maximum(canny[1, 0, 0], canny[1, 1, 0]))
    assert not torch.equal(stacked[1, 0], canny[1, 0, 0]) and not torch.equal(stacked[1, 0], canny[1, 1, 0])
    assert torch.equal(stacked[1, 1], torch.zeros(8, 8))
    # seg not given at all
    assert torch.equal(stacked[:, 2], torch.zeros(2, 8, 8))


def test_an_absent_input_takes_no_part_in_the_max_and_strengths_scale_their_slot():
    high = torch.full((1, 1, 4, 4), 5.0)
    low = torch.full((1, 1, 4, 4), -1.0)
    canny = torch.stack([low, high], dim=1)  # [1, 2, 1, 4, 4]: the larger map is the absent one
    present = {"canny": torch.tensor([[True, False]])}
    channels = {"canny": 1, "depth": 2}
    stacked = stack_conditions({"canny": canny}, present, channels, batch_size=1, image_size=(4, 4))
    assert stacked.shape == (1, 3, 4, 4)
    assert torch.equal(stacked[0, 0], low[0, 0])
    assert torch.equal(stacked[0, 1:], torch.zeros(2, 4, 4))
    doubled = stack_conditions({"canny": canny}, present, channels, batch_size=1, image_size=(4, 4),
                               strengths={"canny": 2.0})
    assert torch.equal(doubled[0, 0], 2 * low[0, 0])


def test_slots_follow_the_type_order_and_take_each_types_channels():
    channels = {"seg": 2, "canny": 1}
    seg = torch.arange(2 * 9, dtype=torch.float32).reshape(1, 1, 2, 3, 3)
    canny = -torch.ones(1, 1, 1, 3, 3)
    present = {"seg": torch.tensor([[True]]), "canny": torch.tensor([[True]])}
    stacked = stack_conditions({"canny": canny, "seg": seg}, present, channels, batch_size=1, image_size=(3, 3),
                               dtype=torch.float64)
    assert stacked.dtype == torch.float64
    assert torch.equal(stacked[0, :2], seg[0, 0].double()) and torch.equal(stacked[0, 2], canny[0, 0, 0].double())


def test_a_type_with_no_inputs_or_none_present_is_zeros():
    present = {"canny": torch.zeros(2, 0, dtype=torch.bool), "depth": torch.zeros(2, 1, dtype=torch.bool)}
    conditions = {"canny": torch.ones(2, 0, 1, 4, 4), "depth": torch.ones(2, 1, 1, 4, 4)}
    stacked = stack_conditions(conditions, present, TYPES, batch_size=2, image_size=(4, 4))
    assert torch.equal(stacked, torch.zeros(2, 3, 4, 4))
    nothing = stack_conditions({}, {}, TYPES, batch_size=2, image_size=(4, 4))
    assert torch.equal(nothing, torch.zeros(2, 3, 4, 4))


# --- feature denormalisation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("feature_size", [6, 3])
def test_fdn_is_parameter_free_groupnorm_times_one_plus_gamma_plus_beta(feature_size):
    torch.manual_seed(0)
    fdn = FeatureDenormalization(channels=8, feature_channels=5, num_groups=4, eps=1e-5)
    x = torch.randn(2, 8, 6, 6) * 3 + 1
    features = torch.randn(2, 5, feature_size, feature_size)
    fdn.features = features
    f = features if feature_size == 6 else F.interpolate(features, size=(6, 6), mode="nearest")
    gamma = F.conv2d(f, fdn.conv_gamma.weight, fdn.conv_gamma.bias, padding=1)
    beta = F.conv2d(f, fdn.conv_beta.weight, fdn.conv_beta.bias, padding=1)
    groups = x.reshape(2, 4, -1)
    normalized = ((groups - groups.mean(-1, keepdim=True)) / torch.sqrt(groups.var(-1, unbiased=False, keepdim=True)
                                                                         + 1e-5)).reshape_as(x)
    torch.testing.assert_close(fdn(x), normalized * (1 + gamma) + beta)
    assert not any(p.numel() for p in fdn.norm.parameters())  # affine=False


def test_fdn_without_features_says_how_to_run_it():
    fdn = FeatureDenormalization(channels=8, feature_channels=5, num_groups=4, eps=1e-5)
    with pytest.raises(RuntimeError, match="UniControlNetAdapter.forward"):
        fdn(torch.randn(1, 8, 4, 4))


def test_fdn_sits_in_both_norms_of_exactly_the_first_resblock_of_each_level(adapter, unet):
    inject = adapter.config.inject_channels
    fdn_paths = {name for name, m in adapter.encoder.named_modules() if isinstance(m, FeatureDenormalization)}
    expected = {f"down_blocks.{level}.resnets.0.{norm}" for level in range(len(unet.down_blocks))
                for norm in ("norm1", "norm2")}
    assert fdn_paths == expected
    for level, (first, unet_block) in enumerate(zip(adapter.encoder.down_blocks, unet.down_blocks)):
        unet_first = unet_block.resnets[0]
        for norm in ("norm1", "norm2"):
            fdn, original = getattr(first.resnets[0], norm), getattr(unet_first, norm)
            assert fdn.norm.num_channels == original.num_channels and fdn.norm.num_groups == original.num_groups
            assert fdn.norm.eps == original.eps and not fdn.norm.affine
            assert fdn.conv_gamma.in_channels == inject[level] and fdn.conv_beta.out_channels == original.num_channels
        for resnet in first.resnets[1:]:
            assert type(resnet.norm1) is nn.GroupNorm and type(resnet.norm2) is nn.GroupNorm
    for resnet in adapter.encoder.mid_block.resnets:
        assert type(resnet.norm1) is nn.GroupNorm


def test_each_levels_features_arrive_at_its_resolution(unet):
    adapter = UniControlNetAdapter.from_unet(unet, TYPES, condition_scale=2)
    seen = []
    for level, (fdn, _) in enumerate(adapter.denormalizations()):
        fdn.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[-2:], m.features.shape[-2:])))
    adapter(**inputs(size=8, scale=2))  # image 16x16, latent 8x8
    assert seen == [(torch.Size([8, 8]),) * 2, (torch.Size([4, 4]),) * 2]


def test_the_feature_extractor_has_the_official_layout_at_sd_shapes():
    extractor = ConditionFeatureExtractor(21, [192, 256, 384, 512], halvings=3)
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in extractor.modules()
             if isinstance(m, nn.Conv2d)]
    assert convs == [(21, 32, 3, 1), (32, 64, 3, 2), (64, 64, 3, 1), (64, 128, 3, 2), (128, 128, 3, 1),
                     (128, 192, 3, 2), (192, 256, 3, 2), (256, 384, 3, 2), (384, 512, 3, 2),
                     (192, 192, 3, 1), (256, 256, 3, 1), (384, 384, 3, 1), (512, 512, 3, 1)]
    with torch.no_grad():
        features = extractor(torch.rand(1, 21, 64, 64))  # image 64 -> latent 8 with an SD VAE
    assert [f.shape[-1] for f in features] == [8, 4, 2, 1]
    assert all(torch.equal(f, torch.zeros_like(f)) for f in features)  # zero-convs
    assert scaled_inject_channels((320, 640, 1280, 1280)) == [192, 256, 384, 512]
    assert scaled_inject_channels((32, 64)) == [round(192 * 32 / 320), round(256 * 64 / 640)] == [19, 26]


# --- the start from the UNet ------------------------------------------------------------------------------------

def test_at_init_the_residuals_are_zero_and_the_unet_output_is_the_base_unets(adapter, unet):
    batch = inputs()
    with torch.no_grad():
        down, mid = adapter(**batch)
        expected_channels = [32, 32, 32, 64]
        assert [d.shape[1] for d in down] == expected_channels and mid.shape == (2, 64, SIZE // 2, SIZE // 2)
        assert all(torch.equal(r, torch.zeros_like(r)) for r in (*down, mid))
        args = (batch["sample"], batch["timestep"], batch["encoder_hidden_states"])
        controlled = unet(*args, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        assert torch.equal(controlled, unet(*args).sample)


def test_the_copy_starts_from_the_unets_encoder_weights_in_its_own_tensors(adapter, unet):
    copied_parts = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
    unet_state = {k: v for k, v in unet.state_dict().items() if k.startswith(copied_parts)}
    copy_state = adapter.encoder.state_dict()
    shared = unet_state.keys() & copy_state.keys()
    for key in shared:
        assert torch.equal(copy_state[key], unet_state[key]), key
        assert copy_state[key].data_ptr() != unet_state[key].data_ptr(), key
    # what the copy does not take: the affine weights of the norms FDN replaces, nothing else
    assert unet_state.keys() - shared == {f"down_blocks.{level}.resnets.0.{norm}.{p}" for level in range(2)
                                          for norm in ("norm1", "norm2") for p in ("weight", "bias")}
    # what the copy has that the UNet has not: FDN convs, zero-convs
    extra = copy_state.keys() - shared
    assert all(".conv_gamma." in k or ".conv_beta." in k or k.startswith("controlnet_") for k in extra)
    assert all(p.requires_grad for p in adapter.parameters())


def test_trainable_parameter_count_equals_the_count_from_the_layer_shapes(adapter, unet):
    widths, levels = unet.config.block_out_channels, len(unet.config.block_out_channels)
    inject = [19, 26]
    assert adapter.config.inject_channels == inject
    first_in = [widths[0], *widths[:-1]]  # the first ResBlock of level i takes level i-1's width
    dropped_affines = sum(2 * first_in[i] + 2 * widths[i] for i in range(levels))
    copy = sum(p.numel() for part in (unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block)
               for p in part.parameters()) - dropped_affines
    residual_channels = [widths[0]]
    for i, width in enumerate(widths):
        residual_channels += [width] * unet.config.layers_per_block + ([width] if i < levels - 1 else [])
    residual_channels.append(widths[-1])  # the middle block's
    zero_convs = sum(conv_params(c, c, 1) for c in residual_channels)
    # pixel space (condition_scale 1): stem conv to 32, level convs 32 -> 19 (stride 1) -> 26, 3x3 zero-convs
    feature_extractor = (conv_params(3, 32, 3) + conv_params(32, inject[0], 3) + conv_params(inject[0], inject[1], 3)
                         + sum(conv_params(c, c, 3) for c in inject))
    denormalization = sum(2 * conv_params(inject[i], first_in[i], 3) + 2 * conv_params(inject[i], widths[i], 3)
                          for i in range(levels))
    counts = adapter.trainable_parameter_counts()
    assert counts == {"copy": copy, "denormalization": denormalization, "feature_extractor": feature_extractor,
                      "zero_convs": zero_convs, "total": copy + denormalization + feature_extractor + zero_convs}
    assert counts["total"] == sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    adapter.feature_extractor.requires_grad_(False)
    assert adapter.trainable_parameter_counts()["total"] == counts["total"] - feature_extractor


# --- training ---------------------------------------------------------------------------------------------------

def test_a_gradient_step_changes_the_output_then_the_whole_adapter_gets_gradients(adapter, unet):
    batch = inputs()
    args = (batch["sample"], batch["timestep"], batch["encoder_hidden_states"])
    target = torch.randn_like(batch["sample"], memory_format=torch.contiguous_format)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=1.0)

    def controlled_output():
        down, mid = adapter(**batch)
        return unet(*args, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    def grad_norm(parameter):
        return 0.0 if parameter.grad is None else parameter.grad.abs().sum().item()

    before = controlled_output()
    F.mse_loss(before, target).backward()
    zero_conv_grads = [grad_norm(m.weight) for m in adapter.encoder.controlnet_down_blocks]
    assert all(g > 0 for g in zero_conv_grads) and grad_norm(adapter.encoder.controlnet_mid_block.weight) > 0
    # behind the zero-convs nothing gets a gradient yet
    assert grad_norm(adapter.encoder.conv_in.weight) == 0
    assert grad_norm(adapter.feature_extractor.zero_convs[0].weight) == 0
    optimizer.step()
    optimizer.zero_grad()

    after = controlled_output()
    assert not torch.allclose(after, before)
    F.mse_loss(after, target).backward()
    fdn, _ = adapter.denormalizations()[0]
    assert grad_norm(adapter.encoder.conv_in.weight) > 0
    assert grad_norm(adapter.encoder.down_blocks[0].attentions[0].proj_in.weight) > 0
    assert grad_norm(fdn.conv_gamma.bias) > 0 and grad_norm(fdn.conv_beta.bias) > 0
    assert all(grad_norm(m.weight) > 0 for m in adapter.feature_extractor.zero_convs)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in unet.parameters())


def test_conditions_reach_the_residuals_and_strength_zero_is_absence(adapter):
    open_zero_convs(adapter)
    batch = inputs()
    with torch.no_grad():
        down, mid = adapter(**batch)
        without_canny = {**batch, "conditions": {"depth": batch["conditions"]["depth"]},
                         "present": {"depth": batch["present"]["depth"]}}
        down_absent, mid_absent = adapter(**without_canny)
        down_zero, mid_zero = adapter(**batch, strengths={"canny": 0.0})
        none_present = {**batch, "present": {**batch["present"], "canny": torch.zeros(2, 2, dtype=torch.bool)}}
        down_none, _ = adapter(**none_present)
    assert not torch.allclose(mid, mid_absent)
    # the first residual is conv_in's output, before any FDN: the conditions enter from the first ResBlock on
    assert torch.equal(down[0], down_absent[0])
    assert all(not torch.allclose(a, b) for a, b in zip(down[1:], down_absent[1:]))
    assert torch.equal(mid_zero, mid_absent) and all(torch.equal(a, b) for a, b in zip(down_zero, down_absent))
    assert all(torch.equal(a, b) for a, b in zip(down_none, down_absent))


def test_gradient_checkpointing_gives_the_same_gradients(adapter):
    open_zero_convs(adapter)
    batch = inputs()
    calls = []
    fdn, _ = adapter.denormalizations()[0]
    fdn.register_forward_hook(lambda *_: calls.append(1))

    def gradients():
        adapter.zero_grad()
        down, mid = adapter(**batch)
        (sum(r.square().mean() for r in down) + mid.square().mean()).backward()
        return {name: p.grad.clone() for name, p in adapter.named_parameters()}

    plain = gradients()
    assert len(calls) == 1
    assert fdn.features is None  # without checkpointing the graph holds what the backward pass needs
    adapter.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert len(calls) == 3  # the block ran again in the backward pass, with the same features
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    # kept for the backward pass, the features do not travel with a copy (deepcopy refuses non-leaf tensors)
    adapter(**batch)
    assert fdn.features is not None and fdn.features.grad_fn is not None
    assert copy.deepcopy(adapter).denormalizations()[0][0].features is None
    with torch.no_grad():
        adapter(**batch)
    assert fdn.features is None


# --- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda b: b["conditions"].update(pose=torch.rand(2, 1, 1, SIZE, SIZE)) or b["present"].update(
        pose=torch.ones(2, 1, dtype=torch.bool)),
     r"conditions: unknown condition type 'pose' \(this adapter has canny, depth, seg\)"),
    (lambda b: b["conditions"].update(depth=torch.rand(2, 1, 3, SIZE, SIZE)),
     r"conditions\['depth'\]: expected 1 channel\(s\), got 3"),
    (lambda b: b["conditions"].update(depth=torch.rand(2, 1, 1, SIZE // 2, SIZE // 2)),
     rf"conditions\['depth'\]: expected maps of size {SIZE}x{SIZE} .*got {SIZE // 2}x{SIZE // 2}"),
    (lambda b: b["conditions"].update(depth=torch.rand(2, 1, SIZE, SIZE)),
     rf"conditions\['depth'\]: expected a tensor \[B, K, C, H, W\], got \(2, 1, {SIZE}, {SIZE}\)"),
    (lambda b: b["conditions"].update(depth=torch.rand(3, 1, 1, SIZE, SIZE)),
     r"conditions\['depth'\]: expected batch 2 \(the sample's\), got 3"),
    (lambda b: b["present"].update(depth=torch.ones(2, 2, dtype=torch.bool)),
     r"present\['depth'\]: expected shape \(2, 1\)"),
    (lambda b: b["present"].update(depth=torch.ones(2, 1)), r"present\['depth'\]: expected a bool tensor"),
    (lambda b: b["present"].pop("depth"), r"present\['depth'\]: missing"),
    (lambda b: b["present"].update(seg=torch.ones(2, 1, dtype=torch.bool)),
     r"present\['seg'\]: given without conditions\['seg'\]"),
    (lambda b: b.update(strengths={"hed": 0.5}), r"strengths: unknown condition type 'hed'"),
])
def test_bad_conditions_are_a_one_line_value_error(adapter, change, message):
    batch = inputs()
    change(batch)
    with pytest.raises(ValueError, match=message) as error:
        adapter(**batch)
    assert "\n" not in str(error.value)


def test_bad_constructor_arguments_are_reported_all_at_once(unet):
    with pytest.raises(ParamError) as error:
        UniControlNetAdapter.from_unet(unet, {"canny": 0, "depth": 1}, condition_scale=3, inject_channels=[8])
    assert [name for name, _ in error.value.problems] == ["condition_channels.canny", "condition_scale",
                                                          "inject_channels"]
    with pytest.raises(ParamError, match="condition_channels: expected a non-empty mapping"):
        UniControlNetAdapter.from_unet(unet, {}, condition_scale=8)
    with pytest.raises(ParamError, match="unet: expected a diffusers UNet2DConditionModel, got Linear"):
        UniControlNetAdapter.from_unet(nn.Linear(2, 2), TYPES, condition_scale=8)


def test_a_unet_with_more_levels_than_the_official_widths_needs_inject_channels():
    assert len(scaled_inject_channels((8, 8, 8, 8))) == 4
    with pytest.raises(ValueError, match="give inject_channels"):
        scaled_inject_channels((8, 8, 8, 8, 8))


# --- save / load ------------------------------------------------------------------------------------------------

def test_save_pretrained_from_pretrained_gives_equal_outputs(adapter, tmp_path):
    open_zero_convs(adapter)
    adapter.save_pretrained(tmp_path / "adapter")
    loaded = UniControlNetAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.condition_types == ["canny", "depth", "seg"]
    assert loaded.config.inject_channels == adapter.config.inject_channels
    batch = inputs()
    with torch.no_grad():
        down, mid = adapter(**batch)
        loaded_down, loaded_mid = loaded(**batch)
    assert torch.count_nonzero(mid) > 0
    assert torch.equal(loaded_mid, mid) and all(torch.equal(a, b) for a, b in zip(loaded_down, down))

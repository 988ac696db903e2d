"""FlexEControl's control branch on the tiny UNet: at initialisation it is ControlNetModel.from_unet; exactly H, u, v,
the condition encoders and the zero-convolutions train (counted by hand); condition sets per sample; input errors;
save_pretrained / from_pretrained unmerged and merged; gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from datamodules.errors import ParamError
from lightning_modules.flexecontrol.branch import FlexEControlBranch, is_zero_convolution
from lightning_modules.flexecontrol.kronecker import KroneckerUpdate, kronecker_update_of

TINY_UNET = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": (32, 64),
             "layers_per_block": 1, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32, "attention_head_dim": 8,
             "norm_num_groups": 8}
TYPES = {"canny": 1, "depth": 1, "seg": 1}
SIZE = 8


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval()


def build(unet, condition_channels=TYPES, **kwargs) -> FlexEControlBranch:
    kwargs = {"condition_scale": 1, "n": 4, "rank": 2, **kwargs}
    return FlexEControlBranch.from_unet(unet, condition_channels, **kwargs)


def reference_controlnet(unet) -> ControlNetModel:
    reference = ControlNetModel.from_unet(unet)
    reference.controlnet_cond_embedding = nn.Identity()
    return reference


def make_active(branch: FlexEControlBranch, seed: int = 0) -> FlexEControlBranch:
    """Non-zero v, condition-encoder outputs and zero-convolutions, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in branch.adapted_layer_names():
            v = kronecker_update_of(branch.controlnet.get_submodule(name)).v
            v.copy_(0.05 * torch.randn(v.shape, generator=generator))
        for module in [*(e.conv_out for e in branch.condition_encoders.values()),
                       *branch.controlnet.controlnet_down_blocks, branch.controlnet.controlnet_mid_block]:
            for parameter in module.parameters():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return branch


def inputs(batch: int, seed: int = 0, same_rows: bool = True):
    """Noisy sample, timesteps, text states; with same_rows every sample is the same, so rows differ only by their
    conditions."""
    generator = torch.Generator().manual_seed(seed)
    rows = 1 if same_rows else batch
    sample = torch.randn(rows, 3, SIZE, SIZE, generator=generator).expand(batch, -1, -1, -1).contiguous()
    text = torch.randn(rows, 5, 32, generator=generator).expand(batch, -1, -1).contiguous()
    return sample, torch.full((batch,), 10), text


def maps(batch: int, inputs_per_sample: int, channels: int = 1, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, inputs_per_sample, channels, size, size, generator=generator)


def assert_residuals_close(got, expected, **tolerance):
    (got_down, got_mid), (expected_down, expected_mid) = got, expected
    assert len(got_down) == len(expected_down)
    for a, b in zip(got_down, expected_down):
        torch.testing.assert_close(a, b, **tolerance)
    torch.testing.assert_close(got_mid, expected_mid, **tolerance)


def test_at_initialisation_the_branch_is_the_controlnet_copy(unet):
    branch, reference = build(unet), reference_controlnet(unet)
    sample, timestep, text = inputs(2, same_rows=False)
    conditions = {"canny": maps(2, 2), "depth": maps(2, 1, seed=1)}
    present = {"canny": torch.tensor([[True, True], [True, False]]), "depth": torch.tensor([[True], [False]])}
    fused = branch.encode_conditions(conditions, present, None, sample)
    assert fused.shape == (2, 32, SIZE, SIZE) and not fused.any()  # the encoders' last convs start at zero
    got = branch(sample, timestep, text, conditions, present)
    expected = reference(sample, timestep, text, controlnet_cond=fused, return_dict=False)
    assert_residuals_close(got, expected, rtol=0, atol=0)
    down, mid = got
    assert not mid.any() and not any(d.any() for d in down)
    with torch.no_grad():
        base = unet(sample, timestep, text).sample
        controlled = unet(sample, timestep, text, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
    assert torch.equal(controlled, base)

    # Non-zero zero-convolutions and encoder outputs, the same in both: with v = 0 the adapted copy still computes
    # exactly what the plain ControlNet copy computes.
    make_active(branch)
    for v in (kronecker_update_of(branch.controlnet.get_submodule(n)).v for n in branch.adapted_layer_names()):
        v.data.zero_()
    reference.controlnet_down_blocks.load_state_dict(branch.controlnet.controlnet_down_blocks.state_dict())
    reference.controlnet_mid_block.load_state_dict(branch.controlnet.controlnet_mid_block.state_dict())
    fused = branch.encode_conditions(conditions, present, None, sample)
    assert fused.abs().sum() > 0
    got = branch(sample, timestep, text, conditions, present)
    assert got[1].abs().sum() > 0
    assert_residuals_close(got, reference(sample, timestep, text, controlnet_cond=fused, return_dict=False),
                           rtol=1e-5, atol=1e-6)


def test_exactly_h_u_v_encoders_and_zero_convolutions_train(unet):
    branch, reference = build(unet), reference_controlnet(unet)
    plain_layers = [name for name, layer in reference.named_modules() if isinstance(layer, (nn.Linear, nn.Conv2d))]
    expected_layers = [name for name in plain_layers if not is_zero_convolution(name)]
    assert branch.adapted_layer_names() == expected_layers
    assert any(".attn1.to_q" in name for name in expected_layers) and "conv_in" in expected_layers
    for name in expected_layers:  # still Linear / Conv2d for diffusers' code
        assert isinstance(branch.controlnet.get_submodule(name), type(reference.get_submodule(name)))
    expected = {"kronecker_factors.matrices"}
    expected |= {f"controlnet.{name}.kronecker_update.{factor}" for name in expected_layers for factor in "uv"}
    expected |= {f"condition_encoders.{key}" for key, _ in branch.condition_encoders.named_parameters()}
    expected |= {f"controlnet.{key}" for key, _ in reference.named_parameters() if is_zero_convolution(key)}
    assert set(branch.trainable_parameter_names()) == expected
    # frozen: every weight of the copy (an adapted layer's W keeps its name) but the zero-convs
    expected_frozen = {f"controlnet.{key}" for key, _ in reference.named_parameters() if not is_zero_convolution(key)}
    assert {name for name, p in branch.named_parameters() if not p.requires_grad} == expected_frozen

    # gradients reach every trainable parameter and no frozen one
    make_active(branch)
    sample, timestep, text = inputs(2, same_rows=False)
    conditions = {"canny": maps(2, 1), "seg": maps(2, 1, seed=2), "depth": maps(2, 1, seed=3)}
    present = {name: torch.ones(2, 1, dtype=torch.bool) for name in conditions}
    down, mid = branch(sample, timestep, text, conditions, present)
    (sum(d.square().mean() for d in down) + mid.square().mean()).backward()
    for name, parameter in branch.named_parameters():
        if name in expected:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_h_gets_gradients_from_every_adapted_layer(unet):
    branch = make_active(build(unet))
    generator = torch.Generator().manual_seed(0)
    h = branch.kronecker_factors.matrices
    for name in branch.adapted_layer_names():
        delta = kronecker_update_of(branch.controlnet.get_submodule(name)).delta()  # dW of this layer only
        (gradient,) = torch.autograd.grad((delta * torch.randn(delta.shape, generator=generator)).sum(), h)
        assert gradient.abs().sum() > 0, name


def test_trainable_count_matches_the_layer_shapes(unet):
    n, rank = 3, 2  # 32 and 64 channels are not multiples of 3: ceil blocks
    channels = {"canny": 1, "depth": 2}
    branch = build(unet, channels, condition_scale=2, n=n, rank=rank)
    reference = reference_controlnet(unet)
    kronecker = 0
    for name, layer in reference.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and not is_zero_convolution(name):
            out, fan_in = layer.weight.shape[0], math.prod(layer.weight.shape[1:])
            kronecker += n * rank * (math.ceil(out / n) + math.ceil(fan_in / n))
    def conv3(c_in, c_out):  # a 3x3 conv's weight and bias
        return c_in * c_out * 9 + c_out

    # widths (16, 32) for scale 2: conv_in on the space-to-depth map (c * 2 * 2 channels), a 3x3 conv, conv_out to 32
    # (the branch's conv_in width)
    encoders = sum(conv3(4 * c, 16) + conv3(16, 32) + conv3(32, 32) for c in channels.values())
    # zero-convs (1x1): conv_in's output, down block 0's resnet and downsampler, down block 1's resnet; then the mid
    zero_convs = sum(c * c + c for c in (32, 32, 32, 64, 64))
    assert branch.trainable_parameter_counts() == {"kronecker_shared": n ** 3, "kronecker_layers": kronecker,
                                                   "condition_encoders": encoders, "zero_convolutions": zero_convs,
                                                   "other": 0}
    assert branch.num_trainable_parameters() == n ** 3 + kronecker + encoders + zero_convs
    assert branch.num_trainable_parameters() == sum(p.numel() for p in branch.parameters() if p.requires_grad)
    branch.controlnet.conv_in.bias.requires_grad_(True)  # unfrozen by hand: counted apart
    assert branch.trainable_parameter_counts()["other"] == 32
    assert "controlnet.conv_in.bias" in branch.trainable_parameter_names()


def test_condition_encoders_run_at_the_branch_input_size_and_see_every_pixel(unet):
    scale = 4
    branch = make_active(build(unet, {"canny": 2}, condition_scale=scale)).eval()
    encoder = branch.condition_encoders["canny"]
    sizes = []
    hooks = [conv.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[1:])))
             for conv in encoder.modules() if isinstance(conv, nn.Conv2d)]
    sample, _, _ = inputs(1)
    present = {"canny": torch.ones(1, 1, dtype=torch.bool)}
    canny = maps(1, 1, channels=2, size=SIZE * scale)
    with torch.no_grad():
        fused = branch.encode_conditions({"canny": canny}, present, None, sample)
        for hook in hooks:
            hook.remove()
        # space-to-depth: the 2-channel map at 4x the size is 2 * 4 * 4 channels at the branch's size for every conv
        assert sizes == [(2 * scale ** 2, SIZE, SIZE), (16 * scale // 2, SIZE, SIZE), (16 * scale, SIZE, SIZE)]
        assert fused.shape == (1, 32, SIZE, SIZE)
        changed = canny.clone()
        changed[0, 0, 1, scale * 3 + 3, scale * 5 + 1] += 1.0  # one pixel of one channel, inside patch (3, 5)
        moved = branch.encode_conditions({"canny": changed}, present, None, sample) - fused
    assert moved[0, :, 3, 5].abs().amax() > 0
    assert moved[0, :, 0, 0].abs().amax() == 0  # a 3x3-conv stack of depth 3 reaches 3 patches, no further


def test_each_sample_gets_only_its_own_conditions(unet):
    branch = make_active(build(unet)).eval()
    sample, timestep, text = inputs(3)
    canny, depth, seg = maps(3, 2, seed=1), maps(3, 1, seed=2), maps(3, 1, seed=3)
    # sample 0: two canny inputs and depth; sample 1: its first canny input and seg; sample 2: nothing
    present = {"canny": torch.tensor([[True, True], [True, False], [False, False]]),
               "depth": torch.tensor([[True], [False], [False]]), "seg": torch.tensor([[False], [True], [False]])}
    conditions = {"canny": canny, "depth": depth, "seg": seg}
    with torch.no_grad():
        down, mid = branch(sample, timestep, text, conditions, present)
        fused = branch.encode_conditions(conditions, present, None, sample)
        encoders = branch.condition_encoders
        expected_fused_0 = encoders["canny"](canny[0]).sum(0) + encoders["depth"](depth[0]).squeeze(0)
        torch.testing.assert_close(fused[0], expected_fused_0)
        torch.testing.assert_close(fused[1], (encoders["canny"](canny[1, :1]) + encoders["seg"](seg[1])).squeeze(0))
        assert not fused[2].any()

        alone = [
            ({"canny": canny[:1], "depth": depth[:1]}, {"canny": torch.ones(1, 2, dtype=torch.bool),
                                                         "depth": torch.ones(1, 1, dtype=torch.bool)}),
            ({"canny": canny[1:2, :1], "seg": seg[1:2]}, {"canny": torch.ones(1, 1, dtype=torch.bool),
                                                           "seg": torch.ones(1, 1, dtype=torch.bool)}),
            ({}, {}),
        ]
        for row, (own_conditions, own_present) in enumerate(alone):
            got = branch(sample[row:row + 1], timestep[row:row + 1], text[row:row + 1], own_conditions, own_present)
            assert_residuals_close(got, ([d[row:row + 1] for d in down], mid[row:row + 1]), rtol=1e-4, atol=1e-5)
        # the rows share sample, timestep and text: their residuals differ only through their conditions
        assert not torch.allclose(mid[0], mid[2], atol=1e-4) and not torch.allclose(mid[0], mid[1], atol=1e-4)

        # the sample with nothing is the branch on its noisy sample with a zero condition
        reference_zero = branch.controlnet(sample[2:], timestep[2:], text[2:],
                                           controlnet_cond=torch.zeros(1, 32, SIZE, SIZE), return_dict=False)
        assert_residuals_close(([d[2:] for d in down], mid[2:]), reference_zero, rtol=1e-4, atol=1e-5)


def test_strengths_scale_each_type(unet):
    branch = make_active(build(unet)).eval()
    sample, _, _ = inputs(2)
    conditions = {"canny": maps(2, 1, seed=4), "depth": maps(2, 1, seed=5)}
    present = {name: torch.ones(2, 1, dtype=torch.bool) for name in conditions}
    with torch.no_grad():
        canny = branch.condition_encoders["canny"](conditions["canny"][:, 0])
        depth = branch.condition_encoders["depth"](conditions["depth"][:, 0])
        scaled = branch.encode_conditions(conditions, present, {"canny": 0.5, "depth": 2.0}, sample)
        torch.testing.assert_close(scaled, 0.5 * canny + 2.0 * depth)
        without_canny = branch.encode_conditions(conditions, present, {"canny": 0.0}, sample)
        torch.testing.assert_close(without_canny, depth)


def test_condition_scale_two_takes_maps_twice_the_branch_input(unet):
    branch = make_active(build(unet, {"canny": 1}, condition_scale=2))
    sample, timestep, text = inputs(1)
    down, mid = branch(sample, timestep, text, {"canny": maps(1, 1, size=2 * SIZE)},
                       {"canny": torch.ones(1, 1, dtype=torch.bool)})
    assert down[0].shape == (1, 32, SIZE, SIZE) and mid.shape == (1, 64, SIZE // 2, SIZE // 2)
    with pytest.raises(ValueError, match=r"expected maps of size 16x16 .*got 8x8"):
        branch(sample, timestep, text, {"canny": maps(1, 1)}, {"canny": torch.ones(1, 1, dtype=torch.bool)})


@pytest.mark.parametrize("conditions, present, strengths, message", [
    ({"pose": maps(2, 1)}, {"pose": torch.ones(2, 1, dtype=torch.bool)}, None,
     r"conditions: unknown condition type 'pose' \(this branch has canny, depth, seg\)"),
    ({"canny": maps(2, 1)}, {"canny": torch.ones(2, 1, dtype=torch.bool)}, {"hed": 1.0},
     r"strengths: unknown condition type 'hed'"),
    ({"canny": maps(2, 1, channels=3)}, {"canny": torch.ones(2, 1, dtype=torch.bool)}, None,
     r"conditions\['canny'\]: expected 1 channel\(s\), got 3"),
    ({"depth": maps(2, 1, size=4)}, {"depth": torch.ones(2, 1, dtype=torch.bool)}, None,
     r"conditions\['depth'\]: expected maps of size 8x8 .*got 4x4"),
    ({"canny": maps(2, 2)}, {"canny": torch.ones(2, 1, dtype=torch.bool)}, None,
     r"present\['canny'\]: expected shape \(2, 2\) .*got \(2, 1\)"),
    ({"canny": maps(2, 1)}, {"canny": torch.ones(2, 1)}, None, r"present\['canny'\]: expected a bool tensor"),
    ({"canny": maps(2, 1)}, {}, None, r"present\['canny'\]: missing"),
    ({"canny": maps(3, 1)}, {"canny": torch.ones(3, 1, dtype=torch.bool)}, None, r"expected batch 2 \(the sample's\), got 3"),
    ({"canny": maps(2, 1)[:, 0]}, {"canny": torch.ones(2, 1, dtype=torch.bool)}, None,
     r"expected a tensor \[B, K, C, H, W\], got \(2, 1, 8, 8\)"),
])
def test_bad_condition_inputs_raise_one_line(unet, conditions, present, strengths, message):
    branch = build(unet)
    sample, timestep, text = inputs(2)
    with pytest.raises(ValueError, match=message) as error:
        branch(sample, timestep, text, conditions, present, strengths)
    assert "\n" not in str(error.value)


def test_bad_construction_arguments_are_all_reported(unet):
    with pytest.raises(ParamError) as error:
        FlexEControlBranch.from_unet(unet, {"a.b": 1, "canny": 0}, condition_scale=3, n=0, rank=2, alpha="big")
    assert [name for name, _ in error.value.problems] == ["condition_channels", "condition_channels.canny",
                                                          "condition_scale", "kronecker_n", "kronecker_alpha"]
    with pytest.raises(ParamError, match="condition_channels: must map at least one"):
        build(unet, {})
    for widths in ([], [16, 0], "16"):
        with pytest.raises(ParamError, match="encoder_widths: must be a non-empty list of integers >= 1"):
            build(unet, condition_scale=8, encoder_widths=widths)
    with pytest.raises(ParamError, match="unet: must be a diffusers UNet2DConditionModel, got Linear"):
        FlexEControlBranch.from_unet(nn.Linear(2, 2), TYPES, condition_scale=1)
    config = dict(build(unet).config.controlnet_config)
    with pytest.raises(ParamError, match="controlnet_config.controlnet_conditioning_channel_order: must be 'rgb'"):
        FlexEControlBranch({**config, "controlnet_conditioning_channel_order": "bgr"}, TYPES)
    with pytest.raises(ParamError, match="controlnet_config: must be a ControlNetModel config"):
        FlexEControlBranch({}, TYPES)


def test_save_and_load_unmerged_and_merged(unet, tmp_path):
    branch = make_active(build(unet)).eval()
    with torch.no_grad():
        branch.kronecker_factors.matrices.mul_(1.5)
    sample, timestep, text = inputs(2, same_rows=False)
    conditions = {"canny": maps(2, 2), "seg": maps(2, 1, seed=7)}
    present = {"canny": torch.tensor([[True, False], [True, True]]), "seg": torch.tensor([[True], [False]])}
    with torch.no_grad():
        expected = branch(sample, timestep, text, conditions, present)

        branch.save_pretrained(tmp_path / "unmerged")
        loaded = FlexEControlBranch.from_pretrained(tmp_path / "unmerged")
        assert loaded.adapted_layer_names() == branch.adapted_layer_names()
        assert loaded.trainable_parameter_names() == branch.trainable_parameter_names()
        assert_residuals_close(loaded(sample, timestep, text, conditions, present), expected, rtol=0, atol=0)

        merged = branch.merged_copy()
        assert merged.config.merged and not branch.config.merged
        assert merged.kronecker_factors is None and merged.adapted_layer_names() == []
        assert not any(isinstance(m, KroneckerUpdate) for m in merged.modules())
        assert all(type(m) in (nn.Linear, nn.Conv2d) for m in merged.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        assert not any("kronecker" in key for key in merged.state_dict())
        assert branch.adapted_layer_names()  # the original keeps its updates
        assert set(merged.trainable_parameter_counts().values()) != {0}
        assert merged.trainable_parameter_counts()["kronecker_layers"] == 0
        assert_residuals_close(merged(sample, timestep, text, conditions, present), expected, rtol=1e-4, atol=1e-5)

        merged.save_pretrained(tmp_path / "merged")
        reloaded = FlexEControlBranch.from_pretrained(tmp_path / "merged")
        assert reloaded.config.merged and reloaded.kronecker_factors is None
        assert not any(isinstance(m, KroneckerUpdate) for m in reloaded.modules())
        assert_residuals_close(reloaded(sample, timestep, text, conditions, present),
                               merged(sample, timestep, text, conditions, present), rtol=0, atol=0)

    rebuilt = FlexEControlBranch.from_config(branch.config)  # the config alone rebuilds the same structure
    assert rebuilt.trainable_parameter_names() == branch.trainable_parameter_names()


def test_gradient_checkpointing_passes_through(unet):
    sample, timestep, text = inputs(2, same_rows=False)
    conditions, present = {"depth": maps(2, 1)}, {"depth": torch.ones(2, 1, dtype=torch.bool)}

    def gradients_and_calls(branch):
        calls = []
        hook = branch.controlnet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
        down, mid = branch(sample, timestep, text, conditions, present)
        (sum(d.square().mean() for d in down) + mid.square().mean()).backward()
        hook.remove()
        return {n: p.grad.clone() for n, p in branch.named_parameters() if p.grad is not None}, len(calls)

    plain = make_active(build(unet))
    checkpointed = build(unet)
    checkpointed.load_state_dict(plain.state_dict())  # H and u are drawn at random per branch
    checkpointed.enable_gradient_checkpointing()
    assert all(block.gradient_checkpointing for block in [*checkpointed.controlnet.down_blocks,
                                                          checkpointed.controlnet.mid_block])
    expected, plain_calls = gradients_and_calls(plain)
    got, checkpointed_calls = gradients_and_calls(checkpointed)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the block's forward ran again in the backward
    assert got.keys() == expected.keys() and "kronecker_factors.matrices" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)

"""attention.py: the recorder gives the default processor's output, maps equal a softmax by hand, only the asked
layers change and every processor comes back, gradients flow, CFG and video batches, errors that name the layer."""

import pytest
import torch
from diffusers import ControlNetModel, UNetMotionModel

from lightning_modules.clip_pretrain.random_clip import WORDS
from lightning_modules.clip_pretrain.tokenizer import build_tokenizer
from lightning_modules.diffusion import (
    AttentionStore,
    CrossAttentionRecorder,
    cross_attention_layers,
    phrase_token_indices,
    record_cross_attention,
)
from lightning_modules.diffusion.attention import layer_size
from lightning_modules.diffusion.tiny import tiny_unet

DOWN = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
MID = "mid_block.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return tiny_unet(16, 3).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 16, 16, generator=generator), torch.tensor([10, 700]),
            torch.randn(2, 6, 32, generator=generator))


TOKENS = torch.tensor([[1, 3], [2, 5]])


def processors(model):
    return {name: module.processor for name, module in model.named_modules() if hasattr(module, "set_processor")}


def test_recorded_forward_equals_the_default_processors(unet, batch):
    sample, t, context = batch
    with torch.no_grad():
        reference = unet(sample, t, context).sample
        with record_cross_attention(unet, ["*"], TOKENS) as store:
            recorded = unet(sample, t, context).sample
    assert torch.allclose(recorded, reference, atol=1e-5)
    assert set(store.maps) == set(store.layers) == set(cross_attention_layers(unet)) == {
        DOWN, MID, "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2"}
    assert store.maps[DOWN].shape == (2, 2, 16 * 16) and store.maps[MID].shape == (2, 2, 8 * 8)


def test_maps_of_the_chosen_tokens_equal_a_softmax_by_hand(unet, batch):
    sample, t, context = batch
    attn = dict(unet.named_modules())[DOWN]
    seen = {}
    hook = attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(hidden=args[0], context=kwargs["encoder_hidden_states"]),
        with_kwargs=True)
    try:
        with torch.no_grad(), record_cross_attention(unet, [DOWN], TOKENS) as store:
            unet(sample, t, context)
    finally:
        hook.remove()
    assert set(store.maps) == {DOWN}
    with torch.no_grad():
        query, key = attn.to_q(seen["hidden"]), attn.to_k(seen["context"])
        b, n, _ = query.shape
        heads = attn.heads
        query = query.view(b, n, heads, -1).transpose(1, 2)
        key = key.view(b, key.shape[1], heads, -1).transpose(1, 2)
        probabilities = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1).mean(dim=1)
    by_hand = torch.stack([probabilities[i][:, TOKENS[i]].T for i in range(b)])  # [B, K, seq]
    assert torch.allclose(store.maps[DOWN], by_hand, atol=1e-6)
    # probabilities over all the text's tokens sum to one: the kept ones are part of that softmax
    assert torch.allclose(probabilities.sum(dim=-1), torch.ones(b, n), atol=1e-5)


def test_only_the_asked_layers_change_and_all_come_back(unet):
    before = processors(unet)
    with record_cross_attention(unet, ["mid_block.*"], TOKENS):
        during = processors(unet)
        assert isinstance(during[MID], CrossAttentionRecorder)
        assert all(during[name] is processor for name, processor in before.items() if name != MID)
    assert all(processors(unet)[name] is processor for name, processor in before.items())


def test_processors_are_restored_after_an_exception(unet):
    before = processors(unet)
    with pytest.raises(RuntimeError, match="boom"), record_cross_attention(unet, ["*"], TOKENS):
        assert isinstance(processors(unet)[DOWN], CrossAttentionRecorder)
        raise RuntimeError("boom")
    assert all(processors(unet)[name] is processor for name, processor in before.items())


def test_gradients_flow_through_the_maps_to_the_hidden_states(unet, batch):
    sample, t, context = batch
    sample = sample.clone().requires_grad_(True)
    with record_cross_attention(unet, [DOWN, MID], TOKENS) as store:
        unet(sample, t, context)
    (store.maps[DOWN][:, 0].sum() * 3 + store.maps[MID].pow(2).sum()).backward()
    assert sample.grad is not None and sample.grad.abs().sum() > 0
    assert torch.isfinite(sample.grad).all()


def test_classifier_free_guidance_batches_use_each_samples_tokens_in_both_halves(unet, batch):
    sample, t, context = batch
    uncond = torch.zeros_like(context)
    with torch.no_grad(), record_cross_attention(unet, [DOWN], TOKENS) as store:
        unet(torch.cat([sample, sample]), torch.cat([t, t]), torch.cat([uncond, context]))
        doubled = store.maps[DOWN]
        unet(sample, t, uncond)
        uncond_maps = store.maps[DOWN]
        unet(sample, t, context)
        cond_maps = store.maps[DOWN]
    assert doubled.shape == (4, 2, 256)
    assert torch.allclose(doubled[:2], uncond_maps, atol=1e-6) and torch.allclose(doubled[2:], cond_maps, atol=1e-6)


def test_spatial_maps_at_each_layers_resolution(unet, batch):
    sample, t, context = batch
    with torch.no_grad(), record_cross_attention(unet, ["*"], TOKENS) as store:
        unet(sample, t, context)
    assert store.spatial(DOWN, 16).shape == (2, 2, 16, 16)
    assert store.spatial(MID, (16, 16)).shape == (2, 2, 8, 8)
    assert torch.equal(store.spatial(MID, 16).flatten(2), store.maps[MID])
    mean = store.mean_spatial(16)
    assert mean.shape == (2, 2, 16, 16)
    only_down = store.mean_spatial(16, layers=[DOWN])
    assert torch.allclose(only_down, store.spatial(DOWN, 16))
    assert store.mean_spatial(16, size=4).shape == (2, 2, 4, 4)
    with pytest.raises(KeyError, match="no maps recorded for 'nope'"):
        store.spatial("nope", 16)


def test_layer_size_rounds_up_like_strided_convolutions():
    assert layer_size(64, 64 * 64) == (64, 64)
    assert layer_size(64, 8 * 8) == (8, 8)
    assert layer_size((5, 7), 3 * 4) == (3, 4)
    with pytest.raises(ValueError, match="not a halving"):
        layer_size(16, 50)
    with pytest.raises(ValueError, match="no maps recorded yet"):
        AttentionStore([]).mean_spatial(16)


def test_a_pattern_matching_no_cross_attention_layer_names_it_and_lists_them(unet):
    typo = DOWN.replace("attn2", "attn3")
    with pytest.raises(ValueError) as raised, record_cross_attention(unet, [typo, "down_blocks.7.*"], TOKENS):
        pass
    message = str(raised.value)
    assert f"'{typo}' matches none (did you mean {DOWN}?)" in message
    assert "'down_blocks.7.*' matches none" in message and MID in message
    self_attention = DOWN.replace("attn2", "attn1")  # attends to the image, not to the text
    with pytest.raises(ValueError, match="matches none"), record_cross_attention(unet, [self_attention], TOKENS):
        pass


def test_bad_tokens_are_refused(unet, batch):
    for tokens, message in [(torch.tensor([[0.5]]), "integer tensor"), (torch.tensor([1, 2]), "integer tensor"),
                            (torch.tensor([[-1]]), ">= 0"), (torch.zeros(2, 0, dtype=torch.long), "empty")]:
        with pytest.raises(ValueError, match=message), record_cross_attention(unet, ["*"], tokens):
            pass
    sample, t, context = batch
    past_the_end = torch.tensor([[6], [0]])
    with (pytest.raises(ValueError, match="token index 6 is past the text's 6 tokens"), torch.no_grad(),
          record_cross_attention(unet, [DOWN], past_the_end)):
        unet(sample, t, context)
    with (pytest.raises(ValueError, match="3 rows, not a multiple of the 2 token rows"), torch.no_grad(),
          record_cross_attention(unet, [DOWN], TOKENS)):
        unet(sample[:1].repeat(3, 1, 1, 1), t[:1].repeat(3), context[:1].repeat(3, 1, 1))


def test_a_controlnet_is_recorded_too(unet, batch):
    sample, t, context = batch
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3).eval()
    condition = torch.zeros(2, 3, 128, 128)  # the default condition embedding downsamples 8x to the 16x16 latent
    with torch.no_grad():
        reference = controlnet(sample, t, context, controlnet_cond=condition, return_dict=False)
        with record_cross_attention(controlnet, ["*"], TOKENS) as store:
            recorded = controlnet(sample, t, context, controlnet_cond=condition, return_dict=False)
    assert set(store.maps) == {DOWN, MID}
    for a, b in zip([*reference[0], reference[1]], [*recorded[0], recorded[1]]):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_video_unet_folds_frames_into_the_rows():
    torch.manual_seed(0)
    video_unet = UNetMotionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=32, num_attention_heads=4,
        norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=8).eval()
    frames = 3
    layers = list(cross_attention_layers(video_unet))
    assert layers and not any("motion_modules" in name for name in layers)  # temporal attention is not cross
    sample = torch.randn(2, 3, frames, 8, 8)
    context = torch.randn(2, 5, 32).repeat_interleave(frames, dim=0)  # diffusers 0.42 wants it per frame
    tokens = torch.tensor([[1], [4]])
    with torch.no_grad():
        reference = video_unet(sample, 5, context).sample
        with record_cross_attention(video_unet, ["*"], tokens, frames=frames) as store:
            recorded = video_unet(sample, 5, context).sample
        with record_cross_attention(video_unet, ["*"], tokens.repeat_interleave(frames, dim=0)) as per_row:
            video_unet(sample, 5, context)
    assert torch.allclose(recorded, reference, atol=1e-5)
    down = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert store.maps[down].shape == (2 * frames, 1, 64)
    assert torch.allclose(store.maps[down], per_row.maps[down])  # frames=3 equals the tokens given per frame


def test_phrase_token_indices():
    tokenizer = build_tokenizer(WORDS)
    assert phrase_token_indices(tokenizer, "a red circle on a blue background", "circle") == [3]
    assert phrase_token_indices(tokenizer, "a red circle on a blue background", "blue background") == [6, 7]
    with pytest.raises(ValueError, match="does not contain"):
        phrase_token_indices(tokenizer, "a red circle", "square")


def test_an_encoder_attention_mask_is_applied_as_the_default_processor_applies_it(unet, batch):
    sample, t, context = batch
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])  # padding tokens at the end
    tokens = torch.tensor([[1, 4], [2, 5]])  # row 0: token 4 is masked; row 1: token 5 is masked
    with torch.no_grad():
        reference = unet(sample, t, context, encoder_attention_mask=mask).sample
        with record_cross_attention(unet, [DOWN], tokens) as store:
            recorded = unet(sample, t, context, encoder_attention_mask=mask).sample
    assert torch.allclose(recorded, reference, atol=1e-5)
    maps = store.maps[DOWN]
    assert float(maps[0, 1].abs().max()) == 0.0 and float(maps[1, 1].abs().max()) == 0.0
    assert float(maps[0, 0].min()) > 0 and float(maps[1, 0].min()) > 0


def test_a_logit_bias_shifts_the_chosen_tokens_logits_before_the_softmax(unet, batch):
    sample, t, context = batch
    attn = dict(unet.named_modules())[DOWN]
    seen, asked = {}, []
    hook = attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(hidden=args[0], context=kwargs["encoder_hidden_states"]),
        with_kwargs=True)

    def bias(layer, rows, positions):  # a ramp over the image positions, different for the two chosen tokens
        asked.append((layer, rows, positions))
        return torch.linspace(-2, 2, positions)[None, :, None] * torch.tensor([1.0, -0.5])

    try:
        with torch.no_grad(), record_cross_attention(unet, [DOWN], TOKENS, logit_bias=bias) as store:
            biased = unet(sample, t, context).sample
    finally:
        hook.remove()
    assert asked == [(DOWN, 2, 256)]
    with torch.no_grad():
        query, key = attn.to_q(seen["hidden"]), attn.to_k(seen["context"])
        b, n, _ = query.shape
        query = query.view(b, n, attn.heads, -1).transpose(1, 2)
        key = key.view(b, key.shape[1], attn.heads, -1).transpose(1, 2)
        logits = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5  # [B, heads, seq, L]
        for i in range(b):
            logits[i][..., TOKENS[i]] += bias(DOWN, b, n)[0]
        probabilities = torch.softmax(logits, dim=-1).mean(dim=1)
        reference = unet(sample, t, context).sample
    by_hand = torch.stack([probabilities[i][:, TOKENS[i]].T for i in range(b)])
    assert torch.allclose(store.maps[DOWN], by_hand, atol=1e-6)
    assert not torch.allclose(biased, reference, atol=1e-4)  # the output follows the biased attention


def test_a_logit_bias_of_none_leaves_the_forward_as_it_was_and_keeps_the_padding_mask(unet, batch):
    sample, t, context = batch
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    tokens = torch.tensor([[1, 4], [2, 5]])  # token 4 of row 0 and token 5 of row 1 are padding
    with torch.no_grad():
        reference = unet(sample, t, context, encoder_attention_mask=mask).sample
        with record_cross_attention(unet, ["*"], tokens, logit_bias=lambda *_: None):
            unbiased = unet(sample, t, context, encoder_attention_mask=mask).sample
        with record_cross_attention(unet, [DOWN], tokens, logit_bias=lambda *_: torch.tensor(5.0)) as store:
            unet(sample, t, context, encoder_attention_mask=mask)
    assert torch.allclose(unbiased, reference, atol=1e-5)
    assert float(store.maps[DOWN][0, 1].max()) == 0.0 and float(store.maps[DOWN][1, 1].max()) == 0.0
    assert float(store.maps[DOWN][0, 0].min()) > 0.5  # +5 on a token of 6 makes it take most of the mass

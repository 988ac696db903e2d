"""direction.py: boxes from files and trajectories (values by hand, every bad input), the energy on synthetic maps,
the layers read (text cross-attention only), one gradient step and the reweight mode on a tiny UNetMotionModel, the
processors coming back, the settings' problems."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet3DConditionModel, UNetMotionModel

from datamodules.errors import ParamError, UsageError
from lightning_modules.clip_pretrain.random_clip import WORDS
from lightning_modules.clip_pretrain.tokenizer import build_tokenizer
from lightning_modules.diffusion import (
    cross_attention_layers,
    denoise,
    record_cross_attention,
)
from lightning_modules.diffusion.attention import CrossAttentionRecorder
from lightning_modules.mojito.direction import (
    DEFAULT_LAYERS,
    DirectionControl,
    GradientGuidance,
    box_logit_bias,
    box_masks,
    boxes_from_trajectory,
    check_boxes,
    direction_control,
    direction_energy,
    direction_layers,
    inside_fraction,
    layer_maps,
    parse_trajectory,
    read_boxes,
    reweight_attention,
    subject_token_indices,
)

FRAMES, BATCH, SIZE, TEXT = 4, 2, 8, 16
TOKENS = torch.tensor([[2, 3], [2, 3]])  # the subject's two tokens, in both samples' prompts


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNetMotionModel(
        sample_size=SIZE, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion"),
        up_block_types=("CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=TEXT,
        num_attention_heads=2, norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=8).eval()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(BATCH, 6, TEXT, generator=generator)
    latents = torch.randn(BATCH, 4, FRAMES, SIZE, SIZE, generator=generator)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    # diffusers 0.42's UNetMotionModel takes the text states per frame (sample-major), as a Mojito model_fn passes
    return {"context": context.repeat_interleave(FRAMES, dim=0), "uncond": torch.zeros(BATCH * FRAMES, 6, TEXT),
            "latents": latents, "scheduler": scheduler, "t": scheduler.timesteps[0],
            "boxes": boxes_from_trajectory([(0.2, 0.3), (0.8, 0.7)], 0.4, FRAMES)}


def model_fn_of(unet):
    return lambda sample, t, context: unet(sample, t, encoder_hidden_states=context).sample


def processors(model):
    return {name: module.processor for name, module in model.named_modules() if hasattr(module, "set_processor")}


def guidance(unet, inputs, **settings):
    control = DirectionControl(mode="gradient", **settings)
    return GradientGuidance(control, unet, tokens=TOKENS, boxes=inputs["boxes"], model_fn=model_fn_of(unet),
                            context=inputs["context"], scheduler=inputs["scheduler"])


# --- boxes ---------------------------------------------------------------------------------------------------------


def test_a_trajectory_becomes_boxes_at_even_arc_length():
    boxes = boxes_from_trajectory([(0.2, 0.3), (0.8, 0.7)], 0.4, 4)
    # centres (0.2, 0.3), (0.4, 0.433), (0.6, 0.567), (0.8, 0.7); the first and last boxes shifted into the frame
    expected = torch.tensor([[0.0, 0.1, 0.4, 0.5], [0.2, 0.7 / 3, 0.6, 1.9 / 3], [0.4, 1.1 / 3, 0.8, 2.3 / 3],
                             [0.6, 0.5, 1.0, 0.9]])
    assert boxes.dtype == torch.float32 and torch.allclose(boxes, expected, atol=1e-6)
    # a short first segment does not take a third of the clip: centres evenly spaced along the whole path
    uneven = boxes_from_trajectory([(0.1, 0.5), (0.2, 0.5), (0.9, 0.5)], (0.2, 0.1), 3)
    assert torch.allclose((uneven[:, 0] + uneven[:, 2]) / 2, torch.tensor([0.1, 0.5, 0.9]), atol=1e-6)
    assert torch.allclose(uneven[:, 3] - uneven[:, 1], torch.full((3,), 0.1), atol=1e-6)  # (w, h) = (0.2, 0.1)
    # a corner: along x, then down y
    corner = boxes_from_trajectory([(0.25, 0.25), (0.75, 0.25), (0.75, 0.75)], 0.1, 5)
    centres = torch.stack([(corner[:, 0] + corner[:, 2]) / 2, (corner[:, 1] + corner[:, 3]) / 2], dim=1)
    assert torch.allclose(centres, torch.tensor([[0.25, 0.25], [0.5, 0.25], [0.75, 0.25], [0.75, 0.5],
                                                 [0.75, 0.75]]), atol=1e-6)


def test_one_point_repeated_points_and_one_frame():
    still = boxes_from_trajectory([(0.5, 0.5)], 0.2, 3)
    assert torch.allclose(still, torch.tensor([[0.4, 0.4, 0.6, 0.6]]).repeat(3, 1), atol=1e-6)
    repeated = boxes_from_trajectory([(0.3, 0.5), (0.3, 0.5), (0.7, 0.5)], 0.2, 3)
    assert torch.allclose((repeated[:, 0] + repeated[:, 2]) / 2, torch.tensor([0.3, 0.5, 0.7]), atol=1e-6)
    assert torch.allclose(boxes_from_trajectory([(0.3, 0.5), (0.9, 0.5)], 0.2, 1),
                          torch.tensor([[0.2, 0.4, 0.4, 0.6]]), atol=1e-6)
    whole = boxes_from_trajectory([(0.1, 0.9)], 1.0, 2)  # a box the size of the frame is the frame
    assert torch.equal(whole, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))


def test_boxes_at_the_edges_are_shifted_not_shrunk():
    boxes = boxes_from_trajectory([(0.05, 0.98), (0.97, 0.02)], (0.3, 0.2), 2)
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.8, 0.3, 1.0], [0.7, 0.0, 1.0, 0.2]]), atol=1e-6)


def test_bad_trajectories_are_refused_in_one_line():
    assert parse_trajectory("0.1,0.5 0.9,0.5") == [(0.1, 0.5), (0.9, 0.5)]
    assert parse_trajectory(" 0,1\t1,0 ") == [(0.0, 1.0), (1.0, 0.0)]
    for text, message in [("", "--trajectory is empty"), ("0.1,0.5 0.9", "point 2 '0.9' is not x,y"),
                          ("0.1;0.5", "point 1 '0.1;0.5' is not x,y"), ("a,b", "point 1 'a,b'"),
                          ("0.1,0.5,0.3", "is not x,y"), ("nan,0.5", "is not x,y")]:
        with pytest.raises(UsageError, match=message):
            parse_trajectory(text)
    for args, message in [(([(0.5, 1.2)], 0.2, 4), r"point 1 \(0.5,1.2\) is outside \[0, 1\]"),
                          (([(0.5, 0.5), (-0.1, 0.5)], 0.2, 4), "point 2"),
                          (([(0.5, 0.5)], 0.0, 4), r"box size 0.0: .* in \(0, 1\]"),
                          (([(0.5, 0.5)], (0.2, 1.5), 4), r"box size \(0.2, 1.5\)"),
                          (([(0.5, 0.5)], (0.2,), 4), "box size"), (([], 0.2, 4), "no points"),
                          (([(0.5, 0.5)], 0.2, 0), "frames 0")]:
        with pytest.raises(UsageError, match=message) as raised:
            boxes_from_trajectory(*args)
        assert len(raised.value.lines) == 1


def test_read_boxes_takes_a_list_or_a_boxes_mapping(tmp_path):
    boxes = [[0.0, 0.1, 0.5, 0.6], [0.5, 0.4, 1.0, 0.9]]
    (tmp_path / "list.json").write_text(json.dumps(boxes))
    (tmp_path / "mapping.json").write_text(json.dumps({"boxes": boxes, "note": "drawn by hand"}))
    for name in ("list.json", "mapping.json"):
        read = read_boxes(tmp_path / name, 2)
        assert read.dtype == torch.float32 and torch.allclose(read, torch.tensor(boxes))
    assert torch.equal(check_boxes(torch.tensor(boxes), 2, "x"), torch.tensor(boxes))
    assert torch.equal(check_boxes(np.array(boxes), 2, "x"), torch.tensor(boxes))


def test_an_unreadable_boxes_file_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "boxes.json"
    path.write_text("[]")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(UsageError, match=r"boxes.json: cannot be read \(Permission denied\)"):
        read_boxes(path, 1)


def test_every_bad_boxes_file_is_one_line_naming_it_and_the_fix(tmp_path):
    def written(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    good = [[0.1, 0.1, 0.4, 0.4]]
    cases = [
        (tmp_path / "missing.json", 2, r"missing.json: no such file: give a JSON file of 2 boxes"),
        (tmp_path, 2, "no such file"),  # a directory
        (written("bad.json", "[[0.1, 0.1, 0.4"), 1, r"bad.json: not valid JSON \(.*line 1.*\): write a list of boxes"),
        (written("eight.json", json.dumps(good * 8)), 16,
         r"eight.json has 8 boxes; --frames is 16: give one box per frame$"),
        (written("outside.json", json.dumps([[0.1, 0.1, 1.2, 0.4]])), 1,
         r"outside.json: boxes\[0\] \[0.1, 0.1, 1.2, 0.4\] has a coordinate outside \[0, 1\]"),
        (written("negative.json", json.dumps([[-0.1, 0.1, 0.2, 0.4]])), 1, "outside"),
        (written("flipped_x.json", json.dumps([[0.5, 0.1, 0.2, 0.4]])), 1, r"boxes\[0\] .* has x1 <= x0 or y1 <= y0"),
        (written("flat_y.json", json.dumps([[0.1, 0.4, 0.2, 0.4]])), 1, "x1 <= x0 or y1 <= y0"),
        (written("three.json", json.dumps([[0.1, 0.1, 0.4]])), 1,
         r"three.json: boxes\[0\] is \[0.1, 0.1, 0.4\]: give four numbers"),
        (written("words.json", json.dumps([["a", 0.1, 0.4, 0.4]])), 1, "give four numbers"),
        (written("boolean.json", json.dumps([[True, 0.1, 0.4, 0.4]])), 1, "give four numbers"),
        (written("object.json", json.dumps({"box": good})), 1,
         r'object.json: a JSON object without "boxes" \(keys: box\): write \{"boxes"'),
        (written("number.json", "3"), 1, "number.json: expected a list of boxes"),
    ]
    for path, frames, message in cases:
        with pytest.raises(UsageError, match=message) as raised:
            read_boxes(path, frames)
        assert len(raised.value.lines) == 1, raised.value.lines
    # several problems: every one, a line each
    with pytest.raises(UsageError) as raised:
        read_boxes(written("many.json", json.dumps([[0.5, 0.1, 0.2, 0.4], [0.1, 0.1, 2.0, 0.4], [1, 2]])), 4)
    lines = raised.value.lines
    assert len(lines) == 4 and "has 3 boxes; --frames is 4" in lines[0]
    assert "boxes[0]" in lines[1] and "x1 <= x0" in lines[1] and "boxes[1]" in lines[2] and "outside" in lines[2]
    assert "boxes[2] is [1, 2]" in lines[3]


def test_box_masks_mark_the_cells_whose_centres_are_inside():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.55, 0.8, 1.0], [0.6, 0.1, 0.65, 0.15]])
    masks = box_masks(boxes, 4, 4)  # cell centres at 0.125, 0.375, 0.625, 0.875
    assert masks.shape == (3, 4, 4) and masks.dtype == torch.float32
    assert masks[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert masks[1].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]]
    # no cell centre inside a box smaller than a cell: the cell under its centre (0.625, 0.125)
    assert masks[2].tolist() == [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert box_masks(boxes, 2, 8).shape == (3, 2, 8)


def test_subject_token_indices():
    tokenizer = build_tokenizer(WORDS)
    assert subject_token_indices(tokenizer, "a red circle on a blue background", "red circle") == [2, 3]
    with pytest.raises(UsageError, match="^subject 'green square' is not in the prompt 'a red circle': give words "
                                         "of the prompt$"):
        subject_token_indices(tokenizer, "a red circle", "green square")
    with pytest.raises(UsageError, match="is not in the prompt"):
        subject_token_indices(tokenizer, "a red circle", "")
    short = build_tokenizer(WORDS, model_max_length=4)  # start, a, red, circle | on, a, blue ...
    with pytest.raises(UsageError, match="subject 'blue' comes after the text encoder's 4 tokens"):
        subject_token_indices(short, "a red circle on a blue background", "blue")


# --- layers and energy ---------------------------------------------------------------------------------------------


def test_the_layers_read_are_text_cross_attention_only(unet, inputs):
    layers = direction_layers(unet, DEFAULT_LAYERS)
    assert layers == list(cross_attention_layers(unet)) and len(layers) == 7
    assert not any("motion_modules" in name for name in layers)
    with torch.no_grad(), record_cross_attention(unet, layers, TOKENS, frames=FRAMES) as store:
        model_fn_of(unet)(inputs["latents"], inputs["t"], inputs["context"])
    maps = layer_maps(store, SIZE)
    shapes = {name: tuple(m.shape) for name, m in zip(store.layers, maps)}
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == (BATCH * FRAMES, 2, 8, 8)
    assert shapes["mid_block.attentions.0.transformer_blocks.0.attn2"] == (BATCH * FRAMES, 2, 4, 4)
    assert sorted(set(shapes.values())) == [(BATCH * FRAMES, 2, 4, 4), (BATCH * FRAMES, 2, 8, 8)]
    for motion in ("*motion_modules*", "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"):
        with pytest.raises(ParamError, match=r"layers: '.*motion_modules.*' names only attention that does not attend "
                                             r"to the text .* e.g. '\*.attentions.\*.attn2'"):
            direction_layers(unet, ["*attentions*", motion])
    with pytest.raises(ParamError, match="layers: 'down_blocks.0.atentions.0.transformer_blocks.0.attn2' matches "
                                         "none .did you mean down_blocks.0.attentions"):
        direction_layers(unet, ["down_blocks.0.atentions.0.transformer_blocks.0.attn2"])
    # a pattern naming text and temporal attention keeps the text's; one pattern may come as a string
    assert direction_layers(unet, ["down_blocks.0.*"]) == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert direction_layers(unet, "mid_block.*") == ["mid_block.attentions.0.transformer_blocks.0.attn2"]


def test_the_default_layers_of_a_unet3d_leave_its_temporal_attention_out():
    unet3d = UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT, attention_head_dim=4, norm_num_groups=8)
    layers = direction_layers(unet3d, DEFAULT_LAYERS)
    assert layers == list(cross_attention_layers(unet3d)) and len(layers) == 4
    assert not any("temp_attentions" in name or "transformer_in" in name for name in layers)
    with pytest.raises(ParamError, match="does not attend to the text"):
        direction_layers(unet3d, ["*temp_attentions*"])


def test_the_energy_is_lower_with_the_mass_inside_the_boxes():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])  # 2 frames, a quarter of the frame each
    masks = box_masks(boxes, 4, 4)
    inside = masks[None, :, None].expand(3, 2, 2, 4, 4).reshape(6, 2, 4, 4) * 0.25  # 3 samples, K = 2
    outside = (1 - masks)[None, :, None].expand(3, 2, 2, 4, 4).reshape(6, 2, 4, 4) / 12
    uniform = torch.full((6, 2, 4, 4), 1 / 16)
    assert torch.allclose(direction_energy([inside], boxes), torch.zeros(3))
    assert torch.allclose(direction_energy([outside], boxes), torch.full((3,), 2.0))  # F * (1 - 0)^2
    assert torch.allclose(direction_energy([uniform], boxes), torch.full((3,), 2 * 0.75 ** 2))
    assert torch.allclose(inside_fraction(uniform, boxes), torch.full((3, 2), 0.25))
    # summed over the tokens before the fraction: token 0 all inside, token 1 with three times its mass outside
    mixed = torch.stack([inside[:, 0], 3 * outside[:, 1]], dim=1)
    assert torch.allclose(inside_fraction(mixed, boxes), torch.full((3, 2), 0.25))
    # per sample, layers at two resolutions averaged
    half = uniform.clone()
    half[:2] = inside[:2]  # sample 0 (rows 0, 1: its two frames) all inside
    fine = torch.nn.functional.interpolate(half, size=(8, 8), mode="nearest") / 4
    energy = direction_energy([half, fine], boxes)
    assert torch.allclose(energy, torch.tensor([0.0, 1.125, 1.125]))
    # under guidance only the conditional (second) half of the rows counts
    assert torch.allclose(direction_energy([torch.cat([outside, inside])], boxes, guided=True), torch.zeros(3))
    with pytest.raises(ValueError, match="not .B . 2 frames"):
        direction_energy([uniform[:5]], boxes)


def test_the_energy_is_differentiable_in_the_maps():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    direction_energy([logits.flatten(2).softmax(-1).view(1, 1, 4, 4)], boxes).sum().backward()
    inside = box_masks(boxes, 4, 4)[0].bool()
    assert (logits.grad[0, 0][inside] < 0).all() and (logits.grad[0, 0][~inside] > 0).all()


# --- gradient mode -------------------------------------------------------------------------------------------------


def test_one_gradient_step_lowers_the_energy(unet, inputs):
    before = processors(unet)
    latents, t = inputs["latents"], inputs["t"]
    # normalised, each sample moves by eta (RMS); raw, by eta times a gradient of RMS ~5e-4 (measured)
    for normalize, eta in ((True, 0.3), (False, 100.0)):
        hook = guidance(unet, inputs, iterations=1, eta=eta, eta_schedule="constant", normalize_gradient=normalize)
        with torch.no_grad():  # as denoise runs it
            start = hook.energy(latents, t)
            moved = hook(0, t, latents)
            end = hook.energy(moved, t)
        assert (end < start).all(), (normalize, start, end)
        assert not moved.requires_grad and moved.grad_fn is None and moved.shape == latents.shape
        assert hook.energies == [[pytest.approx(float(start.mean()))]]
        rms = (moved - latents).flatten(1).pow(2).mean(dim=1).sqrt()
        assert torch.allclose(rms, torch.full((BATCH,), eta), rtol=1e-4) == normalize
    assert all(p.grad is None for p in unet.parameters())
    assert all(processors(unet)[name] is processor for name, processor in before.items())


def test_a_gradient_step_is_the_same_with_gradient_checkpointing(unet, inputs):
    latents, t = inputs["latents"], inputs["t"]
    with torch.no_grad():
        plain = guidance(unet, inputs)(0, t, latents)
        unet.enable_gradient_checkpointing()  # a Mojito backbone's default: the backward recomputes the forward
        try:
            checkpointed = guidance(unet, inputs)(0, t, latents)
        finally:
            unet.disable_gradient_checkpointing()
    assert torch.allclose(checkpointed, plain, atol=1e-6) and not torch.equal(plain, latents)


def test_gradient_guidance_in_the_denoising_loop(unet, inputs):
    before = processors(unet)
    hook = guidance(unet, inputs, steps=2, iterations=2, eta=0.3)
    calls = []

    def counting_model_fn(sample, t, context):
        calls.append(sample.shape[0])
        return model_fn_of(unet)(sample, t, context)

    hook.model_fn = counting_model_fn
    out = denoise(counting_model_fn, inputs["scheduler"], inputs["latents"], num_steps=3, guidance_scale=3.0,
                  context=inputs["context"], uncond_context=inputs["uncond"], step_hook=hook)
    assert out.shape == inputs["latents"].shape and torch.isfinite(out).all()
    # steps 0 and 1 steered (2 iterations each, on the conditional rows only), step 2 not; 3 guided forwards
    assert [len(e) for e in hook.energies] == [2, 2]
    assert hook.energies[0][1] < hook.energies[0][0]
    assert calls == [BATCH, BATCH, 2 * BATCH, BATCH, BATCH, 2 * BATCH, 2 * BATCH]
    assert all(p.grad is None for p in unet.parameters())
    assert all(processors(unet)[name] is processor for name, processor in before.items())


def test_a_sample_below_the_threshold_stops_moving(unet, inputs):
    latents, t = inputs["latents"], inputs["t"]
    hook = guidance(unet, inputs, iterations=3, threshold=float(FRAMES))  # E <= F: nothing is above
    with torch.no_grad():
        start = hook.energy(latents, t)
        assert torch.equal(hook(0, t, latents), latents)
    assert hook.energies == [[pytest.approx(float(start.mean()))]]  # one look, no step
    middle = float(start.sort().values.mean())  # between the two samples' energies
    hook = guidance(unet, inputs, iterations=1, eta=0.3, eta_schedule="constant", threshold=middle)
    with torch.no_grad():
        moved = hook(0, t, latents)
    still = start < middle
    assert torch.equal(moved[still], latents[still]) and not torch.equal(moved[~still], latents[~still])
    assert hook(10, t, latents) is None  # past the steered steps


# --- reweight mode -------------------------------------------------------------------------------------------------


def test_reweighting_raises_the_mass_inside_the_boxes(unet, inputs):
    before = processors(unet)
    latents, t, boxes = inputs["latents"], inputs["t"], inputs["boxes"]
    layers = direction_layers(unet, DEFAULT_LAYERS)
    both = torch.cat([latents, latents])
    contexts = torch.cat([inputs["uncond"], inputs["context"]])
    with torch.no_grad():
        with record_cross_attention(unet, layers, TOKENS, frames=FRAMES) as plain:
            plain_out = model_fn_of(unet)(both, t, contexts)
            plain_maps = layer_maps(plain, SIZE)
        with reweight_attention(unet, DEFAULT_LAYERS, TOKENS, boxes, latent_size=SIZE, strength=2.0) as shifted:
            assert all(isinstance(processors(unet)[name], CrossAttentionRecorder) for name in layers)
            shifted_out = model_fn_of(unet)(both, t, contexts)
            shifted_maps = layer_maps(shifted, SIZE)
    for plain_map, shifted_map in zip(plain_maps, shifted_maps):
        plain_inside = inside_fraction(plain_map, boxes, guided=True)
        shifted_inside = inside_fraction(shifted_map, boxes, guided=True)
        assert (shifted_inside > plain_inside + 0.2).all()  # measured: ~0.15 -> ~0.65 at strength 2
        half = plain_map.shape[0] // 2
        assert torch.allclose(shifted_map[:half], plain_map[:half], atol=1e-6)  # the unconditional half untouched
    assert not torch.allclose(shifted_out, plain_out)
    assert all(processors(unet)[name] is processor for name, processor in before.items())


def test_the_logit_bias_leaves_the_empty_prompts_rows_alone():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    bias = box_logit_bias(boxes, 2, (8, 4), 1.5)  # 2 samples x 2 frames; a layer at (4, 2) has 8 positions
    alone = bias("x", 4, 8)
    assert alone.shape == (4, 8, 1)
    masks = box_masks(boxes, 4, 2).flatten(1)
    assert torch.equal(alone[:, :, 0], (1.5 * (2 * masks - 1)).repeat(2, 1))  # row b * F + f: frame f's box
    guided = bias("x", 8, 8)
    assert torch.equal(guided[:4], torch.zeros(4, 8, 1)) and torch.equal(guided[4:], alone)
    three = bias("x", 12, 8)  # [empty, prompt, prompt with an intensity level]
    assert torch.equal(three[:4], torch.zeros(4, 8, 1)) and torch.equal(three[4:8], alone)
    assert torch.equal(three[8:], alone)
    with pytest.raises(ValueError, match="x: the layer sees 6 rows, not a multiple of the boxes' 2 samples x 2"):
        bias("x", 6, 8)


def test_direction_control_reweights_the_first_k_steps_only(unet, inputs):
    before = processors(unet)
    layers = direction_layers(unet, DEFAULT_LAYERS)
    control = DirectionControl(mode="reweight", steps=2)
    seen = []

    def model_fn(sample, t, context):
        seen.append(all(isinstance(processors(unet)[name], CrossAttentionRecorder) for name in layers))
        return model_fn_of(unet)(sample, t, context)

    with direction_control(control, unet, tokens=TOKENS, boxes=inputs["boxes"], latent_size=SIZE, model_fn=model_fn,
                           context=inputs["context"], scheduler=inputs["scheduler"]) as hook:
        reweighted = denoise(model_fn, inputs["scheduler"], inputs["latents"], num_steps=3, guidance_scale=1.0,
                             context=inputs["context"], step_hook=hook)
    assert seen == [True, True, False]
    assert all(processors(unet)[name] is processor for name, processor in before.items())
    plain = denoise(model_fn_of(unet), inputs["scheduler"], inputs["latents"], num_steps=3, guidance_scale=1.0,
                    context=inputs["context"])
    assert not torch.allclose(reweighted, plain)
    with direction_control(DirectionControl(mode="none"), unet, tokens=TOKENS, boxes=inputs["boxes"],
                           latent_size=SIZE, model_fn=model_fn, context=inputs["context"],
                           scheduler=inputs["scheduler"]) as none:
        assert none is None
    with pytest.raises(ParamError, match="mode: 'gradiant' is not one of none, gradient, reweight .did you mean "
                                         "gradient"), \
            direction_control(DirectionControl(mode="gradiant"), unet, tokens=TOKENS, boxes=inputs["boxes"],
                              latent_size=SIZE, model_fn=model_fn, context=inputs["context"],
                              scheduler=inputs["scheduler"]):
        pass
    assert all(processors(unet)[name] is processor for name, processor in before.items())


def test_processors_come_back_after_an_error_in_either_mode(unet, inputs):
    before = processors(unet)

    def failing_model_fn(*args):
        raise RuntimeError("boom")

    for mode in ("gradient", "reweight"):
        with pytest.raises(RuntimeError, match="boom"), direction_control(
                DirectionControl(mode=mode), unet, tokens=TOKENS, boxes=inputs["boxes"], latent_size=SIZE,
                model_fn=failing_model_fn, context=inputs["context"], scheduler=inputs["scheduler"]) as hook:
            if mode == "gradient":
                hook(0, inputs["t"], inputs["latents"])  # fails inside its recording
            raise RuntimeError("boom")
        assert all(processors(unet)[name] is processor for name, processor in before.items())


# --- settings ------------------------------------------------------------------------------------------------------


def test_direction_control_problems_lists_every_bad_field():
    assert DirectionControl().problems() == []
    assert DirectionControl(mode="reweight", layers=["*attn2"], threshold=0).problems() == []
    bad = DirectionControl(mode="gradiant", steps=0, iterations=True, eta=-1.0, eta_schedule="linaer",
                           normalize_gradient="yes", threshold=float("nan"), layers="*attn2", strength=0)
    problems = dict(bad.problems())
    assert list(problems) == ["mode", "eta_schedule", "steps", "iterations", "eta", "strength", "threshold",
                              "normalize_gradient", "layers"]
    assert "did you mean gradient" in problems["mode"] and "did you mean linear" in problems["eta_schedule"]
    assert problems["steps"] == "must be an integer >= 1, got 0" and problems["eta"] == "must be a number > 0, got -1.0"
    assert "non-empty list" in problems["layers"]
    assert dict(DirectionControl(layers=["*attn2", ""]).problems())["layers"].startswith("every pattern")
    assert "must be a number >= 0" in dict(DirectionControl(threshold=-1).problems())["threshold"]
    with pytest.raises(ParamError) as raised:
        bad.check()
    assert len(raised.value.problems) == 9


def test_eta_schedules():
    constant = DirectionControl(eta=0.4, steps=4, eta_schedule="constant")
    linear = DirectionControl(eta=0.4, steps=4, eta_schedule="linear")
    cosine = DirectionControl(eta=0.4, steps=4, eta_schedule="cosine")
    assert [constant.eta_at(i) for i in range(6)] == [0.4, 0.4, 0.4, 0.4, 0.0, 0.0]
    assert [linear.eta_at(i) for i in range(6)] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    assert [cosine.eta_at(i) for i in range(5)] == pytest.approx([0.4, 0.2 * (1 + 2 ** -0.5), 0.2,
                                                                  0.2 * (1 - 2 ** -0.5), 0.0])

"""FlexEControlModule and its baselines on a random tiny pixel-space base (lightning_modules/flexecontrol/module.py)."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ParamError
from lightning_modules.diffusion.tiny import write_tiny_text_to_image
from lightning_modules.flexecontrol.module import FlexEControlModule

SIZE = 16
TYPES = {"canny": 1, "seg": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_text_to_image(tmp_path_factory.mktemp("tiny-sd") / "base", image_size=SIZE, seed=0)


def module(base, variant="flexecontrol", types=None, **kwargs) -> FlexEControlModule:
    torch.manual_seed(0)
    return FlexEControlModule(base={"pretrained": str(base), "vae": None}, variant=variant,
                              condition_channels=dict(types or TYPES), kronecker_rank=2, **kwargs)


def batch(types=None, n=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"pixel_values": torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1,
           "caption": ["a red circle", "a blue square"][:n] + ["a star"] * max(0, n - 2),
           "region_words": ["circle", "square"][:n] + ["star"] * max(0, n - 2),
           "region_masks": torch.zeros(n, 2, SIZE, SIZE), "region_valid": torch.zeros(n, 2, dtype=torch.bool)}
    for name in (types or TYPES):
        maps = (torch.rand(n, 2, 1, SIZE, SIZE, generator=g) > 0.7).float()
        out[f"cond.{name}"], out[f"present.{name}"] = maps, torch.tensor([[True, False]] * n)
    out["region_masks"][:, 0, 4:12, 4:12] = 1.0
    out["region_valid"][:, 0] = True
    return out


def plain_unet(m: FlexEControlModule, noisy, t, context):
    return m.unet(noisy, t, context).sample


@pytest.mark.parametrize("variant", ["flexecontrol", "uni_controlnet", "controlnet"])
def test_at_initialisation_control_leaves_the_base_output_unchanged(base, variant):
    types = {"canny": 1} if variant == "controlnet" else TYPES
    m = module(base, variant, types)
    b = batch(types)
    noisy, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor([10, 500])
    context = m.text_encoder(m.tokenizer(b["caption"], padding="max_length", truncation=True,
                                         max_length=m.tokenizer.model_max_length,
                                         return_tensors="pt").input_ids)[0]
    maps, present = m.condition_inputs(b)
    with torch.no_grad():
        assert torch.equal(m.predict_noise(noisy, t, context, maps, present), plain_unet(m, noisy, t, context))


@pytest.mark.parametrize("variant", ["flexecontrol", "uni_controlnet", "controlnet"])
def test_only_the_control_is_trained_and_the_checkpoint_holds_exactly_it(base, variant):
    types = {"canny": 1} if variant == "controlnet" else TYPES
    m = module(base, variant, types)
    trainable = {name for name, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("control.") for name in trainable)
    assert not any(p.requires_grad for p in [*m.unet.parameters(), *m.text_encoder.parameters()])
    assert set(m.state_dict()) == trainable
    if variant == "flexecontrol":  # the frozen copy is not trained: only its updates, encoders and zero-convs
        frozen_copy = [n for n, p in m.control.named_parameters() if not p.requires_grad]
        assert frozen_copy and not any(n in trainable for n in frozen_copy)
    m.train()
    assert not m.unet.training and not m.text_encoder.training


def test_a_training_step_updates_only_the_control(base):
    m = module(base, masked_loss_weight=0.5, attention_loss_weight=0.1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    unet_before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    optimizer = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    out = m.losses(batch(), torch.Generator().manual_seed(0), train=True)
    assert set(out) >= {"diffusion", "masked", "attention", "loss"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    optimizer.step()
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert all(torch.equal(v, unet_before[k]) for k, v in m.unet.state_dict().items())


def test_the_loss_falls_on_a_fixed_batch(base):
    m = module(base, lr=3e-3)
    fixed = batch()
    optimizer = torch.optim.AdamW(m.trainable_parameters(), lr=3e-3)

    def val_loss() -> float:
        with torch.no_grad():
            return float(m.losses(fixed, torch.Generator().manual_seed(123), train=False)["loss"])

    start = val_loss()
    for step in range(25):
        optimizer.zero_grad()
        m.losses(fixed, torch.Generator().manual_seed(step), train=False)["loss"].backward()
        optimizer.step()
    assert val_loss() < 0.9 * start


def test_generate_is_seeded_and_a_zero_strength_is_no_condition(base):
    m = module(base)
    for p in m.control.parameters():  # a branch that does something
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    b = batch()
    maps, present = m.condition_inputs(b)
    kwargs = {"resolution": SIZE, "steps": 3, "guidance": 2.0, "scheduler": "DDIMScheduler"}
    a = m.generate(b["caption"], maps, present, generator=torch.Generator().manual_seed(0), **kwargs)
    again = m.generate(b["caption"], maps, present, generator=torch.Generator().manual_seed(0), **kwargs)
    assert a.shape == (2, 3, SIZE, SIZE) and torch.equal(a, again) and a.abs().max() <= 1
    off = m.generate(b["caption"], maps, present, strengths={"canny": 0.0, "seg": 0.0},
                     generator=torch.Generator().manual_seed(0), **kwargs)
    none = m.generate(b["caption"], {}, {}, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.allclose(off, none, atol=1e-5) and not torch.allclose(a, none, atol=1e-4)
    base = m.generate(b["caption"], maps, present, control=False, generator=torch.Generator().manual_seed(0), **kwargs)
    assert not torch.allclose(base, none, atol=1e-4)  # a branch given no condition still adds its residuals
    for p in m.control.parameters():  # the base alone is what a branch adding nothing gives
        if p.requires_grad:
            torch.nn.init.zeros_(p)
    zeroed = m.generate(b["caption"], maps, present, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.allclose(zeroed, base, atol=1e-5)


def test_bad_arguments_are_all_reported_with_their_names(base):
    with pytest.raises(ParamError) as e:
        FlexEControlModule(base={"pretrained": str(base), "vae": None}, variant="controlnet",
                           condition_channels={"canny": 1, "depth": 2}, kronecker_rank=0, lr=0,
                           masked_loss_weight=-1, condition_dropout={"each": 2.0})
    names = {name for name, _ in e.value.problems}
    assert names == {"condition_channels", "condition_channels.depth", "kronecker_rank", "lr", "masked_loss_weight",
                     "condition_dropout.each"}


def test_a_base_path_that_does_not_exist_is_a_config_problem(tmp_path):
    problems = FlexEControlModule.config_problems({"base": {"pretrained": str(tmp_path / "nowhere"), "vae": None}})
    assert len(problems) == 1 and problems[0][0] == "base.pretrained" and "nowhere" in problems[0][1]


def test_every_trainable_parameter_gets_a_gradient_when_a_type_is_absent(base):
    # DDP and ZeRO need a gradient for every trainable parameter from every backward, dropped conditions or not
    m = module(base, prompt_dropout=0.0, condition_dropout={"keep_all": 1.0, "drop_all": 0.0})
    b = batch()
    b["present.seg"] = torch.zeros_like(b["present.seg"])  # no sample carries a seg map
    m.losses(b, torch.Generator().manual_seed(0), train=True)["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    seg = [p.grad for p in m.control.condition_encoders["seg"].parameters()]
    assert all(float(g.abs().sum()) == 0.0 for g in seg)


def test_the_controlnet_variant_refuses_a_type_it_was_not_built_for(base):
    m = module(base, "controlnet", {"canny": 1})
    b = batch({"canny": 1, "seg": 1})
    maps, present = m.condition_inputs(b)
    with pytest.raises(ValueError, match=r"conditions: unknown condition type 'seg' \(this ControlNet has canny\)"):
        m.predict_noise(torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 2]), torch.randn(2, 8, 32), maps, present)

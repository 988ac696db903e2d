"""The shared-Kronecker weight updates: the parametrized forward against W + dW materialised by hand (torch.kron and an
explicit sum over i), the crop of non-divisible shapes, one shared H with gradients from every layer, merging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from datamodules.errors import ParamError
from lightning_modules.flexecontrol.kronecker import (KroneckerUpdate, SharedKroneckerFactors, add_kronecker_updates,
                                                      kronecker_layer_names, kronecker_update_of, load_plain_state_dict,
                                                      merge_kronecker_updates)


def by_hand(weight: torch.Tensor, update: KroneckerUpdate) -> torch.Tensor:
    """W + (alpha/r) * sum_i kron(H_i, u_i v_i^T), top-left out x in' block, in the weight's shape."""
    h, u, v = update.factors.matrices.detach(), update.u.detach(), update.v.detach()
    total = sum(torch.kron(h[i], u[i] @ v[i]) for i in range(h.shape[0]))
    out, fan_in = weight.shape[0], math.prod(weight.shape[1:])
    delta = (update.alpha / update.rank) * total[:out, :fan_in]
    return weight.detach() + delta.reshape(weight.shape)


def randomise_v(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in kronecker_layer_names(module):
            v = kronecker_update_of(module.get_submodule(name)).v
            v.copy_(torch.randn(v.shape, generator=generator))


def test_linear_forward_is_w_plus_kronecker_sum():
    torch.manual_seed(0)
    layer = nn.Linear(12, 8)
    original = layer.weight.detach().clone()
    factors = SharedKroneckerFactors(4)
    assert add_kronecker_updates(layer, factors, rank=2, alpha=3.0) == [""]
    randomise_v(layer)
    update = kronecker_update_of(layer)
    assert update.u.shape == (4, 2, 2) and update.v.shape == (4, 2, 3)
    x = torch.randn(5, 12)
    expected = F.linear(x, by_hand(original, update), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    assert not torch.allclose(layer(x), F.linear(x, original, layer.bias))  # the update is not zero


def test_conv_forward_with_non_divisible_shape_uses_the_top_left_block():
    torch.manual_seed(1)
    # out 10 and in' = 6*3*3 = 54 are not multiples of n = 4: blocks of ceil(10/4) = 3 x ceil(54/4) = 14, product
    # 12 x 56, cropped to 10 x 54.
    layer = nn.Conv2d(6, 10, kernel_size=3, stride=2, padding=1)
    original = layer.weight.detach().clone()
    factors = SharedKroneckerFactors(4)
    add_kronecker_updates(layer, factors, rank=3, alpha=1.5)
    randomise_v(layer, seed=1)
    update = kronecker_update_of(layer)
    assert update.u.shape == (4, 3, 3) and update.v.shape == (4, 3, 14)
    x = torch.randn(2, 6, 9, 9)
    expected = F.conv2d(x, by_hand(original, update), layer.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight.shape == original.shape


def test_non_divisible_linear_and_n_larger_than_the_layer():
    torch.manual_seed(2)
    for n, (fan_in, out) in [(3, (7, 5)), (8, (3, 2))]:
        layer = nn.Linear(fan_in, out, bias=False)
        original = layer.weight.detach().clone()
        add_kronecker_updates(layer, SharedKroneckerFactors(n), rank=2, alpha=1.0)
        randomise_v(layer, seed=n)
        x = torch.randn(4, fan_in)
        torch.testing.assert_close(layer(x), F.linear(x, by_hand(original, kronecker_update_of(layer))))


def test_with_v_zero_every_layer_equals_the_original():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 1), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 5))
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    names = add_kronecker_updates(model, SharedKroneckerFactors(4), rank=4, alpha=8.0)
    assert names == ["0", "2", "4"]
    assert torch.equal(model(x), before)
    # still the same module types: code that checks isinstance(layer, nn.Linear / nn.Conv2d) keeps working
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], nn.Conv2d) and isinstance(model[4], nn.Linear)


def test_h_is_one_parameter_shared_by_every_layer_and_gets_gradients_from_each():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 12), nn.Conv2d(2, 6, 3), nn.Linear(12, 4))
    factors = SharedKroneckerFactors(2)
    model.factors = factors
    add_kronecker_updates(model, factors, rank=2, alpha=1.0)
    names = [name for name, _ in model.named_parameters()]
    assert [name for name in names if "matrices" in name] == ["factors.matrices"]
    assert [key for key in model.state_dict() if "matrices" in key] == ["factors.matrices"]
    layers = [model[0], model[1], model[2]]
    updates = [kronecker_update_of(layer) for layer in layers]
    assert all(update.factors is factors for update in updates)
    assert len({id(update.u) for update in updates}) == 3 and len({id(update.v) for update in updates}) == 3
    inputs = [torch.randn(3, 8), torch.randn(3, 2, 5, 5), torch.randn(3, 12)]

    # at the start (v = 0) gradients reach v (H, u non-zero); H's own gradient needs u v^T != 0
    model[0](inputs[0]).square().sum().backward()
    assert updates[0].v.grad.abs().sum() > 0
    assert factors.matrices.grad.abs().sum() == 0
    randomise_v(model)
    for layer, x in zip(layers, inputs):
        factors.matrices.grad = None
        layer(x).square().sum().backward()
        assert factors.matrices.grad is not None and factors.matrices.grad.abs().sum() > 0


def test_include_filter_names_and_refusals():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Conv1d(4, 4, 1))
    factors = SharedKroneckerFactors(2)
    names = add_kronecker_updates(model, factors, rank=1, alpha=1.0, include=lambda name, layer: name != "1")
    assert names == ["0"]  # the Conv1d is not an adaptable type
    assert kronecker_layer_names(model) == ["0"]
    assert kronecker_update_of(model[1]) is None
    with pytest.raises(ValueError, match="already parametrized: 0"):
        add_kronecker_updates(model, factors, rank=1, alpha=1.0)
    with pytest.raises(ParamError) as error:
        add_kronecker_updates(model, factors, rank=0, alpha=float("nan"))
    assert [name for name, _ in error.value.problems] == ["rank", "alpha"]
    with pytest.raises(ValueError, match="include must be a callable"):
        add_kronecker_updates(model, factors, rank=1, alpha=1.0, include="0")
    with pytest.raises(ParamError, match="n: must be an integer >= 1"):
        SharedKroneckerFactors(0)


def test_merge_gives_plain_weights_with_the_same_outputs():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    model.requires_grad_(False)
    originals = [model[0].weight.clone(), model[2].weight.clone()]
    add_kronecker_updates(model, SharedKroneckerFactors(2), rank=2, alpha=2.0)
    randomise_v(model)
    expected_weights = [by_hand(w, kronecker_update_of(model[i])) for w, i in zip(originals, (0, 2))]
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    assert merge_kronecker_updates(model) == ["0", "2"]
    assert not parametrize.is_parametrized(model[0]) and not parametrize.is_parametrized(model[2])
    assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Linear
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(model[0].weight, expected_weights[0])
    torch.testing.assert_close(model[2].weight, expected_weights[1])
    assert not model[0].weight.requires_grad
    torch.testing.assert_close(model(x), before)
    assert merge_kronecker_updates(model) == []


def test_load_plain_weights_into_adapted_layers():
    torch.manual_seed(6)
    source, target = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6)), nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    add_kronecker_updates(target, SharedKroneckerFactors(2), rank=1, alpha=1.0)
    load_plain_state_dict(target, source.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(target(x), source(x))
    with pytest.raises(ValueError, match="missing"):
        load_plain_state_dict(target, {"0.weight": source[0].weight})

"""The shared-Kronecker weight updates: the adapted layers' forward (factored, or with dW formed) against W + dW
materialised by hand (torch.kron and an explicit sum over i), gradients included; the crop of non-divisible shapes;
what the factored forward keeps for backward; one shared H with gradients from every layer; copies, merging."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ParamError
from lightning_modules.flexecontrol.kronecker import (KroneckerConv2d, KroneckerUpdate, SharedKroneckerFactors,
                                                      add_kronecker_updates, kronecker_layer_names, kronecker_update_of,
                                                      load_plain_state_dict, merge_kronecker_updates)


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


def with_formed_weight(layer: nn.Module, original: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layer's plain forward with W + dW formed by hand (by_hand), differentiable in x, H, u and v."""
    update = kronecker_update_of(layer)
    h, u, v = update.factors.matrices, update.u, update.v
    total = sum(torch.kron(h[i], u[i] @ v[i]) for i in range(h.shape[0]))
    delta = (update.alpha / update.rank) * total[:original.shape[0], :math.prod(original.shape[1:])]
    weight = original + delta.reshape(original.shape)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def assert_same_forward_and_gradients(layer: nn.Module, original: torch.Tensor, x: torch.Tensor) -> None:
    update = kronecker_update_of(layer)
    x = x.clone().requires_grad_()
    got, expected = layer(x), with_formed_weight(layer, original, x)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    wrt = (x, update.factors.matrices, update.u, update.v)
    for ours, reference in zip(torch.autograd.grad(got, wrt, upstream), torch.autograd.grad(expected, wrt, upstream)):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_linear_forward_is_w_plus_kronecker_sum():
    torch.manual_seed(0)
    layer = nn.Linear(12, 8)
    original = layer.weight.detach().clone()
    factors = SharedKroneckerFactors(4)
    assert add_kronecker_updates(layer, factors, rank=2, alpha=3.0) == [""]
    randomise_v(layer)
    update = kronecker_update_of(layer)
    assert update.u.shape == (4, 2, 2) and update.v.shape == (4, 2, 3)
    assert update.factored  # 12 inputs: 4 whole blocks of 3
    x = torch.randn(5, 12)
    expected = F.linear(x, by_hand(original, update), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    assert not torch.allclose(layer(x), F.linear(x, original, layer.bias))  # the update is not zero
    assert_same_forward_and_gradients(layer, original, torch.randn(2, 5, 12))  # leading dimensions too


@pytest.mark.parametrize("make_layer", [
    lambda: nn.Conv2d(8, 10, kernel_size=3, stride=2, padding=1),  # out 10: the last block row cut short
    lambda: nn.Conv2d(8, 6, kernel_size=3, padding=2, dilation=2, padding_mode="reflect", bias=False),
    lambda: nn.Conv2d(4, 8, kernel_size=1),
], ids=["strided", "dilated-reflect", "1x1"])
def test_factored_conv_equals_the_formed_weight_with_gradients(make_layer):
    torch.manual_seed(7)
    layer = make_layer()
    original = layer.weight.detach().clone()
    add_kronecker_updates(layer, SharedKroneckerFactors(4), rank=3, alpha=2.0)
    randomise_v(layer, seed=7)
    assert kronecker_update_of(layer).factored and isinstance(layer, KroneckerConv2d)
    x = torch.randn(2, layer.in_channels, 9, 9)
    torch.testing.assert_close(layer(x), layer._conv_forward(x, by_hand(original, kronecker_update_of(layer)),
                                                             layer.bias))
    assert_same_forward_and_gradients(layer, original, x)


def test_layers_whose_blocks_are_not_whole_channels_form_their_update():
    torch.manual_seed(8)
    # 6 input channels in 4 blocks, a grouped conv, 7 inputs in 3 blocks: dW formed, applied beside W
    cases = [(nn.Conv2d(6, 8, 3), 4, (2, 6, 7, 7)), (nn.Conv2d(8, 8, 3, groups=2), 4, (2, 8, 7, 7)),
             (nn.Linear(7, 5), 3, (4, 7))]
    for layer, n, shape in cases:
        original = layer.weight.detach().clone()
        add_kronecker_updates(layer, SharedKroneckerFactors(n), rank=2, alpha=1.0)
        randomise_v(layer, seed=n)
        assert not kronecker_update_of(layer).factored
        assert_same_forward_and_gradients(layer, original, torch.randn(shape))


def test_factored_forward_keeps_no_weight_sized_tensor_nor_the_down_projection_for_backward():
    torch.manual_seed(9)
    n, rank = 4, 4  # D x has n * n * rank = 64 channels
    layer = nn.Conv2d(96, 128, kernel_size=3, padding=1)
    layer.requires_grad_(False)
    add_kronecker_updates(layer, SharedKroneckerFactors(n), rank=rank, alpha=1.0)
    randomise_v(layer)
    x = torch.randn(2, 96, 6, 6, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    weight_size = layer.weight.numel()
    kept = [tuple(t.shape) for t in saved
            if t.untyped_storage().data_ptr() not in (x.untyped_storage().data_ptr(),
                                                     layer.weight.untyped_storage().data_ptr())]
    assert all(math.prod(shape) < weight_size // 8 for shape in kept), kept  # only M (128 x 64) and v
    assert not any(len(shape) == 4 and shape[1] == n * n * rank for shape in kept), kept
    out.sum().backward()
    update = kronecker_update_of(layer)
    assert update.v.grad.abs().sum() > 0 and x.grad is not None and layer.weight.grad is None


def test_factored_backward_under_autocast_gives_gradients_in_the_parameters_dtypes():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    original = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    factors = SharedKroneckerFactors(4)
    add_kronecker_updates(model, factors, rank=2, alpha=1.0)
    randomise_v(model)
    x = torch.randn(3, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    reference = with_formed_weight(model[2], original[1], with_formed_weight(model[0], original[0], x).flatten(1))
    wrt = [factors.matrices, model[0].kronecker_update.v, model[2].kronecker_update.v]
    expected = torch.autograd.grad(reference.square().sum(), wrt)
    for parameter, want in zip(wrt, expected):
        assert parameter.grad.dtype == torch.float32
        torch.testing.assert_close(parameter.grad, want, rtol=0.1, atol=0.1 * want.abs().max().item())


def test_copies_and_pickles_keep_the_update():
    torch.manual_seed(11)
    factors = SharedKroneckerFactors(2)
    model = nn.ModuleDict({"net": nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)),
                           "factors": factors})
    add_kronecker_updates(model["net"], factors, rank=1, alpha=1.0)
    randomise_v(model)
    x = torch.randn(2, 4, 5, 5)
    for duplicate in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(duplicate["net"](x), model["net"](x))
        # each copy's layers share the copy's H, not the original's
        assert all(kronecker_update_of(layer).factors is duplicate["factors"] for layer in duplicate["net"][::2])


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
    with pytest.raises(ValueError, match="already carry a Kronecker update: 0"):
        add_kronecker_updates(model, factors, rank=1, alpha=1.0)

    class OwnLinear(nn.Linear):
        pass

    with pytest.raises(ValueError, match=r"not subclasses: 1 \(OwnLinear\)"):
        add_kronecker_updates(nn.Sequential(nn.Linear(2, 2), OwnLinear(2, 2)), factors, rank=1, alpha=1.0)
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
    assert kronecker_update_of(model[0]) is None and kronecker_update_of(model[2]) is None
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

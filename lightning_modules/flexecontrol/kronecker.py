"""FlexEControl's weight updates: `dW = (alpha / r) * sum_{i=1..n} H_i (kron) (u_i v_i^T)` on frozen layers
(arXiv 2405.04834; DESIGN.md, "FlexEControl").

The n small matrices H_i (n x n each) are one set of parameters, `SharedKroneckerFactors`, shared by every adapted
layer; each layer has its own rank-r factors u_i (out/n x r) and v_i (r x in'/n), v zero-initialised so that an
adapted layer starts as the original. A conv kernel [out, in, kh, kw] is treated as the matrix out x (in*kh*kw).

When out (or in') is not a multiple of n, the blocks are ceil(out/n) x ceil(in'/n): the Kronecker sum is formed at
the rounded-up size n*ceil(out/n) x n*ceil(in'/n) and its top-left out x in' block is the update (the last block row
and column are cut short).

The update is a torch.nn.utils.parametrize parametrization of the layer's `weight`: the layer stays an nn.Linear /
nn.Conv2d (diffusers' attention code is untouched), and W + dW is formed inside that layer's forward, one layer at a
time. As for any weight in the graph, autograd keeps a layer's W + dW until its backward; under gradient checkpointing
only the blocks being recomputed hold theirs. peft's LoKr has per-layer factors only (it cannot share H across
layers), hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from datamodules.errors import raise_param_problems

LayerFilter = Callable[[str, nn.Module], bool]
ADAPTABLE_TYPES = (nn.Linear, nn.Conv2d)


class SharedKroneckerFactors(nn.Module):
    """The shared matrices H_1..H_n, one parameter `matrices` of shape [n, n, n] (`matrices[i]` is H_{i+1})."""

    def __init__(self, n: int):
        super().__init__()
        raise_param_problems(positive_int_problems(n=n))
        self.n = n
        self.matrices = nn.Parameter(torch.empty(n, n, n))
        # Not zero: with v = 0 at the start, v's gradient is a sum of H_i-weighted u_i^T (dL/dW) blocks, so zero H
        # would leave v (and then H itself, whose gradient needs u v^T != 0) without gradient for ever. Xavier-normal
        # per matrix keeps each block of dW at the scale of u v^T.
        for matrix in self.matrices.data:
            nn.init.xavier_normal_(matrix)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class KroneckerUpdate(nn.Module):
    """Parametrization of one layer's weight W: returns W + dW, dW from the shared H and this layer's u, v.

    u: [n, ceil(out/n), r], v: [n, r, ceil(in'/n)] (in' = product of the weight's other dimensions). The shared
    factors are held by a plain reference, not registered, so H is one entry of state_dict() / parameters().
    """

    def __init__(self, weight_shape: torch.Size | tuple[int, ...], factors: SharedKroneckerFactors, *, rank: int,
                 alpha: float, dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        raise_param_problems([*positive_int_problems(rank=rank), *alpha_problems(alpha)])
        if len(weight_shape) < 2:
            raise ValueError(f"a Kronecker update needs a weight with >= 2 dimensions, got shape {tuple(weight_shape)}")
        n = factors.n
        self.weight_shape = tuple(weight_shape)
        self.out_features, self.in_features = weight_shape[0], math.prod(weight_shape[1:])
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank
        self._factors = [factors]  # a list: shared, so not this layer's parameter (nor its state_dict entry)
        out_blocks, in_blocks = math.ceil(self.out_features / n), math.ceil(self.in_features / n)
        self.u = nn.Parameter(torch.empty(n, out_blocks, rank, dtype=dtype, device=device))
        self.v = nn.Parameter(torch.zeros(n, rank, in_blocks, dtype=dtype, device=device))
        # u non-zero so that v gets a gradient from the start (v = 0 makes dW = 0: the layer starts as the copy).
        nn.init.uniform_(self.u, -rank ** -0.5, rank ** -0.5)

    @property
    def factors(self) -> SharedKroneckerFactors:
        return self._factors[0]

    def delta(self) -> torch.Tensor:
        """dW in the weight's shape: (alpha/r) * sum_i H_i (kron) (u_i v_i^T), cropped to out x in'."""
        h = self.factors.matrices.to(self.u.dtype)
        n, out_blocks, in_blocks = h.shape[0], self.u.shape[1], self.v.shape[2]
        # blocks[p, a, q, c] = sum_i H_i[p, q] (u_i v_i^T)[a, c]: row p*out_blocks + a, column q*in_blocks + c of
        # the Kronecker sum (torch.kron's layout).
        blocks = torch.einsum("ipq,iak,ikc->paqc", h, self.u, self.v)
        full = blocks.reshape(n * out_blocks, n * in_blocks)
        return (self.scale * full[:self.out_features, :self.in_features]).reshape(self.weight_shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, rank={self.rank}, alpha={self.alpha}"


def positive_int_problems(**values) -> list[tuple[str, str]]:
    return [(name, f"must be an integer >= 1, got {value!r}") for name, value in values.items()
            if isinstance(value, bool) or not isinstance(value, int) or value < 1]


def alpha_problems(alpha) -> list[tuple[str, str]]:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        return [("alpha", f"must be a finite number, got {alpha!r}")]
    return []


def kronecker_update_of(layer: nn.Module) -> KroneckerUpdate | None:
    """The KroneckerUpdate on a layer's weight, or None."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p for p in layer.parametrizations.weight if isinstance(p, KroneckerUpdate)), None)


def add_kronecker_updates(module: nn.Module, factors: SharedKroneckerFactors, *, rank: int, alpha: float,
                          include: LayerFilter | None = None) -> list[str]:
    """Put a KroneckerUpdate (sharing `factors`) on the weight of every nn.Linear and nn.Conv2d of `module` for which
    `include(name, layer)` is true (all of them when include is None); returns the adapted layers' names.

    The original weights are left as they are (frozen or not: freezing is the caller's choice). A layer whose weight
    is already parametrized is refused, so no layer gets two updates.
    """
    raise_param_problems([*positive_int_problems(rank=rank), *alpha_problems(alpha)])
    if include is not None and not callable(include):
        raise ValueError(f"include must be a callable (name, layer) -> bool or None, got {include!r}")
    chosen = [(name, layer) for name, layer in module.named_modules()
              if isinstance(layer, ADAPTABLE_TYPES) and (include is None or include(name, layer))]
    taken = [name or "(the module itself)" for name, layer in chosen if parametrize.is_parametrized(layer, "weight")]
    if taken:
        raise ValueError(f"these layers' weights are already parametrized: {', '.join(taken)}")
    for _, layer in chosen:
        weight = layer.weight
        update = KroneckerUpdate(weight.shape, factors, rank=rank, alpha=alpha, dtype=weight.dtype,
                                 device=weight.device)
        parametrize.register_parametrization(layer, "weight", update)
    return [name for name, _ in chosen]


def kronecker_layer_names(module: nn.Module) -> list[str]:
    """Names of the layers of `module` that carry a KroneckerUpdate."""
    return [name for name, layer in module.named_modules() if kronecker_update_of(layer) is not None]


def merge_kronecker_updates(module: nn.Module) -> list[str]:
    """Replace every KroneckerUpdate parametrization in `module` by its value: plain weights W + dW (for export).
    Returns the merged layers' names; the weights keep their requires_grad."""
    names = []
    for name, layer in module.named_modules():
        if kronecker_update_of(layer) is None:
            continue
        if len(layer.parametrizations.weight) > 1:
            raise ValueError(f"{name}: its weight carries other parametrizations beside the Kronecker update; "
                             "remove them first")
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        names.append(name)
    return names


def load_plain_state_dict(module: nn.Module, plain_state: dict[str, torch.Tensor]) -> None:
    """Load a state dict of the module's plain layout (`<layer>.weight`) into a module whose layers carry
    KroneckerUpdates (`<layer>.parametrizations.weight.original`); every tensor except the updates' u, v must be
    given, and nothing else."""
    adapted = set(kronecker_layer_names(module))
    renamed = {}
    for key, value in plain_state.items():
        layer, _, leaf = key.rpartition(".")
        renamed[f"{layer}.parametrizations.weight.original" if leaf == "weight" and layer in adapted else key] = value
    missing, unexpected = module.load_state_dict(renamed, strict=False)
    missing = [key for key in missing if not key.endswith((".parametrizations.weight.0.u",
                                                            ".parametrizations.weight.0.v"))]
    if missing or unexpected:
        raise ValueError(f"state dict does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

"""FlexEControl's weight updates: `dW = (alpha / r) * sum_{i=1..n} H_i (kron) (u_i v_i^T)` on frozen layers
(arXiv 2405.04834; DESIGN.md, "FlexEControl").

The n small matrices H_i (n x n each) are one set of parameters, `SharedKroneckerFactors`, shared by every adapted
layer; each layer has its own rank-r factors u_i (out/n x r) and v_i (r x in'/n), v zero-initialised so that an
adapted layer starts as the original. A conv kernel [out, in, kh, kw] is treated as the matrix out x (in*kh*kw).

When out (or in') is not a multiple of n, the blocks are ceil(out/n) x ceil(in'/n): the Kronecker sum is formed at
the rounded-up size n*ceil(out/n) x n*ceil(in'/n) and its top-left out x in' block is the update (the last block row
and column are cut short).

An adapted layer stays an nn.Linear / nn.Conv2d (its class becomes the subclass KroneckerLinear / KroneckerConv2d,
whose forward adds the update's term; diffusers' attention code is untouched): it applies its frozen W as before and
adds dW x without ever forming dW. Since kron(H_i, u_i v_i^T) = kron(H_i, u_i) kron(I_n, v_i), the update is
dW = M D with M = (alpha/r) [kron(H_1, u_1) ... kron(H_n, u_n)] (out x n*n*r) and D = kron(I_n, v) (n*n*r x in'):
D applied to x is v applied to each of x's n input blocks (the n channel groups of a conv's input, folded into the
batch: one small conv with v as its kernel), M is one matrix product (a 1x1 conv). That needs the input blocks to
be whole input channels (in % n == 0 for a Linear; in_channels % n == 0 and groups == 1 for a conv); other layers
form their dW and apply it beside W. D x is recomputed in the backward pass (FactoredUpdate) rather than stored, so
what a layer keeps for backward is its input and the small factors, not a weight-sized tensor nor an n*n*r-channel
feature map. Measured at the FlexEControl bench's training size (bench/flexecontrol.py; 91 adapted layers of 64 to
256 channels, fp32 CPU), against forming W + dW in every layer: the branch keeps 30 MiB less for backward and its
adapted layers' forward and backward take 10% longer (the recomputation; kept without it: 13 MiB less, as fast).
peft's LoKr has per-layer factors only (it cannot share H across layers),
hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from datamodules.errors import raise_param_problems

LayerFilter = Callable[[str, nn.Module], bool]
ADAPTABLE_TYPES = (nn.Linear, nn.Conv2d)
UPDATE = "kronecker_update"  # an adapted layer's attribute holding its KroneckerUpdate
FACTOR_SUFFIXES = (f".{UPDATE}.u", f".{UPDATE}.v")  # how an adapted layer's u, v end in named_parameters()


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
    """One layer's update dW, from the shared H and this layer's u, v; `forward(x)` is dW's term of the layer's output.

    u: [n, ceil(out/n), r], v: [n, r, ceil(in'/n)] (in' = product of the weight's other dimensions). The shared
    factors are held by a plain reference, not registered, so H is one entry of state_dict() / parameters().
    `factored`: dW is applied as M D (module docstring) rather than formed; its layer's input blocks must be whole
    input channels (add_kronecker_updates decides).
    """

    def __init__(self, weight_shape: torch.Size | tuple[int, ...], factors: SharedKroneckerFactors, *, rank: int,
                 alpha: float, factored: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | None = None):
        super().__init__()
        raise_param_problems([*positive_int_problems(rank=rank), *alpha_problems(alpha)])
        if len(weight_shape) < 2:
            raise ValueError(f"a Kronecker update needs a weight with >= 2 dimensions, got shape {tuple(weight_shape)}")
        n = factors.n
        self.weight_shape = tuple(weight_shape)
        self.out_features, self.in_features = weight_shape[0], math.prod(weight_shape[1:])
        if factored and weight_shape[1] % n:
            raise ValueError(f"a factored update needs the weight's input dimension {weight_shape[1]} to be a "
                             f"multiple of n = {n}")
        self.rank, self.alpha, self.factored = rank, float(alpha), factored
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

    def mixing(self) -> torch.Tensor:
        """M [out, n*n*r]: M[p*out_blocks + a, (q, i, k)] = (alpha/r) H_i[p, q] u_i[a, k], so that dW = M D with
        D[(q, i, k), q'*in_blocks + c] = [q == q'] v_i[k, c]."""
        h = self.factors.matrices.to(self.u.dtype)
        n, out_blocks, rank = h.shape[0], self.u.shape[1], self.rank
        full = torch.einsum("ipq,iak->paqik", h, self.u).reshape(n * out_blocks, n * n * rank)
        return self.scale * full[:self.out_features]

    def down(self, x: torch.Tensor, v: torch.Tensor, conv: Callable | None) -> torch.Tensor:
        """D x: v applied to each of x's n input blocks, [..., n*n*r] for a Linear, [B, n*n*r, h, w] for a conv
        (channels in (q, i, k) order, the blocks folded into the batch for one conv with v as its kernel)."""
        n, rank = self.factors.n, self.rank
        rows = v.reshape(n * rank, -1)  # rows (i, k), one input block's columns
        if conv is None:  # Linear: x [..., in]
            return F.linear(x.reshape(*x.shape[:-1], n, self.in_features // n), rows).flatten(-2)
        batch, channels = x.shape[:2]
        kernel = rows.reshape(n * rank, channels // n, *self.weight_shape[2:])
        blocks = conv(x.reshape(batch * n, channels // n, *x.shape[2:]), kernel, None)  # [B*n, n*r, h, w]
        return blocks.reshape(batch, n * n * rank, *blocks.shape[2:])

    def forward(self, x: torch.Tensor, conv: Callable | None = None) -> torch.Tensor:
        """dW's term of the layer's output for its input x: x dW^T for a Linear (conv None), for a conv
        `conv(x, dW, None)` (the layer's own _conv_forward: its stride, padding, dilation, groups)."""
        if not torch.is_autocast_enabled(x.device.type):  # under autocast, its casts (no fp32 copy of a bf16 x kept)
            x = x.to(self.u.dtype)
        if not self.factored:
            delta = self.delta()
            return F.linear(x, delta) if conv is None else conv(x, delta, None)
        return FactoredUpdate.apply(x, self.v, self.mixing(), self, conv)

    def extra_repr(self) -> str:
        return (f"weight_shape={self.weight_shape}, rank={self.rank}, alpha={self.alpha}, "
                f"factored={self.factored}")


class FactoredUpdate(torch.autograd.Function):
    """M (D x) (KroneckerUpdate.down, then M: a product for a Linear, a 1x1 conv for a conv), keeping for backward
    only x, v and M: D x (n*n*r channels, as large as a narrow layer's input) is recomputed in backward, under the
    forward's autocast state (as torch.utils.checkpoint does), so mixed precision recomputes what it computed."""

    @staticmethod
    def forward(ctx, x, v, mixing, update: KroneckerUpdate, conv: Callable | None):
        ctx.save_for_backward(x, v, mixing)
        ctx.update, ctx.conv, ctx.device_type = update, conv, x.device.type
        ctx.autocast = (torch.is_autocast_enabled(ctx.device_type), torch.get_autocast_dtype(ctx.device_type))
        return mix(update.down(x, v, conv), mixing, conv)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, v, mixing = ctx.saved_tensors
        need_x, need_v, need_mixing = ctx.needs_input_grad[:3]
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            x_, v_ = x.detach().requires_grad_(need_x), v.detach().requires_grad_(need_v)
            down = ctx.update.down(x_, v_, ctx.conv)
        grad, mixed = grad.to(down.dtype), mixing.to(down.dtype)
        grad_mixing = None
        if ctx.conv is None:
            grad_down = grad @ mixed
            if need_mixing:
                grad_mixing = grad.reshape(-1, grad.shape[-1]).T @ down.detach().reshape(-1, down.shape[-1])
        else:
            grad_down = torch.einsum("bohw,oc->bchw", grad, mixed)
            if need_mixing:
                grad_mixing = torch.einsum("bohw,bchw->oc", grad, down.detach())
        wanted = [tensor for tensor, needed in ((x_, need_x), (v_, need_v)) if needed]
        grads = iter(torch.autograd.grad(down, wanted, grad_down) if wanted else ())
        grad_mixing = None if grad_mixing is None else grad_mixing.to(mixing.dtype)
        return (next(grads) if need_x else None), (next(grads) if need_v else None), grad_mixing, None, None


def mix(down: torch.Tensor, mixing: torch.Tensor, conv: Callable | None) -> torch.Tensor:
    """M applied to D x: over its last dimension (Linear) or its channels (conv)."""
    return F.linear(down, mixing) if conv is None else F.conv2d(down, mixing[:, :, None, None])


class KroneckerLinear(nn.Linear):
    """An nn.Linear with a KroneckerUpdate: x W^T + b + x dW^T (W frozen or not, dW never formed when factored)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out + getattr(self, UPDATE)(x).to(out.dtype)


class KroneckerConv2d(nn.Conv2d):
    """An nn.Conv2d with a KroneckerUpdate: conv(x, W) + b + conv(x, dW) (dW never formed when factored)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out + getattr(self, UPDATE)(x, self._conv_forward).to(out.dtype)


ADAPTED_CLASSES = {nn.Linear: KroneckerLinear, nn.Conv2d: KroneckerConv2d}


def positive_int_problems(**values) -> list[tuple[str, str]]:
    return [(name, f"must be an integer >= 1, got {value!r}") for name, value in values.items()
            if isinstance(value, bool) or not isinstance(value, int) or value < 1]


def alpha_problems(alpha) -> list[tuple[str, str]]:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        return [("alpha", f"must be a finite number, got {alpha!r}")]
    return []


def kronecker_update_of(layer: nn.Module) -> KroneckerUpdate | None:
    """The KroneckerUpdate of an adapted layer, or None."""
    update = getattr(layer, UPDATE, None) if isinstance(layer, tuple(ADAPTED_CLASSES.values())) else None
    return update if isinstance(update, KroneckerUpdate) else None


def can_be_factored(layer: nn.Module, n: int) -> bool:
    """Whether the layer's n input blocks are whole input channels (module docstring): its update is then applied
    factored, never formed."""
    if isinstance(layer, nn.Conv2d):
        return layer.groups == 1 and layer.in_channels % n == 0
    return layer.in_features % n == 0


def add_kronecker_updates(module: nn.Module, factors: SharedKroneckerFactors, *, rank: int, alpha: float,
                          include: LayerFilter | None = None) -> list[str]:
    """Give every nn.Linear and nn.Conv2d of `module` for which `include(name, layer)` is true (all of them when
    include is None) a KroneckerUpdate sharing `factors`; returns the adapted layers' names.

    The original weights are left as they are (frozen or not: freezing is the caller's choice). A layer already
    adapted, or of a subclass of nn.Linear / nn.Conv2d (whose own forward the update would replace), is refused.
    """
    raise_param_problems([*positive_int_problems(rank=rank), *alpha_problems(alpha)])
    if include is not None and not callable(include):
        raise ValueError(f"include must be a callable (name, layer) -> bool or None, got {include!r}")
    chosen = [(name, layer) for name, layer in module.named_modules()
              if isinstance(layer, ADAPTABLE_TYPES) and (include is None or include(name, layer))]
    taken = [name or "(the module itself)" for name, layer in chosen if kronecker_update_of(layer) is not None]
    if taken:
        raise ValueError(f"these layers already carry a Kronecker update: {', '.join(taken)}")
    other = [f"{name or '(the module itself)'} ({type(layer).__name__})" for name, layer in chosen
             if type(layer) not in ADAPTED_CLASSES]
    if other:
        raise ValueError(f"only plain nn.Linear / nn.Conv2d layers can be adapted, not subclasses: {', '.join(other)}")
    for _, layer in chosen:
        weight = layer.weight
        update = KroneckerUpdate(weight.shape, factors, rank=rank, alpha=alpha,
                                 factored=can_be_factored(layer, factors.n), dtype=weight.dtype, device=weight.device)
        layer.__class__ = ADAPTED_CLASSES[type(layer)]
        layer.add_module(UPDATE, update)
    return [name for name, _ in chosen]


def kronecker_layer_names(module: nn.Module) -> list[str]:
    """Names of the layers of `module` that carry a KroneckerUpdate."""
    return [name for name, layer in module.named_modules() if kronecker_update_of(layer) is not None]


def merge_kronecker_updates(module: nn.Module) -> list[str]:
    """Turn every adapted layer of `module` back into a plain nn.Linear / nn.Conv2d with weight W + dW (for export).
    Returns the merged layers' names; the weights keep their requires_grad."""
    names = []
    plain = {adapted: base for base, adapted in ADAPTED_CLASSES.items()}
    for name, layer in list(module.named_modules()):  # a list: merging removes the updates' submodules
        update = kronecker_update_of(layer)
        if update is None:
            continue
        with torch.no_grad():
            layer.weight.add_(update.delta().to(layer.weight.dtype))
        delattr(layer, UPDATE)
        layer.__class__ = plain[type(layer)]
        names.append(name)
    return names


def load_plain_state_dict(module: nn.Module, plain_state: dict[str, torch.Tensor]) -> None:
    """Load a state dict of the module's plain layout (no updates) into a module whose layers carry
    KroneckerUpdates; every tensor except the updates' u, v must be given, and nothing else."""
    missing, unexpected = module.load_state_dict(plain_state, strict=False)
    missing = [key for key in missing if not key.endswith(FACTOR_SUFFIXES)]
    if missing or unexpected:
        raise ValueError(f"state dict does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

"""Recording cross-attention probabilities of chosen text tokens, with gradients, in any diffusers model.

diffusers' default attention processor (scaled_dot_product_attention) never forms the attention probabilities.
Inside `record_cross_attention(model, layers, tokens)` the cross-attention layers asked for (module names or fnmatch
patterns of `Attention` modules that attend to the text, the `attn2` of SD's transformer blocks) run a processor that
computes them explicitly (`Attention.get_attention_scores`), returns the same output as the default processor and
keeps, per layer, the probabilities of the chosen tokens averaged over heads. Every other layer keeps its processor,
and every processor is put back on exit. The kept maps are part of the autograd graph: FlexEControl's
attention-supervision loss and Mojito's layout-guidance energy differentiate them.

Steering: `logit_bias` (optional) adds to the chosen tokens' attention logits before the softmax, per layer and per
forward: `logit_bias(layer, rows, positions)` returns a bias broadcastable to [rows, positions, K] (the K chosen
tokens; positions: the layer's image positions, row-major) or None for none this forward. It is what re-weighting
methods (Mojito's direction control: + inside a box, - outside) are made of; the recorder is the same processor, so
what it records is the biased attention.

Batches: the attention layer sees N rows -- the batch, 2B under classifier-free guidance ([uncond, cond], the
tokens' B rows repeated for each half), B * frames in a video UNet (pass `frames`: each sample's rows are repeated
for its frames, which diffusers folds into the batch sample-major). Maps have those N rows.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from datamodules.errors import did_you_mean


def cross_attention_layers(model: nn.Module) -> dict[str, Attention]:
    """The model's attention modules that attend to an encoder's states (the text), by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, Attention) and module.is_cross_attention}


def layer_size(latent_size: int | Sequence[int], sequence_length: int) -> tuple[int, int]:
    """(h, w) of a layer whose h * w = `sequence_length` positions come from a latent of `latent_size` (H, W) halved
    some number of times (rounding up, as a stride-2 convolution with padding 1 does)."""
    h, w = (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)
    while h * w > sequence_length and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != sequence_length:
        raise ValueError(f"{sequence_length} attention positions are not a halving of a {latent_size} latent")
    return h, w


class AttentionStore:
    """Per recorded layer, the latest forward's cross-attention probabilities of the chosen tokens, averaged over
    heads: `maps[layer]` is [N, K, seq] (N rows as the layer saw them, K chosen tokens, seq image positions)."""

    def __init__(self, layers: Sequence[str]):
        self.layers = tuple(layers)
        self.maps: dict[str, torch.Tensor] = {}

    def spatial(self, layer: str, latent_size: int | Sequence[int]) -> torch.Tensor:
        """`maps[layer]` as [N, K, h, w] for a latent of `latent_size` (H, W); h, w: that layer's resolution."""
        if layer not in self.maps:
            raise KeyError(f"no maps recorded for {layer!r}; recorded: {', '.join(self.maps) or 'none yet'}")
        maps = self.maps[layer]
        h, w = layer_size(latent_size, maps.shape[-1])
        return maps.reshape(*maps.shape[:2], h, w)

    def mean_spatial(self, latent_size: int | Sequence[int], size: int | Sequence[int] | None = None,
                     layers: Sequence[str] | None = None) -> torch.Tensor:
        """The average over `layers` (default: all recorded) of their spatial maps, each resized (bilinear) to `size`
        (default: the latent size), [N, K, *size]."""
        names = list(layers) if layers is not None else list(self.maps)
        if not names:
            raise ValueError("no maps recorded yet: run the model inside record_cross_attention first")
        target = latent_size if size is None else size
        target = (target, target) if isinstance(target, int) else tuple(target)
        resized = [F.interpolate(self.spatial(name, latent_size), size=target, mode="bilinear", align_corners=False)
                   for name in names]
        return torch.stack(resized).mean(dim=0)

    def clear(self) -> None:
        self.maps.clear()


def _token_rows(tokens: torch.Tensor, frames: int, rows: int, layer: str) -> torch.Tensor:
    """The chosen tokens for each of the `rows` the layer sees: per frame, then per guidance half."""
    per_frame = tokens.repeat_interleave(frames, dim=0) if frames > 1 else tokens
    if rows % per_frame.shape[0]:
        raise ValueError(f"{layer}: the layer sees {rows} rows, not a multiple of the {tokens.shape[0]} token rows "
                         f"x {frames} frames")
    return per_frame.repeat(rows // per_frame.shape[0], 1)


LogitBias = Callable[[str, int, int], "torch.Tensor | None"]


class CrossAttentionRecorder:
    """An attention processor (diffusers' protocol) with the default processor's output that forms the attention
    probabilities and keeps those of the chosen tokens, averaged over heads, in `store.maps[name]`; with a
    `logit_bias`, the chosen tokens' logits are shifted first (module docstring)."""

    def __init__(self, store: AttentionStore, name: str, tokens: torch.Tensor, frames: int = 1,
                 logit_bias: LogitBias | None = None):
        self.store, self.name, self.tokens, self.frames = store, name, tokens, frames
        self.logit_bias = logit_bias
        self._checked_length: int | None = None

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # [B * heads, seq, L], batch-major as Attention.head_to_batch_dim lays it out
        query, key, value = (x.reshape(batch_size * attn.heads, -1, head_dim) for x in (query, key, value))
        self._check_length(key.shape[1])
        if self.logit_bias is not None:
            attention_mask = self._biased_mask(attention_mask, batch_size, query.shape[1], key.shape[1], attn.heads,
                                               query)
        probabilities = attn.get_attention_scores(query, key, attention_mask)
        self._record(probabilities.view(batch_size, attn.heads, *probabilities.shape[1:]).mean(dim=1))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _check_length(self, length: int) -> None:
        if self._checked_length != length:  # once per layer: the check reads the tokens back from the device
            largest = int(self.tokens.max())
            if largest >= length:
                raise ValueError(f"{self.name}: token index {largest} is past the text's {length} tokens")
            self._checked_length = length

    def _biased_mask(self, attention_mask: torch.Tensor | None, rows: int, positions: int, length: int, heads: int,
                     query: torch.Tensor) -> torch.Tensor | None:
        """The additive mask get_attention_scores takes, [rows * heads, positions, L], with `logit_bias` added at the
        chosen tokens' columns (the padding mask, if any, kept)."""
        bias = self.logit_bias(self.name, rows, positions)
        if bias is None:
            return attention_mask
        tokens = _token_rows(self.tokens.to(query.device), self.frames, rows, self.name)
        chosen = tokens[:, None, :].expand(rows, positions, tokens.shape[1])
        full = torch.zeros(rows, positions, length, dtype=query.dtype, device=query.device)
        full.scatter_add_(2, chosen, torch.broadcast_to(bias.to(device=query.device, dtype=query.dtype), chosen.shape))
        full = full.repeat_interleave(heads, dim=0)  # row b, head h at b * heads + h, as the query is laid out
        return full if attention_mask is None else attention_mask + full

    def _record(self, probabilities: torch.Tensor) -> None:
        """Keep [N, K, seq] of the head-averaged probabilities [N, seq, L] at the chosen token indices."""
        rows, positions, _ = probabilities.shape
        tokens = _token_rows(self.tokens.to(probabilities.device), self.frames, rows, self.name)
        chosen = probabilities.gather(2, tokens[:, None, :].expand(rows, positions, tokens.shape[1]))
        self.store.maps[self.name] = chosen.transpose(1, 2)


def matching_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The cross-attention layers of `model` that `layers` (names or fnmatch patterns) name, in model order; a
    ValueError for any pattern matching none, listing the layers there are."""
    if isinstance(layers, str):
        layers = [layers]
    available = list(cross_attention_layers(model))
    if not layers:
        raise ValueError("no layers asked for; cross-attention layers: " + ", ".join(available))
    unmatched = [p for p in layers if not any(fnmatch.fnmatchcase(name, p) for name in available)]
    if unmatched:
        hints = "; ".join(f"'{p}' matches none{did_you_mean(p, available)}" for p in unmatched)
        raise ValueError(f"{hints}. Cross-attention layers of {type(model).__name__}: "
                         + (", ".join(available) or "none"))
    return [name for name in available if any(fnmatch.fnmatchcase(name, p) for p in layers)]


@contextmanager
def record_cross_attention(model: nn.Module, layers: Sequence[str], tokens: torch.Tensor, *, frames: int = 1,
                           logit_bias: LogitBias | None = None) -> Iterator[AttentionStore]:
    """Inside the block, forwards of `model` record the cross-attention maps of `tokens` [B, K] (indices into the
    text sequence, per sample) at the named `layers` into the yielded AttentionStore. `frames`: frames per sample
    in a video UNet. `logit_bias`: shifts those tokens' logits first (module docstring). With gradient
    checkpointing, run the backward pass inside the block too (the recomputed forward must use the same
    processors)."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError("tokens must be an integer tensor [B, K] of indices into the text sequence")
    if tokens.numel() == 0:
        raise ValueError("tokens is empty: choose at least one token per sample")
    if int(tokens.min()) < 0:
        raise ValueError("token indices must be >= 0")
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    names = matching_layers(model, layers)
    modules = cross_attention_layers(model)
    store = AttentionStore(names)
    previous = {name: modules[name].processor for name in names}
    try:
        for name in names:
            modules[name].set_processor(CrossAttentionRecorder(store, name, tokens, frames, logit_bias))
        yield store
    finally:
        for name, processor in previous.items():
            modules[name].set_processor(processor)


def phrase_token_indices(tokenizer: Any, prompt: str, phrase: str) -> list[int]:
    """Positions of `phrase`'s tokens in `prompt`'s token sequence (start token at 0, as the text encoder sees it):
    the first occurrence. A ValueError when the prompt does not contain the phrase's tokens."""
    ids = list(tokenizer(prompt)["input_ids"])
    wanted = list(tokenizer(phrase, add_special_tokens=False)["input_ids"])
    if not wanted:
        raise ValueError(f"phrase {phrase!r} has no tokens")
    for start in range(len(ids) - len(wanted) + 1):
        if ids[start:start + len(wanted)] == wanted:
            return list(range(start, start + len(wanted)))
    raise ValueError(f"prompt {prompt!r} does not contain the tokens of {phrase!r}")

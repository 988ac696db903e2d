"""Learned prompt contexts (CoOp), optionally shifted per image by a meta-net (CoCoOp, and CPL on top of it).

A class's prompt is `[SOS] context... class name . [EOS]` (class token at the end), `[SOS] context[:n/2] class name
context[n/2:] . [EOS]` (middle) or `[SOS] class name context... . [EOS]` (front). The context positions hold
placeholder ids whose embeddings FrozenCLIP replaces with the learned vectors.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_modules.frozen_clip import ENCODE_CHUNK, FrozenCLIP

Position = Literal["end", "middle", "front"]
TOKEN_CACHE_SIZE = 200_000


class PromptLearner(nn.Module):
    def __init__(self, clip: FrozenCLIP, class_names: list[str], n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                 class_token_position: Position = "end", class_specific: bool = False, meta_net: bool = False,
                 seed: int = 0):
        super().__init__()
        if class_token_position not in ("end", "middle", "front"):
            raise ValueError(f"class_token_position must be end, middle or front, got {class_token_position!r}")
        self.clip = [clip]  # a list: the frozen model is not this module's parameter or state
        self.position, self.class_specific = class_token_position, class_specific
        d = clip.token_dim
        if ctx_init:
            init_ids = clip.token_ids(ctx_init)
            if n_ctx not in (None, len(init_ids)):
                raise ValueError(f"n_ctx={n_ctx} but ctx_init {ctx_init!r} has {len(init_ids)} tokens; "
                                 f"set n_ctx to {len(init_ids)} or change the phrase")
            n_ctx = len(init_ids)
            with torch.no_grad():
                init = clip.embed_tokens(torch.tensor(init_ids)).detach().clone().float()
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
            init = torch.randn(n_ctx, d, generator=torch.Generator().manual_seed(seed)) * 0.02
        self.n_ctx = n_ctx
        self.n_classes_trained = len(class_names)
        if class_specific:
            init = init.unsqueeze(0).repeat(len(class_names), 1, 1)
        self.ctx = nn.Parameter(init)
        self.meta_net = None
        self._token_cache: dict[str, list[int]] = {}
        if meta_net:
            vis, hidden = clip.embed_dim, max(clip.embed_dim // 16, 1)
            self.meta_net = nn.Sequential(nn.Linear(vis, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d))
        self.set_classes(class_names)

    def set_classes(self, class_names: list[str], unique: bool = True) -> None:
        """Build the prompts' token ids for these classes (e.g. the new classes at evaluation). Texts that are not
        classes of one list (VQA's question-answer prompts of a whole batch) may repeat: `unique=False`."""
        if unique:
            check_class_names(class_names)
        elif not class_names or not all(isinstance(n, str) and n.strip() for n in class_names):
            raise ValueError("prompt texts must be non-empty strings")
        if self.class_specific and len(class_names) != self.n_classes_trained:
            raise ValueError("class-specific contexts belong to the training classes: they cannot prompt "
                             f"{len(class_names)} other classes (use class_specific: false for base-to-new)")
        clip = self.clip[0]
        rows, ctx_cols = [], []
        half = self.n_ctx // 2
        period = clip.token_ids(".")
        for name in class_names:
            name_ids = self._token_ids(name)
            ctx = [None] * self.n_ctx
            if self.position == "end":
                body = ctx + name_ids
            elif self.position == "front":
                body = name_ids + ctx
            else:
                body = ctx[:half] + name_ids + ctx[half:]
            row = [clip.bos_id, *body, *period][: clip.max_length - 1] + [clip.eos_id]
            ctx_cols.append([i for i, t in enumerate(row) if t is None])
            rows.append([clip.pad_id if t is None else t for t in row])
        length = max(map(len, rows))
        ids = torch.tensor([r + [clip.pad_id] * (length - len(r)) for r in rows])
        eos = torch.tensor([len(r) - 1 for r in rows])
        cols = torch.tensor(ctx_cols)
        if cols.shape[1] != self.n_ctx:
            raise ValueError(f"a class name is too long for the text encoder's {clip.max_length} positions")
        device = self.ctx.device
        self.class_names = list(class_names)
        self.input_ids, self.eos_positions, self.ctx_columns = ids.to(device), eos.to(device), cols.to(device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[torch.arange(len(rows)).unsqueeze(1), cols] = True
        self.ctx_mask = mask.to(device)

    def _token_ids(self, text: str) -> list[int]:
        """Tokenised once: retrieval and VQA prompt the same captions and questions again every epoch."""
        ids = self._token_cache.get(text)
        if ids is None:
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            ids = self._token_cache[text] = self.clip[0].token_ids(text.replace("_", " "))
        return ids

    def _to(self, device: torch.device) -> None:
        if self.input_ids.device != device:
            self.input_ids, self.eos_positions = self.input_ids.to(device), self.eos_positions.to(device)
            self.ctx_columns, self.ctx_mask = self.ctx_columns.to(device), self.ctx_mask.to(device)

    def _scatter(self, ctx: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """[N, n_ctx, d] context vectors -> [N, L, d] token values, placed at `columns` [N, n_ctx]."""
        n, length = columns.shape[0], self.input_ids.shape[1]
        rows = torch.arange(n, device=ctx.device).unsqueeze(1).expand_as(columns)
        return ctx.new_zeros(n, length, ctx.shape[-1]).index_put((rows, columns), ctx)

    def forward(self, image_features: torch.Tensor | None = None, rows_per_image: int | None = None) -> torch.Tensor:
        """Text features (unnormalised). Every image against every prompt: [n_cls, D], or [B, n_cls, D] with a
        meta-net and `image_features` [B, D]. With `rows_per_image` R the prompts are B blocks of R, block b
        belonging to image b only (VQA: each question's answers): [B, R, D]."""
        self._to(self.ctx.device)
        n_rows = self.input_ids.shape[0]
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(n_rows, -1, -1)
        if rows_per_image is not None:
            if image_features is None or image_features.shape[0] * rows_per_image != n_rows:
                raise ValueError(f"{n_rows} prompts are not blocks of {rows_per_image} for the images given")
            b = image_features.shape[0]
            if self.meta_net is not None:
                bias = self.meta_net(image_features / image_features.norm(dim=-1, keepdim=True))  # [B, d]
                ctx = ctx + bias.repeat_interleave(rows_per_image, dim=0)[:, None, :]
            return self._encode(ctx, self.input_ids, self.eos_positions, self.ctx_mask, self.ctx_columns).view(
                b, rows_per_image, -1)
        if self.meta_net is None:
            return self._encode(ctx, self.input_ids, self.eos_positions, self.ctx_mask, self.ctx_columns)
        if image_features is None:
            raise ValueError("a prompt learner with a meta-net needs the image features")
        bias = self.meta_net(image_features / image_features.norm(dim=-1, keepdim=True))  # [B, d]
        b = bias.shape[0]
        shifted = (ctx.unsqueeze(0) + bias[:, None, None, :]).flatten(0, 1)  # [B * n_cls, n_ctx, d]
        feats = self._encode(shifted, self.input_ids.repeat(b, 1), self.eos_positions.repeat(b),
                             self.ctx_mask.repeat(b, 1), self.ctx_columns.repeat(b, 1))
        return feats.view(b, n_rows, -1)

    def _encode(self, ctx: torch.Tensor, ids: torch.Tensor, eos: torch.Tensor, mask: torch.Tensor,
                columns: torch.Tensor) -> torch.Tensor:
        clip = self.clip[0]
        if torch.is_grad_enabled() or ids.shape[0] <= ENCODE_CHUNK:
            return clip.encode_prompts(ids, eos, mask, self._scatter(ctx, columns))
        return torch.cat([clip.encode_prompts(ids[i:i + ENCODE_CHUNK], eos[i:i + ENCODE_CHUNK],
                                              mask[i:i + ENCODE_CHUNK],
                                              self._scatter(ctx[i:i + ENCODE_CHUNK], columns[i:i + ENCODE_CHUNK]))
                          for i in range(0, ids.shape[0], ENCODE_CHUNK)])


def check_class_names(class_names: list[str]) -> None:
    if not class_names:
        raise ValueError("the class list is empty")
    seen: set[str] = set()
    for name in class_names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
        if name in seen:
            raise ValueError(f"class name {name!r} appears more than once")
        seen.add(name)

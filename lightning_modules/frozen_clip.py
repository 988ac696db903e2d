"""A frozen CLIP: a transformers `CLIPModel` plus its tokenizer, shared by the methods and the benchmark scorer.

CoOp, CoCoOp and CPL (lightning_modules/cpl) learn prompts for it. Prompts enter the text encoder as token embeddings: the prompt learner's context vectors replace the embeddings of
placeholder tokens through a forward hook on the token-embedding layer, so the encoder runs through transformers'
own forward (causal mask, position embeddings, layer norms) whatever its version. The text feature is read at each
prompt's end-of-text position and projected, as CLIP does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from datamodules.errors import ParamError
from datamodules.param_types import ModelSource

ENCODE_CHUNK = 4096  # texts per text-encoder pass without gradients (evaluation over thousands of captions)


def _pooled(output: Any) -> torch.Tensor:
    """transformers 4.x returns the projected features, 5.x an output object holding them as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class FrozenCLIP(nn.Module):
    """`pretrained`: HF id or local directory (model + tokenizer). `config`: a CLIPConfig dict for a randomly
    initialised model of that shape (tests, benchmarks), with `tokenizer` naming where its tokenizer is."""

    def __init__(self, pretrained: Annotated[str | None, ModelSource()] = None, config: dict[str, Any] | None = None,
                 tokenizer: Annotated[str | None, ModelSource()] = None):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ParamError([("pretrained", "give exactly one of pretrained (HF id or local path) or config")])
        if pretrained is None and tokenizer is None:
            raise ParamError([("tokenizer", "a randomly initialised CLIP still needs a tokenizer (HF id or path)")])
        if pretrained is not None:
            self.model = CLIPModel.from_pretrained(pretrained)
        else:
            self.model = CLIPModel(CLIPConfig(**config))
        tokenizer_source = tokenizer or pretrained
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        self.model.requires_grad_(False)
        self.model.eval()
        self._replacement: tuple[torch.Tensor, torch.Tensor] | None = None
        self.model.text_model.embeddings.token_embedding.register_forward_hook(self._replace_embeddings)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        super().train(mode)
        self.model.eval()  # frozen: dropout and the like stay off whatever Lightning sets
        return self

    # -- sizes --------------------------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def token_dim(self) -> int:
        return self.model.text_model.embeddings.token_embedding.embedding_dim

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    @property
    def max_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    # -- tokens -------------------------------------------------------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        """Ids of `text` without start/end tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings.token_embedding.weight[ids]

    # -- features -----------------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    def encode_text_ids(self, input_ids: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        hidden = self.model.text_model(input_ids=input_ids).last_hidden_state  # after the final layer norm
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_positions]
        return self.model.text_projection(pooled)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Features of plain texts (zero-shot prompts); without gradients in passes of at most ENCODE_CHUNK texts."""
        if len(texts) > ENCODE_CHUNK and not torch.is_grad_enabled():
            return torch.cat([self.encode_texts(texts[i:i + ENCODE_CHUNK]) for i in range(0, len(texts), ENCODE_CHUNK)])
        rows = [[self.bos_id, *self.token_ids(t)[: self.max_length - 2], self.eos_id] for t in texts]
        length = max(map(len, rows))
        ids = torch.tensor([r + [self.pad_id] * (length - len(r)) for r in rows],
                           device=self.model.logit_scale.device)
        eos = torch.tensor([len(r) - 1 for r in rows], device=ids.device)
        return self.encode_text_ids(ids, eos)

    @contextmanager
    def replaced_embeddings(self, mask: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
        """Inside the block, token embeddings where `mask` [N, L] is true are `values` [N, L, d] instead."""
        self._replacement = (mask, values)
        try:
            yield
        finally:
            self._replacement = None

    def _replace_embeddings(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._replacement is None:
            return None
        mask, values = self._replacement
        return torch.where(mask.unsqueeze(-1), values.to(output.dtype), output)

    def encode_prompts(self, input_ids: torch.Tensor, eos_positions: torch.Tensor, context_mask: torch.Tensor,
                       context_values: torch.Tensor) -> torch.Tensor:
        """Text features of prompts whose placeholder tokens (`context_mask`) carry learned vectors."""
        with self.replaced_embeddings(context_mask, context_values):
            return self.encode_text_ids(input_ids, eos_positions)

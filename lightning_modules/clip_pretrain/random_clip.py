"""A tiny CLIP with random weights, built from a config with the project's word-level tokenizer and saved with
save_pretrained: a stand-in where a test or a tiny config needs a CLIP's interfaces and shapes, not its knowledge
(ensure_tiny_clip in cache.py trains one that knows the synthetic shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from lightning_modules.clip_pretrain.tokenizer import build_tokenizer, save_tokenizer

WORDS = ("a photo of an the red green blue yellow circle square triangle star shape on background x "
         "cat dog car bird plane ship").split()


def write_tokenizer(directory: Path, words: Sequence[str] = WORDS) -> CLIPTokenizer:
    """The word-level CLIP tokenizer over `words` (tokenizer.py), saved to `directory`."""
    tokenizer = build_tokenizer(words)
    save_tokenizer(tokenizer, directory)
    return tokenizer


def write_random_clip(directory: Path, image_size: int = 16, seed: int = 0) -> Path:
    """A 2-layer, 32-wide CLIP (16-d projection, 8-pixel patches) and its tokenizer in `directory`; the same seed
    gives the same weights."""
    import torch

    tokenizer = write_tokenizer(directory)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    return Path(directory)


def write_scoring_clip(directory: Path, image_size: int = 16, seed: int = 0) -> Path:
    """write_random_clip plus its CLIPProcessor (what lightning_modules/clip_similarity.py loads), with weights set so
    that CLIPScore is positive and differs between inputs: a random CLIP's cosines scatter around 0, which CLIPScore
    clamps to 0; a bias of 1 on both final layer norms and one shared projection give every embedding a common
    positive direction."""
    import torch
    from transformers import CLIPImageProcessor, CLIPProcessor

    write_random_clip(directory, image_size=image_size, seed=seed)
    clip = CLIPModel.from_pretrained(directory)
    with torch.no_grad():
        clip.vision_model.post_layernorm.bias.fill_(1.0)
        clip.text_model.final_layer_norm.bias.fill_(1.0)
        clip.text_projection.weight.copy_(clip.visual_projection.weight)
    clip.save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(directory)).save_pretrained(
        directory)
    return Path(directory)

"""A tiny CLIP (random weights, config-built) and a word-level CLIP tokenizer, saved locally for tests."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from lightning_modules.clip_pretrain.tokenizer import build_tokenizer, save_tokenizer

WORDS = ("a photo of an the red green blue yellow circle square triangle star shape on background x "
         "cat dog car bird plane ship").split()


def write_tokenizer(directory: Path, words: list[str] = WORDS) -> CLIPTokenizer:
    """The project's word-level CLIP tokenizer (lightning_modules/clip_pretrain/tokenizer.py), saved to `directory`."""
    tokenizer = build_tokenizer(words)
    save_tokenizer(tokenizer, directory)
    return tokenizer


def write_tiny_clip(directory: Path, image_size: int = 16, seed: int = 0) -> Path:
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
    return directory

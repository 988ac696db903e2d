"""A tiny CLIP (random weights, config-built) and a word-level CLIP tokenizer, saved locally for tests."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

WORDS = ("a photo of an the red green blue yellow circle square triangle star shape on background x . , "
         "cat dog car bird plane ship").split()


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE maps bytes to (the GPT-2/CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def write_tokenizer(directory: Path, words: tuple[str, ...] | list[str] = WORDS) -> CLIPTokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for symbol in _byte_symbols():
            vocab.setdefault(symbol + suffix, len(vocab))
    merges: list[str] = []
    for word in words:  # merge each word left to right into one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokenizer.save_pretrained(directory)
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

"""Tiny random zero-shot detectors built from configs and saved locally, as the real ones are loaded: OWL-ViT and
OWLv2 (CLIP towers, the project's word-level CLIP tokenizer) and Grounding DINO (Swin + BERT towers)."""

from __future__ import annotations

from pathlib import Path

import torch

DETECTOR_WORDS = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "man", "horse", "dog",
                  "cat")


def write_tiny_owl(directory: Path, version: int = 1, image_size: int = 32, seed: int = 0) -> Path:
    """A 1-layer, 32-wide OWL-ViT (version 1) or OWLv2 (version 2) with 8-pixel patches and its processor."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTProcessor, Owlv2Config, \
        Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    from lightning_modules.clip_pretrain.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    towers = dict(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": tokenizer.model_max_length,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=32)  # the class head compares image and query embeddings of the towers' width
    torch.manual_seed(seed)
    size = {"height": image_size, "width": image_size}
    if version == 1:
        model = OwlViTForObjectDetection(OwlViTConfig(**towers))
        processor = OwlViTProcessor(image_processor=OwlViTImageProcessorPil(size=size, crop_size=size),
                                    tokenizer=tokenizer)
    else:
        model = Owlv2ForObjectDetection(Owlv2Config(**towers))
        processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size=size), tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


def write_tiny_grounding_dino(directory: Path, seed: int = 0) -> Path:
    """A Grounding DINO with a 2-stage 16-wide Swin, a 1-layer BERT, 32-wide 1+2-layer transformer, 8 queries."""
    from transformers import BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection, \
        GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *DETECTOR_WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    config = GroundingDinoConfig(
        backbone_config={"model_type": "swin", "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1],
                         "window_size": 4, "image_size": 32, "patch_size": 4, "out_indices": [1, 2]},
        text_config={"model_type": "bert", "vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64},
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8, num_feature_levels=2,
        encoder_n_points=1, decoder_n_points=1, max_text_len=32, use_timm_backbone=False,
        use_pretrained_backbone=False)  # d_model: a multiple of 32 (GroupNorm); 2 decoder layers (tied box heads)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(directory)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return Path(directory)

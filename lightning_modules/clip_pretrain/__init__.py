"""A tiny CLIP pretrained by the project on synthetic shapes (contrastive image-caption training), for demos and
tests that need a CLIP that has learned something, without a model hub.

Read in this order: tokenizer.py (a word-level CLIP tokenizer built from the caption words), data.py (synthetic-
shapes shards as captioned images), module.py (TinyCLIPPretrain: CLIPModel, contrastive loss, zero-shot validation,
save_pretrained), cache.py (ensure_tiny_clip: data, training and a cache keyed by the settings). random_clip.py
writes an untrained one of the same kind, for tests and tiny configs that need a CLIP's shapes, not its knowledge.
"""

from lightning_modules.clip_pretrain.cache import ensure_tiny_clip
from lightning_modules.clip_pretrain.data import ShapeCaptionData, caption
from lightning_modules.clip_pretrain.module import TinyCLIPPretrain, contrastive_loss
from lightning_modules.clip_pretrain.tokenizer import VOCABULARY, build_tokenizer, save_tokenizer

__all__ = ["TinyCLIPPretrain", "ShapeCaptionData", "ensure_tiny_clip", "build_tokenizer", "save_tokenizer",
           "contrastive_loss", "caption", "VOCABULARY"]

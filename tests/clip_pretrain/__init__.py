"""Tests of lightning_modules/clip_pretrain: the demo's tiny CLIP."""

"""CPL (counterfactual prompt learning for CLIP), with CoOp and CoCoOp as variants of the same module.

Read in this order: lightning_modules/frozen_clip.py (the frozen CLIP and how prompts enter it, shared with the
benchmark scorer), prompt_learner (learned contexts and the CoCoOp meta-net), counterfactual (CPL's counterfactual
search and loss terms), negatives (BERTScore-similar texts), module (the LightningModule and its three tasks), data
(classification, retrieval and VQA shards as CLIP inputs), benchmark (the summary table), inference (a trained module
rebuilt from its checkpoint, and `CPLScorer`, which scores MMWorld/VLM4D options with it through
lightning_modules/clip_scorer.py), synthetic (the synthetic tasks, and `tiny_inputs` for configs/cpl/tiny.yaml),
demo (`make demo`).
"""

from lightning_modules.cpl.module import CPLModule

__all__ = ["CPLModule"]

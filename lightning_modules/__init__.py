"""LightningModules: one sub-package per method (cpl/, flexecontrol/, mojito/, ...), each holding everything specific
to it, and the building blocks methods share beside them (frozen_clip.py, clip_scorer.py, clip_similarity.py,
responders.py), which know no method."""

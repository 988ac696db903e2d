"""Shard writers: one module per generic shard kind, each a Python function that writes a dataset and returns its
index (raising datamodules.errors.UsageError, with nothing half-written, on bad input), and its `KIND` record for
launch/make_shards.py. What they share is in common.py; a method's own kinds live in its folder
(lightning_modules/<method>/shards.py).
"""

from datamodules.writers import captions, classification, retrieval, synthetic_shapes, video, vqa

GENERIC_KINDS = (synthetic_shapes.KIND, classification.KIND, captions.KIND, retrieval.KIND, vqa.KIND, video.KIND)

"""Mojito (text-to-video with motion-intensity and motion-direction control, arXiv 2412.08948; DESIGN.md, "Mojito").

So far this folder holds only its shard kind: shards.py, synthetic-motion (clips of a shape moving at a random
speed, with per-frame boxes and motion intensity). The method itself comes later.
"""

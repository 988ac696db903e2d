"""FlexEControl (multi-condition controllable text-to-image, arXiv 2405.04834; DESIGN.md, "FlexEControl").

So far this folder holds only its shard kind: shards.py, synthetic-control (synthetic shapes with canny, segmentation
and depth-like condition maps). The method itself comes later.
"""

"""ComCLIP (training-free compositional image-text matching, arXiv 2211.13854; DESIGN.md, "ComCLIP").

- parsing.py: captions into a subject, a relation and an object (entities with their attribute words), by pluggable
  parsers (the data's triplets, a cached JSON of parses, the project's rules, a local instruct LM) chained in order;
- grounding.py: entity boxes from a zero-shot object detector (OWL-ViT, OWLv2, Grounding DINO) or from the data, and
  the blacked-out sub-images;
- fusion.py: the sub-images' CLIP embeddings weighted by their match to their phrases, added to the image's, and the
  fused score beside plain CLIP's (ComCLIPScorer).

The LightningModule, data, metrics, shard kinds and demo are the lead's (module.py, data.py and the rest).
"""

"""ComCLIP (training-free compositional image-text matching, arXiv 2211.13854; DESIGN.md, "ComCLIP").

Read in this order:
- parsing.py: captions into a subject, a relation and an object (entities with their attribute words), by pluggable
  parsers (the data's triplets, a cached JSON of parses, the project's rules, a local instruct LM) chained in order;
- grounding.py: entity boxes from a zero-shot object detector (OWL-ViT, OWLv2, Grounding DINO) or from the data, and
  the blacked-out sub-images;
- fusion.py: the sub-images' CLIP embeddings weighted by their match to their phrases, added to the image's, and the
  fused score beside plain CLIP's (ComCLIPScorer);
- data.py: test items from shards (matching items, retrieval images); module.py: the LightningModule run by
  Lightning's test loop (`launch/evaluate.py test`), rank-sharded and resumable; metrics.py: Winoground, SVO-Probes /
  ComVG and re-ranked retrieval scores;
- shards.py: make_shards kinds (winoground, svo-probes, comvg, synthetic-compositional); synthetic.py: the synthetic
  compositional task; demo.py: ComCLIP against CLIP on it with the tiny CLIP (`make demo-comclip`).
"""

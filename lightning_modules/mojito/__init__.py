"""Mojito (text-to-video with motion-intensity and motion-direction control, arXiv 2412.08948; DESIGN.md, "Mojito").

- backbone.py: the video UNet (SD-1.x + MotionAdapter, or a UNetMotionModel / UNet3DConditionModel) and what of it
  trains;
- intensity.py: the Motion Intensity Modulator (a level through the time embedding) and intensity guidance;
- direction.py: training-free direction control (boxes, the attention energy, gradient and reweight modes);
- module.py: the LightningModule (training, generation with both controls);
- data.py: video-caption shards with motion levels; shards.py: the synthetic-motion shard kind;
- evaluation.py: intensity and trajectory fidelity, CLIP frame similarity, the MotionEvaluator callback;
- responder.py: answering video benchmark questions as a diffusion classifier (BenchmarkValidation);
- inference.py: a checkpoint rebuilt for launch/sample.py; cache.py, demo.py, synthetic.py: the demo's pretrained
  base, the demo, the tiny run's inputs.
"""

from lightning_modules.mojito.module import MojitoModule

__all__ = ["MojitoModule"]

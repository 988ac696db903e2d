"""Mojito (text-to-video with motion-intensity and motion-direction control, arXiv 2412.08948; DESIGN.md, "Mojito").

- backbone.py: the video UNet (SD-1.x + MotionAdapter, or a UNetMotionModel / UNet3DConditionModel) and what of it
  trains;
- intensity.py: the Motion Intensity Modulator (a level through the time embedding) and intensity guidance;
- module.py: the LightningModule (training, generation);
- responder.py: benchmark questions answered as a diffusion classifier (the option of lowest denoising error);
- data.py: video-caption shards with motion levels;
- shards.py: the synthetic-motion shard kind; synthetic.py: the tiny run's inputs.
"""

from lightning_modules.mojito.module import MojitoModule

__all__ = ["MojitoModule"]

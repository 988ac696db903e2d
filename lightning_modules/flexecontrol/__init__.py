"""FlexEControl (multi-condition controllable text-to-image with shared Kronecker-decomposed weights, arXiv
2405.04834; DESIGN.md "FlexEControl"), with Uni-ControlNet and ControlNet as variants of the same module.

Read in this order: lightning_modules/diffusion (the shared diffusion core: base model parts, objective, attention
recording, denoising loop), kronecker (the weight updates whose small factors every layer shares), branch (the frozen
copy of the UNet's encoder + mid with those updates, per-type condition encoders, zero-convs), uni_controlnet (the
Uni-ControlNet local adapter baseline), controlnet (the stock diffusers ControlNet baseline), conditions (condition
inputs of a batch, condition dropout, regions), data (control shards as inputs), module (the LightningModule and its
losses, sampling), shards (the synthetic-control shard kind), synthetic (`tiny_inputs` for configs/flexecontrol/tiny.yaml).
"""

__all__ = ["FlexEControlModule"]


def __getattr__(name: str):
    # imported when asked for: make_shards.py reads shards.py without loading diffusers and the models
    if name == "FlexEControlModule":
        from lightning_modules.flexecontrol.module import FlexEControlModule

        return FlexEControlModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

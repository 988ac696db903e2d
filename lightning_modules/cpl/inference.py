"""A trained CPL / CoOp / CoCoOp module rebuilt from its Lightning checkpoint, for inference (benchmarks).

The checkpoint holds the module's hyper-parameters (among them `clip`, where the frozen CLIP comes from) and only the
learned weights (prompts.*). The prompt learner is normally built in `setup` from the training data's classes; here
it is built from the hyper-parameters alone, so no data module (and no BERTScore negatives) is needed, and the
learned weights are then loaded strictly: a checkpoint without them is an error, never a silently untrained model.

`CPLScorer` is the benchmark responder of such a checkpoint: lightning_modules/clip_scorer.py's multiple choice by
CLIP similarity, with the option texts encoded through the learned prompts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Mapping

import torch

from datamodules.errors import raise_param_problems
from datamodules.param_types import ModelSource
from lightning_modules.clip_scorer import DEFAULT_TEMPLATE, ClipScorer, default_device
from lightning_modules.cpl.module import CPLModule

PLACEHOLDER_CLASS = "object"  # the learner's first classes; a scorer prompts its own texts


def load_for_inference(checkpoint_path: str | os.PathLike, clip: dict[str, Any] | None = None,
                       map_location: str | torch.device = "cpu") -> CPLModule:
    """The module of a `CPLModule` checkpoint in eval mode, with its learned prompt learner.

    `clip` replaces the checkpoint's `clip` hyper-parameter (e.g. {"pretrained": DIR} where the same CLIP lies
    elsewhere on this machine). Class-specific contexts belong to their training classes and cannot prompt
    other texts: such a checkpoint is refused.
    """
    # weights_only=False: Lightning checkpoints carry hyper-parameters and loop state beside the tensors
    checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
    hparams = checkpoint.get("hyper_parameters")
    state = checkpoint.get("state_dict")
    if not isinstance(hparams, dict) or not isinstance(state, dict) or "clip" not in hparams:
        raise ValueError(f"{checkpoint_path}: not a Lightning checkpoint of lightning_modules.cpl.CPLModule "
                         f"(no hyper_parameters with 'clip', or no state_dict)")
    if "prompts.ctx" not in state:
        raise ValueError(f"{checkpoint_path}: has no learned prompts (prompts.ctx): save it after training started")
    hparams = dict(hparams)
    if clip is not None:
        hparams["clip"] = clip
    if hparams.get("class_specific_contexts"):
        raise ValueError(f"{checkpoint_path}: class-specific contexts are tied to the training classes; they cannot "
                         f"prompt benchmark options (train with class_specific_contexts: false)")
    module = CPLModule(**hparams)
    module.prompts = module.build_prompts([PLACEHOLDER_CLASS])
    module.load_state_dict(state, strict=True)
    module.on_load_checkpoint(checkpoint)
    return module.eval()


class CPLScorer(ClipScorer):
    """Multiple choice by CLIP similarity with a CPL / CoOp / CoCoOp checkpoint's learned prompts.

    cpl_checkpoint: a Lightning checkpoint of lightning_modules.cpl.CPLModule (e.g. a run's checkpoints/last.ckpt).
    pretrained: where its CLIP is, when not where its hyper-parameters say (the same CLIP, found elsewhere).
    template, batch_size, device: as for ClipScorer.
    """

    def __init__(self, cpl_checkpoint: str, pretrained: Annotated[str | None, ModelSource()] = None, template: str = DEFAULT_TEMPLATE,
                 batch_size: int = 8, device: str | None = None):
        raise_param_problems(self.config_problems({"cpl_checkpoint": cpl_checkpoint, "template": template,
                                                   "batch_size": batch_size}))
        module = load_for_inference(cpl_checkpoint, clip=None if pretrained is None else {"pretrained": pretrained})
        module.to(default_device(device))
        self._configure(module.clip, module.prompts, template, batch_size)

    @classmethod
    def config_problems(cls, params: Mapping[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        problems = ClipScorer.config_problems({k: v for k, v in params.items() if k != "pretrained"}, check_files)
        checkpoint = params.get("cpl_checkpoint")
        if check_files and isinstance(checkpoint, str) and not Path(checkpoint).is_file():
            problems.append(("cpl_checkpoint", f"{checkpoint}: no such file (a CPL/CoOp/CoCoOp Lightning checkpoint)"))
        return problems

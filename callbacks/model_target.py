"""Name, in every checkpoint, the LightningModule class that can rebuild it.

`checkpoint["model_target"]` is the dotted import path (`<module>.<class>`) of the module that was trained, as a
config's `target` names it. Entry points that start from a checkpoint alone (launch/export.py) read it to find the
method's code; they need no config to know which class wrote the file.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

MODEL_TARGET_KEY = "model_target"


def model_target(module: Any) -> str:
    """The dotted import path of `module`'s class, e.g. lightning_modules.flexecontrol.module.FlexEControlModule."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


class ModelTarget(Callback):
    """Stores `model_target(pl_module)` under MODEL_TARGET_KEY in each checkpoint the Trainer saves."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_TARGET_KEY] = model_target(pl_module)

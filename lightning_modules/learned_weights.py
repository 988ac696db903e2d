"""Checkpoints that hold only what a run learns: for methods that train a small part of a large frozen model.

`LearnedWeightsOnly` goes before LightningModule in a module's bases. Its `state_dict` keeps the parameters that
require gradients (the frozen base comes back from the config, not from the checkpoint); its `load_state_dict` takes
such a checkpoint and refuses, naming them, one that lacks any learned weight, instead of silently leaving it at its
initial value.
"""

from __future__ import annotations

from typing import Any


class LearnedWeightsOnly:
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        learned = {prefix + name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in learned}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        missing = [k for k in self.state_dict() if k not in state_dict]
        if strict and missing:
            raise KeyError(f"checkpoint lacks learned weights: {', '.join(missing[:5])}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return super().load_state_dict(state_dict, strict=False, assign=assign)

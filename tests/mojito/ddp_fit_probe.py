"""launch/fit.py as a user runs it, plus what the DDP test needs to see inside every rank: before and after the fit,
each rank saves its trainable weights to `$MOJITO_DDP_PROBE/rank<R>.pt` ({"before": {name: tensor}, "after": ...}).
Lightning's DDP launcher starts the other rank by running this same script again, so every rank writes its file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from launch import fit  # noqa: E402

run_fit = fit.fit_run


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def fit_run_recording_weights(prepared, *args, **kwargs) -> int:
    before = trainable_weights(prepared.model)
    code = run_fit(prepared, *args, **kwargs)
    probe = Path(os.environ["MOJITO_DDP_PROBE"])
    probe.mkdir(parents=True, exist_ok=True)
    torch.save({"before": before, "after": trainable_weights(prepared.model)},
               probe / f"rank{prepared.trainer.global_rank}.pt")
    return code


fit.fit_run = fit_run_recording_weights

if __name__ == "__main__":
    sys.exit(fit.main())

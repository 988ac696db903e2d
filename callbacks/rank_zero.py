"""Metrics computed on rank 0 alone and logged by every rank: what evaluation callbacks that generate on a fixed
subset share (FlexEControl's ControllabilityEvaluator, Mojito's MotionEvaluator).

In a distributed run rank 0 computes and broadcasts `{"metrics": ...}`, so every rank logs the same values (a
monitored metric agrees across ranks); a failure on rank 0 is broadcast as `{"error": traceback}` and raised on every
rank, so ranks waiting in the broadcast do not hang. In one process the metrics are computed and any error propagates
as it is.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import lightning as L
import torch.distributed as dist


def rank_zero_metrics(trainer: L.Trainer, compute: Callable[[], dict[str, Any]],
                      what: str) -> dict[str, Any] | None:
    """compute() on rank 0, its result on every rank (None on a rank that is not rank 0 of a run without a process
    group, which has nothing to log); `what` names the caller in the error raised for a failure on rank 0."""
    distributed = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
    if not (trainer.is_global_zero or distributed):
        return None
    result: dict[str, Any] | None = None
    if trainer.is_global_zero:
        if not distributed:
            return compute()
        try:
            result = {"metrics": compute()}
        except Exception:  # re-raised below on every rank
            result = {"error": traceback.format_exc()}
    result = trainer.strategy.broadcast(result, src=0)
    if "error" in result:
        raise RuntimeError(f"{what} failed on rank 0:\n{result['error']}")
    return result["metrics"]

"""A small MLP regressor: the model that exercises the spine (fit, resume, preemption, DDP, SLURM)."""

from lightning_modules.regression.module import MLPRegressor

__all__ = ["MLPRegressor"]

"""Tests of launch/: configs, fit, runs, trainer, SLURM, DeepSpeed configuration, evaluate."""

"""Shared infrastructure and entry points: config loading, trainer building, runs, SLURM submission.

Nothing here knows about a particular method; methods are built from configs (`target` + `params`).
"""

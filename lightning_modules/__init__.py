"""LightningModules: one sub-package per method."""

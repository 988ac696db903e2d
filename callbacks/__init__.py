"""Callbacks every method can use: preemption and its signal flag, the final checkpoint, data health and sample
logs, benchmark validation. They know no method; what a method offers them it offers through hooks of its
LightningModule (e.g. `benchmark_responder()`)."""

"""Callbacks shared by every method: preemption handling, checkpointing, benchmark validation."""

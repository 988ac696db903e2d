"""Callbacks every method can use: preemption and its signal flag, the final checkpoint, the model class a checkpoint
names, data health and sample logs, the image and video loggers, benchmark validation, metrics computed on rank 0 and
logged by all. They know no method; what a method offers them it offers through hooks of its LightningModule (e.g.
`benchmark_responder()`, `image_rows()`, `video_rows()`)."""

"""Data, the lowest layer: the shard format and its writers (writers/), readers and the ShardDataModule every
method's data builds on, transforms, synthetic data, video decoding, the benchmarks' questions and scoring, and the
file and error helpers every layer uses (files.py, errors.py)."""

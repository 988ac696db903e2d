"""Tests of datamodules/: the shard format, writers, readers, transforms, video."""

"""A small CNN classifier on image shards: the model that exercises the data layer end to end."""

from lightning_modules.image_classifier.module import SmallImageClassifier

__all__ = ["SmallImageClassifier"]

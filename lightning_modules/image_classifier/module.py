from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from datamodules.errors import raise_param_problems


class SmallImageClassifier(L.LightningModule):
    """Two strided convolutions and a linear head on uint8 images (`image_key`, [B, 3, H, W]) with integer labels
    (`label_key`); the images are scaled to [-1, 1] here so the data layer can hand over raw decoded bytes."""

    def __init__(self, num_classes: int, image_key: str = "png", label_key: str = "cls", width: int = 16,
                 lr: float = 1e-3):
        super().__init__()
        raise_param_problems([("num_classes", f"must be >= 2, got {num_classes}")] if num_classes < 2 else [])
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 127.5 - 1.0)

    def _loss_and_accuracy(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch[self.hparams.image_key])
        labels = batch[self.hparams.label_key]
        return nn.functional.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, accuracy = self._loss_and_accuracy(batch)
        size = len(batch[self.hparams.label_key])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", accuracy, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log_dict({"val/loss": loss, "val/accuracy": accuracy}, sync_dist=True, prog_bar=True,
                      batch_size=len(batch[self.hparams.label_key]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

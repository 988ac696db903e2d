"""A stop signal in Lightning's test loop (callbacks/preemption.py): the loop ends after the current batch."""

from __future__ import annotations

import signal

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.preemption import Preemption, TestStopped
from callbacks.signals import SignalFlag


class CountingModule(L.LightningModule):
    def __init__(self, flag: SignalFlag, signal_at: int | None):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.flag, self.signal_at, self.seen = flag, signal_at, []

    def test_step(self, batch, batch_idx):
        self.seen.append(batch_idx)
        if batch_idx == self.signal_at:
            self.flag.received = signal.SIGUSR1  # as the handler records it


def run_test(tmp_path, module):
    flag = module.flag
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Preemption(tmp_path / "last.ckpt", flag)],
                        default_root_dir=str(tmp_path))
    trainer.test(module, dataloaders=DataLoader(torch.zeros(6, 1), batch_size=1))
    return module


def test_signal_stops_after_the_batch_it_arrived_in(tmp_path):
    module = CountingModule(SignalFlag(), signal_at=2)
    with pytest.raises(TestStopped) as stopped:
        run_test(tmp_path, module)
    assert stopped.value.signum == signal.SIGUSR1
    assert module.seen == [0, 1, 2]


def test_without_a_signal_every_batch_runs(tmp_path):
    assert run_test(tmp_path, CountingModule(SignalFlag(), signal_at=None)).seen == list(range(6))
    assert not (tmp_path / "last.ckpt").exists()  # a test loop saves no checkpoint

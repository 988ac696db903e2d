"""A 2-rank DDP fit (gloo, CPU) of configs/mojito/demo.yaml pointed at the tiny inputs (16 px, 4 frames), through
launch/fit.py as a user runs it (tests/mojito/ddp_fit_probe.py adds each rank's weights before and after): the fit
finishes, the ranks train on different clips, the weights they end with are bitwise equal (gradients are averaged),
and the checkpoint holds exactly the trainable weights, those weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

PROBE = REPO / "tests" / "mojito" / "ddp_fit_probe.py"
STEPS = 3  # 16 clips / 2 ranks / 4 per batch: two steps of epoch 0, then one of epoch 1 (ends mid-epoch)


def sample_log(run_dir, rank: int) -> list[tuple[int, int, list[str]]]:
    lines = (run_dir / "sample_log" / f"rank{rank}.tsv").read_text().splitlines()
    return [(int(step), int(epoch), keys.split(",")) for step, epoch, keys in (line.split("\t") for line in lines)]


@pytest.fixture(scope="module")
def ddp_run(tiny_video, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mojito-ddp")
    args = ["--config", str(REPO / "configs" / "mojito" / "demo.yaml"),
            f"model.params.base.pretrained={tiny_video['base']}", f"data.params.train={tiny_video['train']}",
            "data.params.val=null", "data.params.frames=4", "data.params.batch_size=4",
            "model.params.sampling.frames=4", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=null",
            "trainer.limit_val_batches=0",
            "trainer.strategy=ddp", "trainer.devices=2", f"run.root={root / 'runs'}", "run.name=ddp",
            "callbacks=[{target: callbacks.sample_log.SampleLog}]"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MOJITO_DDP_PROBE": str(root / "probe")}
    result = subprocess.run([sys.executable, str(PROBE), *args], cwd=REPO, capture_output=True, text=True,
                            timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"run_dir": root / "runs" / "ddp",
            "ranks": [torch.load(root / "probe" / f"rank{rank}.pt") for rank in range(2)]}


def test_the_ddp_fit_finishes_and_the_ranks_train_on_different_clips(ddp_run):
    run_dir = ddp_run["run_dir"]
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["state"], status["global_step"]) == ("finished", STEPS)
    logs = [sample_log(run_dir, rank) for rank in range(2)]
    for log in logs:
        assert [(step, epoch) for step, epoch, _ in log] == [(1, 0), (2, 0), (3, 1)]
    first_epoch = [{key for _, epoch, keys in log if epoch == 0 for key in keys} for log in logs]
    assert len(first_epoch[0]) == len(first_epoch[1]) == 8  # each rank its own half of the 16 clips
    assert not first_epoch[0] & first_epoch[1]


def test_the_ranks_end_with_equal_weights_and_the_checkpoint_holds_only_them(ddp_run):
    rank0, rank1 = ddp_run["ranks"]
    names = set(rank0["after"])
    assert names == set(rank1["after"]) == set(rank0["before"])
    assert any(name.startswith("intensity.") for name in names)  # trainable: [intensity, motion_modules]
    assert any(".motion_modules." in name for name in names)
    assert not any(name.startswith("text_encoder.") for name in names)
    changed = [name for name in names if not torch.equal(rank0["before"][name], rank0["after"][name])]
    assert changed  # they trained; different clips on each rank, yet the same weights: DDP averaged the gradients
    for name in names:
        assert torch.equal(rank0["before"][name], rank1["before"][name]), name
        assert torch.equal(rank0["after"][name], rank1["after"][name]), name
    checkpoint = torch.load(ddp_run["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == STEPS
    assert set(checkpoint["state_dict"]) == names
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(value, rank0["after"][name]), name

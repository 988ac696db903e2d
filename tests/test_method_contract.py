"""The contract every method keeps (../shared/DESIGN.md "Layout"), checked on its tiny config.

A method with a tiny config, `configs/<method>/tiny.yaml`, is picked up here by that file alone. Its inputs (synthetic
data, tiny models) come from `lightning_modules/<method>/synthetic.py`: `tiny_inputs(root) -> [key=value overrides]`,
written under `root`; a method whose tiny config needs no files has no such function. Through launch/fit.py, as a
user runs it:

- the run fits to the end of its config;
- a second run, SIGKILLed at a random step, resumes from its newest checkpoint and ends bitwise equal to the first
  (weights and optimizer state);
- its checkpoint holds only trainable weights: every trainable parameter, no frozen one.
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.runs import RunDir, checkpoint_step
from tests.conftest import REPO, run_fit

TINY_CONFIGS = sorted(REPO.glob("configs/*/tiny.yaml"))
METHODS = [path.parent.name for path in TINY_CONFIGS]


def tiny_inputs(method: str, root: Path) -> list[str]:
    try:
        synthetic = importlib.import_module(f"lightning_modules.{method}.synthetic")
    except ModuleNotFoundError as e:
        if e.name != f"lightning_modules.{method}.synthetic":
            raise
        return []
    return list(synthetic.tiny_inputs(root)) if hasattr(synthetic, "tiny_inputs") else []


@pytest.fixture(scope="module", params=METHODS)
def method(request, tmp_path_factory) -> dict:
    name = request.param
    root = tmp_path_factory.mktemp(f"contract-{name}")
    config = REPO / "configs" / name / "tiny.yaml"
    overrides = [*tiny_inputs(name, root / "inputs"), f"run.root={root / 'runs'}"]
    reference = run_fit("--config", str(config), *overrides, "run.name=reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return {"name": name, "root": root, "config": config, "overrides": overrides,
            "reference": root / "runs" / "reference"}


def test_the_contract_covers_the_methods_that_exist():
    assert {"regression", "cpl"} <= set(METHODS)
    for name in METHODS:
        assert (REPO / "lightning_modules" / name / "__init__.py").is_file(), f"configs/{name}/tiny.yaml names no method"


def tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Weights and optimizer state of a checkpoint, by name."""
    found = {f"state_dict.{k}": v for k, v in checkpoint["state_dict"].items()}
    for i, optimizer in enumerate(checkpoint["optimizer_states"]):
        for param, state in optimizer["state"].items():
            found.update({f"optimizer{i}.{param}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return found


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(method):
    reference = load(method["reference"] / "checkpoints" / "last.ckpt")
    total = reference["global_step"]
    kill_after = random.Random().randint(2, max(2, total // 2))
    run_dir = method["root"] / "runs" / "killed"
    command = [sys.executable, str(REPO / "launch" / "fit.py"), "--config", str(method["config"]),
               *method["overrides"], "run.name=killed"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 300
    while (RunDir(run_dir).newest_complete_checkpoint() or (None, -1))[1] < kill_after:
        assert proc.poll() is None, f"the fit ended before step {kill_after}: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint of step {kill_after} in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = RunDir(run_dir).newest_complete_checkpoint()[1]
    assert killed_at < total, f"the kill (after step {kill_after}) landed after the end"

    resumed = run_fit("--config", str(method["config"]), *method["overrides"], "run.name=killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == total
    expected, got = tensors(reference), tensors(load(run_dir / "checkpoints" / "last.ckpt"))
    assert expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"{method['name']}: {differ[:5]} differ after resuming from step {killed_at}"


def test_the_checkpoint_holds_only_trainable_weights(method):
    """The module as a fit leaves it (set up, trained) against its checkpoint's state_dict."""
    from launch.config import load_config
    from launch.fit import check_config, fit_run, prepare_run

    loaded = load_config(method["config"], [*method["overrides"], "run.name=in-process", "trainer.max_steps=2"])
    check_config(loaded)
    prepared = prepare_run(loaded, "never")
    assert fit_run(prepared) == 0
    saved = set(load(prepared.run_dir.last_checkpoint)["state_dict"])
    parameters = dict(prepared.model.named_parameters())
    trainable = {n for n, p in parameters.items() if p.requires_grad}
    frozen = set(parameters) - trainable
    buffers = {n for n, _ in prepared.model.named_buffers()}
    assert trainable, "the module has nothing to train"
    assert trainable <= saved, f"trainable weights missing from the checkpoint: {sorted(trainable - saved)[:5]}"
    assert not saved & frozen, f"frozen weights in the checkpoint: {sorted(saved & frozen)[:5]}"
    assert saved <= trainable | buffers, f"neither weights nor buffers: {sorted(saved - trainable - buffers)[:5]}"

"""A CPL checkpoint written by an earlier version of the project still loads: for inference, and to resume training.

tests/fixtures/cpl-step9.ckpt was written at commit 7076040 (before the layout of issue 11) by
`launch/fit.py --config configs/demo/cpl.yaml` with variant cpl, the tiny CLIP of tests/tiny_clip.py (seed 0; now
lightning_modules/clip_pretrain/random_clip.py), the
synthetic base-to-new task of `write_base_to_new(shots=8, per_class_test=6, size=16)` and trainer.max_steps=9.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.clip_pretrain.random_clip import write_random_clip
from lightning_modules.cpl.inference import load_for_inference
from lightning_modules.cpl.synthetic import write_base_to_new, write_word_scorer
from tests.conftest import REPO, run_fit

FIXTURE = REPO / "tests" / "fixtures" / "cpl-step9.ckpt"
WORDS = ["blue", "circle", "green", "red", "square", "triangle", "yellow"]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat")
    paths = write_base_to_new(root / "data", shots=8, per_class_test=6, size=16)
    return {"root": root, "clip": write_random_clip(root / "clip", image_size=16),
            "scorer": write_word_scorer(root / "scorer", WORDS), **{k: Path(v) for k, v in paths.items()}}


def test_old_checkpoint_loads_for_inference(task):
    saved = torch.load(FIXTURE, map_location="cpu", weights_only=False)["state_dict"]
    module = load_for_inference(FIXTURE, clip={"pretrained": str(task["clip"])})
    state = module.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert module.prompts.meta_net is not None  # the cpl variant's meta-net came back


def test_old_checkpoint_resumes_training(task):
    result = run_fit(
        "--config", str(REPO / "configs" / "demo" / "cpl.yaml"), "--resume", str(FIXTURE),
        f"run.root={task['root'] / 'runs'}", "run.name=resumed", "model.params.variant=cpl",
        f"model.params.clip.pretrained={task['clip']}", f"data.params.train={task['train']}",
        f"data.params.val.base={task['base']}", f"data.params.val.new={task['new']}", "data.params.image_size=16",
        "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", f"model.params.scorer.model={task['scorer']}",
        f"model.params.negatives_cache={task['root'] / 'negatives'}", "trainer.max_steps=12")
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(task["root"] / "runs" / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 12
    before = torch.load(FIXTURE, map_location="cpu", weights_only=False)["state_dict"]
    assert last["state_dict"].keys() == before.keys()
    assert not torch.equal(last["state_dict"]["prompts.ctx"], before["prompts.ctx"])  # it trained on from step 9

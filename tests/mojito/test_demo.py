"""The Mojito demo's pieces: its preparation (cached base, data, the links configs/mojito/demo.yaml names) and that the
shipped config runs as shipped on them; its tables on a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from lightning_modules.mojito import demo
from lightning_modules.diffusion.cache import REPORT
from lightning_modules.mojito.cache import tiny_text_to_video_path
from tests.conftest import REPO, run_fit

CONFIG = REPO / "configs" / "mojito" / "demo.yaml"
PRETRAIN_STEPS = 2  # the fit below only has to run on the base (what it learns is the full demo's business)


def test_the_shipped_config_runs_as_shipped_on_what_the_demo_prepared(tmp_path):
    root = tmp_path / "runs" / "demo"  # the demo's default root, seen from tmp_path as from the repository root
    paths = demo.prepare(root, seed=0, pretrain_steps=PRETRAIN_STEPS, num_train=32)
    cfg = yaml.safe_load(CONFIG.read_text())
    named = [cfg["model"]["params"]["base"]["pretrained"], cfg["data"]["params"]["train"], cfg["data"]["params"]["val"]]
    assert named == [str(Path(p).relative_to(tmp_path)) for p in (paths["base"], paths["train"], paths["val"])]
    entry = tiny_text_to_video_path(root / "cache" / "tiny-t2v", image_size=demo.IMAGE_SIZE, frames=demo.FRAMES,
                                    num_train=32, max_steps=PRETRAIN_STEPS, seed=0)
    assert paths["base"].resolve() == entry.resolve()
    assert json.loads((entry / REPORT).read_text())["steps"] == PRETRAIN_STEPS
    result = run_fit("--config", str(CONFIG), "trainer.max_steps=2", "trainer.val_check_interval=2", cwd=tmp_path,
                     timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "runs" / "mojito-demo" / "checkpoints" / "last.ckpt").is_file()
    # prepared again with the same settings: nothing is trained or written again
    before = os.stat(entry / REPORT).st_mtime_ns
    again = demo.prepare(root, seed=0, pretrain_steps=PRETRAIN_STEPS, num_train=32)
    assert again == paths and os.stat(entry / REPORT).st_mtime_ns == before

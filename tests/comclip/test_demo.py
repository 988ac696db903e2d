"""The ComCLIP demo's preparation (cached tiny CLIP, the synthetic items, the links configs/comclip/demo.yaml names),
that the shipped config runs as shipped on them, and its table; the full demo's numbers are in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lightning_modules.clip_pretrain.cache import tiny_clip_path
from lightning_modules.comclip import demo
from tests.conftest import REPO

CONFIG = REPO / "configs" / "comclip" / "demo.yaml"
# A pretraining of 2 steps: the evaluation below only has to run on it (what it shows is the full demo's business)
TINY_CLIP = {"num_train": 256, "num_val": 48, "max_steps": 2, "batch_size": 32}


def test_the_shipped_config_runs_as_shipped_on_what_the_demo_prepared(tmp_path):
    root = tmp_path / "runs" / "demo-comclip"  # the demo's default root, seen from tmp_path as from the repository root
    paths = demo.prepare(root, items=6, size=24, seed=0, clip=TINY_CLIP)
    cfg = yaml.safe_load(CONFIG.read_text())
    named = [cfg["model"]["params"]["clip"]["pretrained"], cfg["data"]["params"]["test"]]
    assert named == [str(Path(p).relative_to(tmp_path)) for p in (paths["clip"], paths["data"])]
    assert paths["clip"].resolve() == tiny_clip_path(root / "cache" / "tiny-clip", seed=0, **TINY_CLIP).resolve()
    result = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), "test", "--config", str(CONFIG)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((root / "runs" / "comclip-demo" / "test" / "results.json").read_text())
    assert results["scored"] == 6 and results["parse_failures"]["count"] == 0  # the rules parse every caption
    # prepared again with the same settings: the same links, nothing written again
    before = os.stat(paths["data"] / "index.json").st_mtime_ns
    assert demo.prepare(root, items=6, size=24, seed=0, clip=TINY_CLIP) == paths
    assert os.stat(paths["data"] / "index.json").st_mtime_ns == before
    table = demo.table({w: results for w in demo.WEIGHTINGS})
    assert table.count("\n") == 5 and "| CLIP |" in table and "| ComCLIP (softmax weights) |" in table

"""The CPL demo (`make demo-cpl`) end to end: a tiny CLIP pretrained here, then zero-shot vs CoOp vs CoCoOp vs CPL; and,
faster, that configs/demo/cpl.yaml runs as shipped on what the demo prepares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lightning_modules.clip_pretrain.cache import tiny_clip_path
from lightning_modules.cpl import demo
from tests.conftest import REPO, run_fit

CONFIG = REPO / "configs" / "demo" / "cpl.yaml"


def test_demo_prints_the_table_and_every_variant_beats_zero_shot_on_base(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_modules.cpl.demo", "--root", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| CPL |" in result.stdout and "| zero-shot CLIP |" in result.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in ("zero-shot CLIP", "CoOp", "CoCoOp", "CPL"))
    for variant in ("coop", "cocoop", "cpl"):
        rows = {r["method"]: r for r in json.loads((tmp_path / "runs" / variant / "benchmark.json").read_text())["rows"]}
        # which variant wins on new classes is a finding (summary.md), not asserted; prompts must help on base
        assert rows["learned prompts"]["base"] > rows["zero-shot CLIP"]["base"], (variant, rows)
    assert (tmp_path / "cache" / "tiny-clip").is_dir()  # cached for the next run
    again = subprocess.run([sys.executable, "-m", "lightning_modules.cpl.demo", "--root", str(tmp_path), "--variants",
                            "coop", "--epochs", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "ready after 0 s" in again.stdout, again.stdout + again.stderr[-2000:]


# A pretraining of 2 steps: the fit below only has to run on it (accuracy is the full demo's business)
TINY_CLIP = {"num_train": 256, "num_val": 48, "max_steps": 2, "batch_size": 32}


def config_paths() -> list[str]:
    """The paths configs/demo/cpl.yaml names (relative to where it is run: the repository root for a user)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    params, data = cfg["model"]["params"], cfg["data"]["params"]
    return [params["clip"]["pretrained"], params["scorer"]["model"], data["train"], *data["val"].values()]


def test_the_shipped_config_runs_as_shipped_on_what_the_demo_prepared(tmp_path):
    """After the demo's preparation, configs/demo/cpl.yaml's own paths are its CLIP, scorer and data: links to the
    cache entry and the data the settings need, moved to another entry when the settings change."""
    root = tmp_path / "runs" / "demo-cpl"  # the demo's default root, seen from tmp_path as from the repository root
    paths = demo.prepare(root, seed=0, spurious=0.9, clip=TINY_CLIP)
    entry = tiny_clip_path(root / "cache" / "tiny-clip", seed=0, **TINY_CLIP)
    assert config_paths() == [str(Path(p).relative_to(tmp_path)) for p in (paths["clip"], paths["scorer"],
                                                                           paths["train"], paths["base"], paths["new"])]
    assert paths["clip"].resolve() == entry.resolve() and (paths["clip"] / "model.safetensors").is_file()
    assert (paths["train"] / "index.json").is_file() and (paths["new"] / "index.json").is_file()
    result = run_fit("--config", str(CONFIG), "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
                     cwd=tmp_path, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["method"] for r in json.loads((root / "cpl-demo" / "benchmark.json").read_text())["rows"]}
    assert rows == {"zero-shot CLIP", "learned prompts"}
    # other settings: another entry, and the link moves to it; the first entry stays, for a demo with its settings
    other = tiny_clip_path(root / "cache" / "tiny-clip", seed=0, **{**TINY_CLIP, "max_steps": 1})
    demo.prepare(root, seed=0, spurious=0.9, clip={**TINY_CLIP, "max_steps": 1})
    assert os.readlink(paths["clip"]) == other.name and (paths["clip"] / "model.safetensors").is_file()
    assert sorted(p.name for p in (root / "cache" / "tiny-clip").iterdir()) == sorted(
        ["current", entry.name, other.name])

"""CPL, CoOp and CoCoOp fitted end to end through launch/fit.py on the synthetic base-to-new task (tiny CLIP)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from datamodules.synthetic_shapes import CLASS_NAMES
from lightning_modules.clip_pretrain.random_clip import write_random_clip
from lightning_modules.cpl.synthetic import write_base_to_new, write_word_scorer
from tests.conftest import REPO, run_fit

CONFIG = REPO / "configs" / "demo" / "cpl.yaml"


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpl")
    paths = write_base_to_new(root / "data", shots=8, per_class_test=6, size=16)
    words = sorted({w for name in CLASS_NAMES for w in name.split()})
    return {"root": root, "clip": write_random_clip(root / "clip", image_size=16),
            "scorer": write_word_scorer(root / "scorer", words), **{k: Path(v) for k, v in paths.items()}}


def fit_args(task: dict[str, Path], name: str, variant: str, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), f"run.root={task['root'] / 'runs'}", f"run.name={name}",
            f"model.params.variant={variant}", f"model.params.clip.pretrained={task['clip']}",
            f"data.params.train={task['train']}", f"data.params.val.base={task['base']}",
            f"data.params.val.new={task['new']}", "data.params.image_size=16", "trainer.max_epochs=5",
            "trainer.check_val_every_n_epoch=5",
            f"model.params.scorer.model={task['scorer']}", f"model.params.negatives_cache={task['root'] / 'negatives'}",
            *extra]


def learned(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def digest(directory: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())).hexdigest()


@pytest.mark.parametrize("variant", ["coop", "cocoop", "cpl"])
def test_fit_writes_the_benchmark_table_and_leaves_clip_alone(task, variant):
    before = digest(task["clip"])
    result = run_fit(*fit_args(task, variant, variant))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = task["root"] / "runs" / variant
    table = json.loads((run_dir / "benchmark.json").read_text())
    rows = {row["method"]: row for row in table["rows"]}
    for method in ("zero-shot CLIP", "learned prompts"):
        assert set(rows[method]) == {"method", "base", "new", "harmonic_mean"}
        assert all(0 <= rows[method][k] <= 100 for k in ("base", "new", "harmonic_mean"))
    assert "| zero-shot CLIP |" in (run_dir / "benchmark.md").read_text()
    state = learned(run_dir)
    assert all(k.startswith("prompts.") for k in state) and ("prompts.meta_net.0.weight" in state) == (variant != "coop")
    assert digest(task["clip"]) == before

"""Every config the repository ships resolves and passes the parameter checks (as --dry-run does): training configs
with fit.py's checker, benchmark configs (configs/benchmarks/) with evaluate.py's."""

from __future__ import annotations

import pytest

from launch.config import load_config
from launch.evaluate import check_run_config
from launch.fit import check_config
from tests.conftest import REPO

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "base" not in p.relative_to(REPO / "configs").parts)
BENCHMARKS = [p for p in CONFIGS if p.relative_to(REPO / "configs").parts[0] == "benchmarks"]
EXPERIMENTS = [p for p in CONFIGS if p not in BENCHMARKS]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_resolves_and_checks(path):
    loaded = load_config(path)
    loaded.check_files = False  # the models and data they name are the user's: looked up when run, not here
    check_config(loaded)


def test_every_cpl_task_has_configs():
    names = {p.stem for p in EXPERIMENTS if p.parent.name == "cpl"}
    assert {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101", "flickr30k", "coco", "vqav2"} <= names
    targets = {load_config(REPO / "configs" / "cpl" / f"{n}.yaml").cfg.data.target for n in ("dtd", "coco", "vqav2")}
    assert targets == {"lightning_modules.cpl.data.ClipClassificationData", "lightning_modules.cpl.data.ClipRetrievalData",
                       "lightning_modules.cpl.data.ClipVQAData"}


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_benchmark_config_resolves_and_checks(path):
    # the data paths are the user's: checked when run, not here
    check_run_config(load_config(path), check_files=False)


def test_benchmark_configs_shipped():
    names = {p.stem for p in BENCHMARKS}
    assert {"vlm4d_qwen2vl", "mmworld_qwen2vl", "vlm4d_clip", "mmworld_clip"} <= names
    for name in ("vlm4d_clip", "mmworld_clip"):
        assert load_config(REPO / "configs" / "benchmarks" / f"{name}.yaml").cfg.model.target == \
            "lightning_modules.clip_scorer.ClipScorer"

"""Mojito tests: one torch thread while they run (tiny models on a shared 2-core machine: extra OpenMP threads only
contend), restored afterwards; a tiny random text-to-video pipeline and synthetic-motion shards, written once."""

from pathlib import Path

import pytest

from tests.conftest import single_torch_thread


one_torch_thread = pytest.fixture(autouse=True, scope="package")(single_torch_thread)


@pytest.fixture(scope="package")
def tiny_video(tmp_path_factory) -> dict[str, Path]:
    """A tiny pixel-space text-to-video pipeline (16 px, UNetMotionModel) and 4-frame synthetic-motion shards."""
    from lightning_modules.mojito.synthetic import tiny_inputs

    root = tmp_path_factory.mktemp("mojito-tiny")
    tiny_inputs(root)
    return {"base": root / "base", "train": root / "data" / "train", "val": root / "data" / "val"}

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo" / "regression.yaml"
# An entry point run as a script (launch/fit.py) has its own folder first on sys.path, not the checkout, so its imports
# would find the editable install's packages: the tests' subprocesses run the code of the checkout they test.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


def single_torch_thread():
    """The body of the autouse fixtures of tiny-model test packages: one torch thread while they run (on a shared
    2-core machine extra OpenMP threads only contend, measured 10x slower), restored afterwards for the rest."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_fit(*args: str, cwd: Path = REPO, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """launch/fit.py in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, str(REPO / "launch" / "fit.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})



@pytest.fixture(scope="module")
def clip_bench(tmp_path_factory) -> dict:
    """A tiny synthetic VLM4D (4 videos), its questions and sampled frames, and a random tiny CLIP: what the CLIP
    scorers are tested on (tests/benchmarks/test_clip_scorer.py, tests/cpl/test_scorer.py)."""
    from datamodules.benchmarks import load_questions, resolve_video, sample_frames
    from datamodules.benchmarks.synthetic import write_synthetic_vlm4d
    from lightning_modules.clip_pretrain.random_clip import write_random_clip

    root = tmp_path_factory.mktemp("clip-scorer")
    written = write_synthetic_vlm4d(root / "vlm4d", videos=4, frames=6, size=24)
    questions = []
    for split, path in written["questions"].items():
        questions += load_questions("vlm4d", path, split)
    frames = [sample_frames(resolve_video(q, written["video_root"]), 4) for q in questions]
    return {"root": root, "clip": write_random_clip(root / "clip", image_size=16), "questions": questions,
            "frames": frames}

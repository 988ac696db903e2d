"""bench/measure.py, what the memory-measuring benches share: the RSS readings, the rotation of configurations, the
parameter fingerprint, and how a worker's result or failure comes back."""

from __future__ import annotations

import pytest
import torch

import bench.flexecontrol as fb
from bench import measure


def test_rss_readings_and_the_peak_reset():
    assert measure.rss_mb() > 0
    assert measure.reset_peak_rss() is True  # Linux, as the committed results were measured
    held = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB touched after the reset
    assert measure.max_rss_mb() >= measure.rss_mb() - 1 > 0
    assert measure.max_rss_mb() > 60
    del held


def test_rotation_starts_each_round_at_another_configuration():
    assert measure.rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert measure.rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert measure.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_the_fingerprint_changes_with_any_parameter():
    weights = [torch.ones(3), -torch.ones(2)]
    before = measure.fingerprint(weights)
    assert before == 5.0
    weights[1][0] = -3.0
    assert measure.fingerprint(weights) != before


def test_a_worker_failure_names_the_job_and_its_traceback():
    def broken(spec):
        raise ValueError("no such condition type 'glow'")

    status, text = measure.call_worker({"train": broken}, "train", {})
    assert status == "error" and "ValueError: no such condition type 'glow'" in text
    with pytest.raises(RuntimeError, match=r"(?s)bench worker for train flexecontrol 1cond failed:.*glow"):
        measure.job_result((status, text), 1, "train flexecontrol 1cond")
    with pytest.raises(RuntimeError, match="exited with -9 before sending a result"):
        measure.job_result(None, -9, "params parameter counts")
    assert measure.job_result(("ok", {"a": 1}), 0, "x") == {"a": 1}


def test_an_inline_job_runs_the_modules_worker(monkeypatch):
    monkeypatch.setitem(fb.WORKERS, "params", lambda spec: {"unet": spec["unet"]})
    assert measure.run_job("bench.flexecontrol", "params", {"unet": 7}, inline=True, what="params") == {"unet": 7}
    assert fb.run_job("params", {"unet": 8}, inline=True) == {"unet": 8}

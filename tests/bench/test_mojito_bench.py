"""bench/mojito.py: a `--quick` run end to end in this process (every job at tiny sizes, the result file and what it
checked), the ratios and notes from stand-in records (a missed target reported as missed), the arguments it refuses,
and the committed result's settings and targets."""

from __future__ import annotations

import json

import pytest
import torch

import bench.mojito as mb
from bench.result_file import RESULTS, read_result

QUICK = mb.SIZES["quick"]


@pytest.fixture(scope="module")
def quick_record(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("mojito-bench") / "quick.json"
    try:
        assert mb.main(["--quick", "--inline", "--out", str(out), "--warmup", "0", "--steps", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    return read_result(out)


def test_a_quick_run_measures_every_mode_and_set_up(quick_record):
    record = quick_record
    assert record["targets"] == mb.TARGETS and set(record["target_met"]) == set(mb.TARGETS)
    assert record["checks"] == {name: True for name in record["checks"]}, json.dumps(record["checks"])
    assert {"gradient_changes_the_video", "reweight_changes_the_video", "each_mode_repeats_its_video",
            "same_base_unet_on_every_side"} <= set(record["checks"])
    samples, figures, ratios = record["samples"], record["figures"], record["ratios"]
    for mode in mb.MODES:
        assert len(samples[f"{mode}_sampling_step_ms"]) == 3  # one whole call per round
    for setup in mb.SETUPS:
        assert len(samples[f"{setup}_step_ms"]) == 3 and len(samples[f"{setup}_own_process_step_ms"]) == 9
        assert len(samples[f"{setup}_train_memory_mb"]) == 3
    for setup in ("intensity", "motion_modules", "lora"):
        assert f"{setup}_over_unet_step_time" in ratios
        assert 0 < ratios[f"{setup}_over_unet_trainable_params"] < 1  # every set trains less than the whole UNet
    assert figures["intensity_trainable_params"] < figures["lora_trainable_params"]
    assert "motion_modules_no_checkpointing_over_unet_step_time" not in ratios  # compared with its own set-up only
    assert "checkpointing_off_over_on_step_time" in ratios
    # the steered step is the call's time less its plain steps, over the steered ones
    steps, steered = QUICK["steps"], QUICK["direction_steps"]
    expected = (figures["gradient_sampling_step_ms"] * steps - figures["none_sampling_step_ms"] * (steps - steered)) \
        / steered
    assert figures["gradient_steered_step_ms"] == pytest.approx(expected)
    direction = record["settings"]["sampling"]["direction"]
    assert direction["gradient"]["mode"] == "gradient" and direction["gradient"]["iterations"] == 1
    assert record["settings"]["training"]["lora"] == mb.LORA
    assert record["command"].startswith("python bench/mojito.py --quick")
    assert "2 CPU cores shared with other jobs" in record["notes"]


def stand_in(step_ms=None, sampling=None):
    """Records as the workers return them, with chosen times and memory."""
    step_ms = step_ms or {"intensity": 60.0, "motion_modules": 70.0, "lora": 80.0, "unet": 100.0,
                          "motion_modules_no_checkpointing": 50.0}
    memory = {"intensity": 10.0, "motion_modules": 20.0, "lora": 0.0, "unet": 40.0,
              "motion_modules_no_checkpointing": 60.0}
    phases = {f"{p}_ms": [1.0, 2.0, 3.0] for p in mb.PHASES}
    checks = {"losses_finite": True}
    runs = [{"setup": s, "step_ms": [step_ms[s]] * 3, "train_memory_mb": memory[s], "peak_rss_mb": 500 + memory[s],
             "rss_after_build_mb": 500.0, "peak_reset": True, "checks": checks, "base_fingerprint": 1.0}
            for _ in range(3) for s in mb.SETUPS]
    alternating = {"setups": {s: {"step_ms": [step_ms[s] - 1, step_ms[s], step_ms[s] + 1], **phases,
                                  "checks": checks, "base_fingerprint": 1.0,
                                  "trainable_params": 1000 if s == "unet" else 100} for s in mb.SETUPS}}
    sampling = {"step_ms": sampling or {"none": [100.0, 101.0, 99.0], "gradient": [160.0, 150.0, 170.0],
                                        "reweight": [103.0, 104.0, 102.0]},
                "checks": {"videos_finite": True}, "unet_params": 5000}
    return sampling, runs, alternating


def test_ratios_of_the_medians_and_a_missed_target_said_so():
    size = {"steps": 25, "direction_steps": 10}
    result = mb.aggregate(*stand_in(), size)
    ratios, figures = result["ratios"], result["figures"]
    assert ratios["gradient_over_none_sampling_step_time"] == pytest.approx(1.6)
    assert ratios["reweight_over_none_sampling_step_time"] == pytest.approx(1.03)
    assert figures["gradient_steered_step_ms"] == pytest.approx((160 * 25 - 100 * 15) / 10)
    assert ratios["lora_over_unet_step_time"] == pytest.approx(0.8)
    assert ratios["intensity_over_unet_memory"] == pytest.approx(0.25)
    assert "lora_over_unet_memory" not in ratios  # a step that adds no memory the RSS shows gets no ratio
    assert ratios["checkpointing_off_over_on_memory"] == pytest.approx(3.0)
    assert result["checks"]["same_base_unet_on_every_side"] is True
    text = mb.notes(result, {**mb.SIZES["full"]}, quick=False, load=(3.0, 4.0))
    assert "gradient_over_none_sampling_step_time = 1.6 (target <= 1.5): MISSED." in text
    assert "reweight_over_none_sampling_step_time = 1.03 (target <= 1.05): met." in text


def test_a_different_base_on_one_side_fails_its_check():
    sampling, runs, alternating = stand_in()
    runs[0] = {**runs[0], "base_fingerprint": 2.0}
    result = mb.aggregate(sampling, runs, alternating, {"steps": 25, "direction_steps": 10})
    assert result["checks"]["same_base_unet_on_every_side"] is False
    assert "Checks that failed: same_base_unet_on_every_side" in mb.notes(result, mb.SIZES["full"], False, (1, 1))


@pytest.mark.parametrize("argv, message", [
    (["--quick"], "--quick needs --out"),
    (["--quick", "--out", str(RESULTS / "mojito.json")], "must not write into bench/results/"),
    (["--quick", "--out", "/tmp/x.txt"], "--out must name a .json file"),
    (["--rounds", "2", "--steps", "1"], "--rounds must be >= 3, got 2; --steps must be >= 3, got 1"),
    (["--inline"], "--inline is for --quick"),
])
def test_bad_arguments_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        mb.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_committed_result_holds_the_briefs_settings_and_targets():
    record = read_result(RESULTS / "mojito.json")
    assert record["targets"] == mb.TARGETS
    settings = record["settings"]
    assert settings["size"] == "full" and settings["training"]["separate_processes"] is True
    assert settings["frames"] == 16 and settings["image_size"] == 32
    assert settings["sampling"]["denoising_steps"] == 25 and settings["sampling"]["guidance"] == 7.5
    gradient = settings["sampling"]["direction"]["gradient"]
    assert gradient["steps"] == 10 and gradient["iterations"] == 1
    assert all(record["checks"].values()), json.dumps(record["checks"])

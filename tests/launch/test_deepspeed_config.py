"""DeepSpeed presets build the expected config; on CPU a DeepSpeed strategy is a clear usage error."""

import pytest

from launch.config import load_config
from launch.fit import check_config
from launch.trainer import DEEPSPEED_PRESETS, AtomicDeepSpeedStrategy, build_strategy, deepspeed_config
from tests.conftest import DEMO_CONFIG, run_fit


@pytest.mark.parametrize("preset,stage,offload_opt,offload_param", [
    ("deepspeed_stage_1", 1, False, False),
    ("deepspeed_stage_2", 2, False, False),
    ("deepspeed_stage_2_offload", 2, True, False),
    ("deepspeed_stage_3", 3, False, False),
    ("deepspeed_stage_3_offload", 3, True, True),
])
def test_presets(preset, stage, offload_opt, offload_param):
    config = deepspeed_config(preset, micro_batch_size=24)
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) is offload_opt
    assert ("offload_param" in zero) is offload_param
    if offload_opt:
        assert zero["offload_optimizer"]["device"] == "cpu"
    assert config.get("zero_force_ds_cpu_optimizer", True) is (not offload_opt)
    assert config["train_micro_batch_size_per_gpu"] == 24
    assert "gradient_accumulation_steps" not in config  # Lightning sets it from accumulate_grad_batches


def test_every_preset_has_a_base_config():
    from tests.conftest import REPO
    for preset in DEEPSPEED_PRESETS:
        assert (REPO / "configs" / "base" / f"{preset}.yaml").is_file()


def test_user_dict_keeps_its_keys_and_gets_micro_batch():
    user = {"zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1e9}, "bf16": {"enabled": True}}
    config = deepspeed_config(user, micro_batch_size=8)
    assert config["zero_optimization"]["stage3_max_live_parameters"] == 1e9 and config["bf16"] == {"enabled": True}
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert "train_micro_batch_size_per_gpu" not in user  # the config's own dict is not modified


def test_build_strategy_is_atomic_deepspeed_with_config():
    strategy = build_strategy("deepspeed_stage_3_offload", 16)
    assert isinstance(strategy, AtomicDeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == 3
    assert strategy.config["train_micro_batch_size_per_gpu"] == 16


def test_deepspeed_on_cpu_is_a_usage_error(tmp_path):
    result = run_fit("--config", str(DEMO_CONFIG), f"run.root={tmp_path}", "trainer.strategy=deepspeed_stage_2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trainer.strategy: DeepSpeed needs CUDA GPUs, but this run is on CPU" in result.stderr
    assert not any(tmp_path.iterdir())


def test_deepspeed_dict_rejects_accumulation_and_needs_batch_size(tmp_path):
    loaded = load_config(DEMO_CONFIG, ["trainer.accelerator=gpu", "data.params.batch_size=null",
                                       "trainer.strategy={zero_optimization: {stage: 2}, gradient_accumulation_steps: 4}"])
    with pytest.raises(Exception) as err:
        check_config(loaded)
    text = str(err.value)
    assert "trainer.strategy.gradient_accumulation_steps: set trainer.accumulate_grad_batches instead" in text
    assert "data.params.batch_size: DeepSpeed needs the per-GPU batch size" in text

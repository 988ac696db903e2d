"""Config loading: merging, overrides, and every user mistake reported at once, one line each, exit 2."""

import enum
from pathlib import Path

import pytest
import torch
import yaml

from launch.config import UsageError, check_target_node, instantiate, load_config, value_matches
from tests.conftest import DEMO_CONFIG, run_fit


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def demo_copy(tmp_path: Path, **changes) -> Path:
    """The demo config with absolute base paths, plus section changes."""
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["base"] = [str((DEMO_CONFIG.parent / b).resolve()) for b in data["base"]]
    data["run"]["root"] = str(tmp_path / "runs")
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return write(tmp_path / "cfg" / "exp.yaml", data)


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for fragment in fragments:
        assert any(fragment in line for line in lines), (fragment, lines)
    return lines


def test_base_merge_order_and_overrides(tmp_path):
    write(tmp_path / "a.yaml", {"trainer": {"max_steps": 1, "precision": "32-true"}, "run": {"name": "a"}})
    b = write(tmp_path / "b.yaml", {"trainer": {"max_steps": 2}})
    main = write(tmp_path / "main.yaml", {"base": ["a.yaml", "b.yaml"], "trainer": {"log_every_n_steps": 3}})
    loaded = load_config(main, ["trainer.precision=bf16-mixed", "run.seed=7"])
    assert loaded.cfg.trainer.max_steps == 2  # later base wins
    assert loaded.cfg.trainer.log_every_n_steps == 3
    assert loaded.cfg.trainer.precision == "bf16-mixed"  # command line wins
    assert loaded.cfg.run.seed == 7 and loaded.cfg.run.name == "a"
    assert loaded.source_of("trainer.max_steps") == str(b.resolve())
    assert loaded.source_of("trainer.precision") == "command line"


def test_interpolation_resolved(tmp_path):
    loaded = load_config(DEMO_CONFIG, ["data.params.dim=9"])
    assert loaded.cfg.model.params.in_dim == 9


def test_unknown_key_with_suggestion_reports_file_and_key(tmp_path):
    cfg = demo_copy(tmp_path, **{"model.params.hiden_dim": 8})
    result = run_fit("--config", str(cfg))
    lines = assert_usage_error(result, f"{cfg.resolve()}: model.params.hiden_dim: unknown key (did you mean hidden_dim?)")
    assert len(lines) == 1
    assert not (tmp_path / "runs").exists()  # nothing written


def test_all_problems_reported_at_once(tmp_path):
    cfg = demo_copy(tmp_path, **{"model.params.hiden_dim": 8, "data.params.batch_size": "big",
                                 "trainer.max_stepz": 5})
    result = run_fit("--config", str(cfg), "model.params.lr=fast")
    lines = assert_usage_error(result, "model.params.hiden_dim: unknown key",
                               "data.params.batch_size: expected int, got str 'big'",
                               "trainer.max_stepz: unknown key (did you mean max_steps?)",
                               "command line: model.params.lr: expected float, got str 'fast'")
    assert len(lines) == 4


def test_missing_required_key(tmp_path):
    cfg = demo_copy(tmp_path, **{"run.name": None})
    assert_usage_error(run_fit("--config", str(cfg)), "run.name: missing required key")


def test_missing_required_param_of_target(tmp_path):
    cfg = demo_copy(tmp_path, model={"target": "datamodules.resumable.EpochShardedSampler", "params": {"rank": 0}})
    result = run_fit("--config", str(cfg))
    assert_usage_error(result, "model.params.size: missing required key", "model.params.world_size: missing required key")


def test_bad_base_path(tmp_path):
    cfg = write(tmp_path / "exp.yaml", {"base": ["nope/trainer.yaml"], "run": {"name": "x"}})
    result = run_fit("--config", str(cfg))
    assert_usage_error(result, f"{cfg.resolve()}: base.0: file not found: {(tmp_path / 'nope' / 'trainer.yaml').resolve()}")


def test_missing_config_file(tmp_path):
    assert_usage_error(run_fit("--config", str(tmp_path / "absent.yaml")), "file not found")


def test_target_outside_allow_list_is_not_imported(tmp_path):
    cfg = demo_copy(tmp_path, **{"model.target": "os.system", "model.params": {"command": "touch pwned"}})
    result = run_fit("--config", str(cfg), cwd=tmp_path)
    assert_usage_error(result, "model.target: 'os.system' is outside the allowed packages")
    assert not (tmp_path / "pwned").exists()


def test_token_without_equals(tmp_path):
    cfg = demo_copy(tmp_path)
    result = run_fit("--config", str(cfg), "trainer.max_steps", "run.seed=1")
    lines = assert_usage_error(result, "command line: 'trainer.max_steps' is not key=value")
    assert len(lines) == 1
    assert not (tmp_path / "runs").exists()


def test_unknown_section_and_unimportable_target(tmp_path):
    cfg = demo_copy(tmp_path, **{"trainr": {"max_steps": 1}, "data.target": "datamodules.nothing_here.Data"})
    assert_usage_error(run_fit("--config", str(cfg)), "trainr: unknown section (did you mean trainer?)",
                       "data.target: cannot import 'datamodules.nothing_here.Data'")


def test_reserved_trainer_keys_and_bad_strategy(tmp_path):
    cfg = demo_copy(tmp_path, **{"trainer.callbacks": [], "trainer.strategy": "deepspeed_stage_4"})
    assert_usage_error(run_fit("--config", str(cfg)), "trainer.callbacks: set by worldbridge",
                       "trainer.strategy: unknown preset 'deepspeed_stage_4' (did you mean deepspeed_stage_")


def test_invalid_yaml(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("run:\n  name: [unclosed\n")
    assert_usage_error(run_fit("--config", str(cfg)), f"{cfg.resolve()}: not valid YAML")


def test_dry_run_prints_config_and_builds_nothing(tmp_path):
    cfg = demo_copy(tmp_path)
    result = run_fit("--config", str(cfg), "--dry-run", "trainer.max_steps=7")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 7" in result.stdout
    assert "model: lightning_modules.regression.MLPRegressor" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_nested_targets_checked_and_built(tmp_path):
    loaded = load_config(write(tmp_path / "c.yaml", {"run": {"name": "n"}}), [])
    issues = []
    nested = {"target": "torch.nn.Sequential", "params": {}}
    check_target_node({"target": "torch.nn.Linear", "params": {"in_features": 2, "out_feature": 3}}, "model", loaded, issues)
    check_target_node({"target": "torch.optim.SGD", "params": {"params": [], "lr": "x", "extra": nested}}, "opt", loaded, issues)
    assert [str(i).split(": ", 1)[1] for i in issues] == [
        "model.params.out_feature: unknown key (did you mean out_features?)",
        "model.params.out_features: missing required key",
        "opt.params.lr: expected float or Tensor, got str 'x'",
        "opt.params.extra: unknown key",
    ]
    built = instantiate({"target": "torch.nn.Sequential", "params": {}})
    assert type(built).__name__ == "Sequential"


class Reduction(enum.Enum):
    MEAN = "mean"
    SUM = "sum"


@pytest.mark.parametrize("value,annotation,ok", [
    (1, int, True), (True, int, False), (1, float, True), ("a", float, False), (None, int | None, True),
    ([1, 2], list[int], True), ([1, "x"], list[int], False), ({"a": 1}, dict[str, int], True),
    ("auto", "int | str", True), ("x", "typing.Literal", True),
    ("x", torch.Tensor, False), (1.5, float | torch.Tensor, True), ({"a": 1}, torch.nn.Module, True),
    ("mean", Reduction, True), ("MEAN", Reduction, True), ("median", Reduction, False),
])
def test_value_matches(value, annotation, ok):
    assert value_matches(value, annotation) is ok


def test_usage_error_lines():
    err = UsageError(["a", "b"])
    assert err.lines == ["a", "b"] and str(err) == "a\nb"


# -- values an object refuses when it is built ----------------------------------------------------------------------
def test_a_refused_value_names_its_key_and_who_set_it(tmp_path):
    config = demo_copy(tmp_path, **{"data.params.num_train": 0})
    result = run_fit("--config", str(config), "data.params.batch_size=0")
    lines = assert_usage_error(result, f"{config}: data.params.num_train: must be >= 1, got 0",
                               "command line: data.params.batch_size: must be >= 1, got 0")
    assert len(lines) == 2
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_refused_value_of_a_nested_object_names_the_nested_key(tmp_path):
    from launch.config import build

    responder = {"target": "lightning_modules.clip_scorer.ClipScorer", "params": {"pretrained": "", "batch_size": 0}}
    callback = {"target": "callbacks.benchmark_validation.BenchmarkValidation",
                "params": {"benchmark": "vlm4d", "questions": {"real": "real_mc.json"}, "video_root": "videos",
                           "num_questions": 4, "responder": responder}}
    loaded = load_config(demo_copy(tmp_path, callbacks=[callback]))
    with pytest.raises(UsageError) as refused:
        build(loaded, "callbacks.0")
    key = "callbacks.0.params.responder.params"
    assert refused.value.lines == [
        f"{loaded.path.resolve()}: {key}.pretrained: give a CLIP: a Hub id or a local directory with its tokenizer",
        f"{loaded.path.resolve()}: {key}.batch_size: must be >= 1, got 0"]


def test_a_callback_refusing_its_values_stops_fit_with_the_key(tmp_path):
    callback = {"target": "callbacks.benchmark_validation.BenchmarkValidation",
                "params": {"benchmark": "vlm4d", "questions": {}, "video_root": "videos", "num_questions": 0}}
    result = run_fit("--config", str(demo_copy(tmp_path, callbacks=[callback])))
    assert_usage_error(result, "callbacks.0.params.questions: give at least one split",
                       "callbacks.0.params.num_questions: must be >= 1, got 0")


def test_a_target_that_moved_is_answered_with_its_new_place(tmp_path):
    config = demo_copy(tmp_path, model={"target": "datamodules.benchmarks.clip_scorer.ClipScorer", "params": {}})
    result = run_fit("--config", str(config), "--dry-run")
    assert_usage_error(result, "model.target: cannot import 'datamodules.benchmarks.clip_scorer.ClipScorer'",
                       "(did you mean lightning_modules.clip_scorer.ClipScorer?)")
    result = run_fit("--config", str(demo_copy(tmp_path, model={"target": "lightning_modules.nowhere.NoSuchClass"})),
                     "--dry-run")
    assert_usage_error(result, "cannot import 'lightning_modules.nowhere.NoSuchClass'")
    assert "did you mean" not in result.stderr


# -- the command line --------------------------------------------------------------------------------------------
def test_base_given_on_the_command_line_is_merged_before_the_files_keys(tmp_path, monkeypatch):
    write(tmp_path / "preset.yaml", {"trainer": {"max_steps": 7, "precision": "bf16-mixed"}, "run": {"seed": 5}})
    main = write(tmp_path / "main.yaml", {"run": {"name": "a", "seed": 1}, "trainer": {"max_steps": 3}})
    monkeypatch.chdir(tmp_path)  # command-line base files are relative to where the command runs
    loaded = load_config(main, ["base=[preset.yaml]", "trainer.log_every_n_steps=2"])
    assert "base" not in loaded.cfg
    assert loaded.cfg.trainer.precision == "bf16-mixed" and loaded.source_of("trainer.precision").endswith("preset.yaml")
    assert loaded.cfg.trainer.max_steps == 3 and loaded.cfg.run.seed == 1  # the file's own keys win, as in a file
    with pytest.raises(UsageError) as refused:
        load_config(main, ["base.0=preset.yaml", "base=[absent.yaml]"])
    assert refused.value.lines == ["command line: base.0: give base files as a list: base=[a.yaml,b.yaml]",
                                   f"command line: base.0: file not found: {tmp_path / 'absent.yaml'}"]


def test_keys_made_or_set_on_the_command_line_are_blamed_on_it(tmp_path):
    result = run_fit("--config", str(demo_copy(tmp_path)), "runn.name=x", "modle.params.x=1", "--dry-run")
    assert_usage_error(result, "command line: runn: unknown section (did you mean run?)",
                       "command line: modle: unknown section (did you mean model?)")
    result = run_fit("--config", str(demo_copy(tmp_path)), "model.params.hiden_dim=3", "trainer.max_stepz=4",
                     "--dry-run")
    assert_usage_error(result, "command line: model.params.hiden_dim: unknown key (did you mean hidden_dim?)",
                       "command line: trainer.max_stepz: unknown key (did you mean max_steps?)")


def test_a_callback_appended_on_the_command_line(tmp_path):
    log = {"target": "callbacks.sample_log.SampleLog"}
    config = demo_copy(tmp_path, callbacks=[log])
    loaded = load_config(config, ["callbacks.1.target=callbacks.sample_log.SampleLog",
                                  "callbacks+={target: callbacks.data_health.DataHealthLogger, params: {every_n_steps: 3}}"])
    assert [c.target for c in loaded.cfg.callbacks] == ["callbacks.sample_log.SampleLog"] * 2 + [
        "callbacks.data_health.DataHealthLogger"]
    assert loaded.cfg.callbacks[2].params.every_n_steps == 3
    assert loaded.source_of("callbacks.2.params.every_n_steps") == "command line"
    assert loaded.source_of("callbacks.0.target") == str(config.resolve())
    with pytest.raises(UsageError) as refused:
        load_config(config, ["callbacks.3.target=x", "run.name+=y"])
    assert refused.value.lines == [
        "command line: callbacks.3.target: callbacks has 1 entry: the next one is callbacks.1 (or append with "
        "callbacks+=...)",
        "command line: run.name: run.name+= appends to a list, but run.name is str; set it with run.name=..."]
    appended = load_config(demo_copy(tmp_path, callbacks=None), ["callbacks+={target: callbacks.sample_log.SampleLog}"])
    assert [c.target for c in appended.cfg.callbacks] == ["callbacks.sample_log.SampleLog"]


def test_a_key_removed_on_the_command_line(tmp_path):
    # KEY={...} merges into a mapping; ~KEY is how a user drops keys (Hydra's syntax)
    config = write(tmp_path / "c.yaml", {"run": {"name": "a"}, "model": {"params": {"types": {"canny": 1, "seg": 1,
                                                                                               "depth": 1}}},
                                        "callbacks": [{"target": "x"}, {"target": "y"}]})
    merged = load_config(config, ["model.params.types={canny: 1}"])
    assert dict(merged.cfg.model.params.types) == {"canny": 1, "seg": 1, "depth": 1}
    loaded = load_config(config, ["~model.params.types.seg", "~model.params.types.depth", "~callbacks.0"])
    assert dict(loaded.cfg.model.params.types) == {"canny": 1}
    assert [c.target for c in loaded.cfg.callbacks] == ["y"]
    with pytest.raises(UsageError) as refused:
        load_config(config, ["~model.params.typez", "~callbacks.5", "~"])
    assert refused.value.lines == [
        "command line: '~' names no key: ~KEY removes KEY (e.g. ~callbacks.0)",
        "command line: model.params.typez: ~model.params.typez: no such key to remove (did you mean types?)",
        "command line: callbacks.5: ~callbacks.5: no such key to remove"]

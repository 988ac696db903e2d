"""Run directories: status marker, config history, resume selection."""

import pytest
import torch

from launch.config import UsageError
from launch.runs import AtomicCheckpointIO, RunDir, checkpoint_step, resolve_resume
from tests.conftest import DEMO_CONFIG, run_fit


def save(path, step):
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "state_dict": {"w": torch.ones(3) * step}}, path)


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save(path, 3)
    save(path, 4)
    assert checkpoint_step(path) == 4 and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save(path, 3)
    with pytest.raises(Exception):
        AtomicCheckpointIO().save_checkpoint({"global_step": 4, "bad": lambda: 0}, path)  # not picklable
    assert checkpoint_step(path) == 3 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resume_auto_picks_highest_step_and_last_on_tie(tmp_path):
    run = RunDir(tmp_path / "r")
    assert resolve_resume(run, "auto") is None  # fresh start
    save(run.checkpoints / "step-00000010.ckpt", 10)
    save(run.checkpoints / "step-00000020.ckpt", 20)
    assert resolve_resume(run, "auto") == (run.checkpoints / "step-00000020.ckpt", 20)
    save(run.checkpoints / "last.ckpt", 20)
    assert resolve_resume(run, "auto") == (run.checkpoints / "last.ckpt", 20)
    save(run.checkpoints / "last.ckpt", 23)  # a preemption save after the last step checkpoint
    assert resolve_resume(run, "auto") == (run.checkpoints / "last.ckpt", 23)
    (run.checkpoints / "notes.ckpt").write_text("not ours")  # names outside the pattern are ignored
    assert resolve_resume(run, "auto")[1] == 23


def test_finished_run_refused_by_auto_but_explicit_path_allowed(tmp_path):
    run = RunDir(tmp_path / "r")
    save(run.last_checkpoint, 50)
    run.write_status("finished", global_step=50)
    with pytest.raises(UsageError, match="run finished at step 50"):
        resolve_resume(run, "auto")
    assert resolve_resume(run, str(run.last_checkpoint)) == (run.last_checkpoint, 50)


@pytest.mark.parametrize(("limit", "reached", "higher"), [
    ("trainer.max_steps", " (trainer.max_steps reached)", " with a higher trainer.max_steps"),
    ("trainer.max_epochs", " (trainer.max_epochs reached)", " with a higher trainer.max_epochs"),
    (None, "", ""),  # a callback (EarlyStopping) stopped it
])
def test_finished_run_refusal_names_the_limit_that_stopped_it(tmp_path, limit, reached, higher):
    run = RunDir(tmp_path / "r")
    save(run.last_checkpoint, 50)
    run.write_status("finished", global_step=50, stopped_by=limit)
    with pytest.raises(UsageError) as refused:
        resolve_resume(run, "auto")
    assert refused.value.lines == [f"{run.status_file}: run finished at step 50{reached}; to train further pass "
                                   f"--resume {run.last_checkpoint}{higher}, or start a new run.name"]


def test_update_status_changes_the_fields_given_and_keeps_the_others(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_status("running", global_step=0, resumed_from=None, slurm_job_id="7")
    run.update_status(global_step=25)
    assert run.status() == {"state": "running", "updated": run.status()["updated"], "global_step": 25,
                            "resumed_from": None, "slurm_job_id": "7"}
    assert [p.name for p in run.path.iterdir()] == ["status.json"]  # written atomically: no temporary file left


def test_result_lines_name_the_benchmark_table_when_there_is_one(tmp_path):
    run = RunDir(tmp_path / "r")
    places = [f"  run dir     {run.path}", f"  checkpoint  {run.last_checkpoint}", f"  logs        {run.logs}"]
    assert run.result_lines() == places
    run.path.mkdir()
    (run.path / "benchmark.md").write_text("| method |\n")
    assert run.result_lines() == [*places[:2], f"  benchmark   {run.path / 'benchmark.md'}", places[2]]


def test_save_config_keeps_a_different_earlier_config(tmp_path):
    run = RunDir(tmp_path / "r")
    run.save_config("a: 1\n")
    run.save_config("a: 1\n")
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml"]
    run.save_config("a: 2\n")
    run.save_config("a: 3\n")
    assert (run.path / "config.yaml").read_text() == "a: 3\n"
    assert (run.path / "config.1.yaml").read_text() == "a: 1\n" and (run.path / "config.2.yaml").read_text() == "a: 2\n"


def test_bad_run_values_reported_with_other_problems(tmp_path):
    result = run_fit("--config", str(DEMO_CONFIG), f"run.root={tmp_path}", "run.name=a/b", "run.keep_last_k=0",
                     "trainer.max_stepz=1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "command line: run.name: 'a/b' must be a plain directory name" in lines
    assert "command line: run.keep_last_k: must be >= 1" in lines
    assert any("trainer.max_stepz: unknown key" in line for line in lines) and len(lines) == 3

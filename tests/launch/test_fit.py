"""Fit, resume and preemption through launch/fit.py, as a user runs it (a SIGKILL at a random step and its bitwise
resume: tests/test_method_contract.py, for every method)."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from callbacks.last_checkpoint import LastCheckpoint
from callbacks.preemption import Preemption
from launch.config import load_config
from launch.fit import check_config, fit_run, prepare_run
from launch.runs import RunDir, checkpoint_step
from tests.conftest import DEMO_CONFIG, REPO, run_fit

# Steps slow enough (tens of ms) for a signal or a kill to land mid-run; several epochs so resume crosses
# epoch boundaries; step checkpoints every 5 steps.
SLOW = ["model.params.hidden_dim=768", "model.params.depth=3", "data.params.batch_size=128",
        "data.params.num_train=1536", "data.params.num_val=128", "run.every_n_train_steps=5", "run.keep_last_k=2",
        "trainer.val_check_interval=null", "model.params.warmup_steps=20"]
MAX_STEPS = 120


def args(root: Path, name: str, *extra: str) -> list[str]:
    return ["--config", str(DEMO_CONFIG), f"run.root={root}", f"run.name={name}", f"trainer.max_steps={MAX_STEPS}", *SLOW, *extra]


def start_fit(*fit_args: str, new_session: bool = False) -> subprocess.Popen:
    """launch/fit.py started in the background; `new_session`: in a process group of its own, as a terminal runs a
    command (a Ctrl-C there reaches every process of the group)."""
    return subprocess.Popen([sys.executable, str(REPO / "launch" / "fit.py"), *fit_args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=new_session)


def wait_for_step_checkpoint(run_dir: Path, min_step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.ckpt")]
        if steps and max(steps) >= min_step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"fit ended early:\n{proc.stdout.read()}")
        time.sleep(0.01)
    raise AssertionError("no checkpoint in time")


def wait_for_status_step(run_dir: Path, min_step: int, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """status.json once it names a step >= min_step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "status.json").is_file() and (status(run_dir).get("global_step") or 0) >= min_step:
            return status(run_dir)
        if proc.poll() is not None:
            raise AssertionError(f"fit ended early:\n{proc.stdout.read()}")
        time.sleep(0.01)
    raise AssertionError(f"status.json did not reach step {min_step} in time")


def results(run_dir: Path) -> list[str]:
    """The lines that follow a fit's last headline: where its results are."""
    return [f"  run dir     {run_dir}", f"  checkpoint  {run_dir / 'checkpoints' / 'last.ckpt'}",
            f"  logs        {run_dir / 'logs'}"]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def train_loss_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "logs" / "csv" / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def fit_in_process(root: Path, name: str, *overrides: str, resume: str = "auto") -> Path:
    """fit.py's own steps (load_config, check_config, prepare_run, fit_run) in this process: no interpreter start-up,
    so a run of a few steps takes a second or two. 10 batches an epoch, validation at each epoch's end."""
    loaded = load_config(DEMO_CONFIG, [f"run.root={root}", f"run.name={name}", "data.params.num_train=320",
                                       "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=1",
                                       *overrides])
    check_config(loaded)
    assert fit_run(prepare_run(loaded, resume)) == 0
    return root / name


@pytest.fixture(scope="module")
def reference_fit(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted run of the same config: its directory and how the fit ended."""
    root = tmp_path_factory.mktemp("reference")
    result = run_fit(*args(root, "ref"))
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "ref", result


@pytest.fixture(scope="module")
def reference(reference_fit) -> Path:
    return reference_fit[0]


def test_fit_on_cpu_runs_to_max_steps(reference):
    assert status(reference) == {**status(reference), "state": "finished", "global_step": MAX_STEPS,
                                 "stopped_by": "trainer.max_steps"}
    assert checkpoint_step(reference / "checkpoints" / "last.ckpt") == MAX_STEPS
    # 120 steps are 10 epochs of 12 batches: the run ends at an epoch's end
    assert checkpoint_names(reference) == ["last.ckpt", "step-00000115.ckpt", "step-00000120.ckpt"]  # keep_last_k=2
    assert (reference / "config.yaml").is_file() and "max_steps: 120" in (reference / "config.yaml").read_text()
    assert (reference / "logs" / "csv" / "metrics.csv").is_file()
    assert list((reference / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_finished_run_ends_by_saying_where_its_results_are(reference_fit):
    reference, result = reference_fit
    assert result.stdout.splitlines()[-4:] == [f"finished at step {MAX_STEPS} (trainer.max_steps reached)",
                                               *results(reference)]


def test_finished_run_is_not_restarted_silently(reference):
    result = run_fit(*args(reference.parent, reference.name))
    assert result.returncode == 2
    assert result.stderr == (f"{reference / 'status.json'}: run finished at step 120 (trainer.max_steps reached); to "
                             f"train further pass --resume {reference / 'checkpoints' / 'last.ckpt'} with a higher "
                             "trainer.max_steps, or start a new run.name\n")
    assert checkpoint_step(reference / "checkpoints" / "last.ckpt") == MAX_STEPS


@pytest.fixture(scope="module")
def epoch_limited(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run limited by epochs only (two of 10 batches), with `srun` on PATH (as on a cluster's login node) and a
    logging interval longer than an epoch, which Lightning warns about."""
    root = tmp_path_factory.mktemp("epochs")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    result = run_fit("--config", str(DEMO_CONFIG), f"run.root={root}", "run.name=epochs", "trainer.max_steps=-1",
                     "trainer.max_epochs=2", "data.params.num_train=320", "trainer.log_every_n_steps=100",
                     env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "epochs", result


def test_epoch_limited_run_finishes_and_is_refused_naming_max_epochs(epoch_limited):
    run_dir, fit = epoch_limited
    assert fit.stdout.splitlines()[-4:] == ["finished at step 20 (trainer.max_epochs reached)", *results(run_dir)]
    assert status(run_dir) == {**status(run_dir), "state": "finished", "global_step": 20,
                               "stopped_by": "trainer.max_epochs"}
    assert checkpoint_names(run_dir) == ["last.ckpt"]  # no step checkpoint within 20 steps (every 50)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 20
    again = run_fit("--config", str(DEMO_CONFIG), f"run.root={run_dir.parent}", "run.name=epochs",
                    "trainer.max_steps=-1", "trainer.max_epochs=2", "data.params.num_train=320")
    assert again.returncode == 2
    assert again.stderr == (f"{run_dir / 'status.json'}: run finished at step 20 (trainer.max_epochs reached); to train "
                            f"further pass --resume {run_dir / 'checkpoints' / 'last.ckpt'} with a higher "
                            "trainer.max_epochs, or start a new run.name\n")


def test_known_harmless_library_warnings_are_silenced_and_others_still_show(epoch_limited):
    stderr = epoch_limited[1].stderr
    for harmless in ("The `srun` command is available on your system but is not used",
                     "Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
                     "`isinstance(treespec, LeafSpec)` is deprecated", "`weights_only` was not set"):
        assert harmless not in stderr, stderr
    # another of Lightning's PossibleUserWarnings, like the srun hint
    assert "The number of training batches (10) is smaller than the logging interval" in stderr, stderr


def test_run_ending_at_an_epoch_end_at_its_first_step_checkpoint_leaves_one_last_ckpt(tmp_path):
    # max_steps = the batches of one epoch = the step checkpoint interval: ModelCheckpoint defers that step's save
    # past the epoch's validation, after last.ckpt was written at the batch's end
    run_dir = fit_in_process(tmp_path, "epoch-end", "trainer.max_steps=10", "run.every_n_train_steps=10")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_names(run_dir) == ["last.ckpt", "step-00000010.ckpt"]
    assert RunDir(run_dir).newest_complete_checkpoint() == (last, 10)
    final = weights(run_dir / "checkpoints" / "step-00000010.ckpt")
    assert all(torch.equal(final[k], weights(last)[k]) for k in final)


def test_run_resumed_from_a_last_ckpt_older_than_any_step_checkpoint_goes_on_writing_last_ckpt(tmp_path):
    run_dir = fit_in_process(tmp_path, "early", "trainer.max_steps=3", "run.every_n_train_steps=5")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_names(run_dir) == ["last.ckpt"] and checkpoint_step(last) == 3
    fit_in_process(tmp_path, "early", "trainer.max_steps=12", "run.every_n_train_steps=5", "run.keep_last_k=1",
                   resume=str(last))
    assert checkpoint_names(run_dir) == ["last.ckpt", "step-00000010.ckpt"]  # keep_last_k=1
    assert checkpoint_step(last) == 12


def test_last_checkpoint_refuses_a_bad_interval_and_a_preemption_saving_elsewhere(tmp_path):
    with pytest.raises(ValueError, match="every_n_train_steps must be >= 1, got 0"):
        LastCheckpoint(tmp_path / "last.ckpt", 0)
    with pytest.raises(ValueError, match="preemption saves .*other.ckpt, not .*last.ckpt"):
        LastCheckpoint(tmp_path / "last.ckpt", 5, Preemption(tmp_path / "other.ckpt"))


def test_resume_never_refuses_to_overwrite(reference):
    result = run_fit(*args(reference.parent, reference.name), "--resume", "never")
    assert result.returncode == 2 and "already holds checkpoints" in result.stderr


def test_resume_from_explicit_bad_path(tmp_path):
    bogus = tmp_path / "x.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    result = run_fit(*args(tmp_path, "r"), "--resume", str(bogus))
    assert result.returncode == 2 and "not a complete checkpoint" in result.stderr
    result = run_fit(*args(tmp_path, "r"), "--resume", str(tmp_path / "absent.ckpt"))
    assert result.returncode == 2 and "no such checkpoint" in result.stderr


def test_truncated_checkpoint_is_never_picked(reference, tmp_path):
    run_dir = tmp_path / "copy"
    (run_dir / "checkpoints").mkdir(parents=True)
    for p in (reference / "checkpoints").iterdir():
        (run_dir / "checkpoints" / p.name).write_bytes(p.read_bytes())
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (run_dir / "checkpoints" / ".step-00000125.ckpt.tmp-99").write_bytes(b"partial")  # an interrupted write
    assert RunDir(run_dir).newest_complete_checkpoint() == (run_dir / "checkpoints" / "step-00000120.ckpt", 120)
    newest = run_dir / "checkpoints" / "step-00000120.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])
    assert RunDir(run_dir).newest_complete_checkpoint() == (run_dir / "checkpoints" / "step-00000115.ckpt", 115)


@pytest.mark.parametrize(("sig", "stopped", "returncode"), [(signal.SIGUSR1, "preempted", 0),
                                                            (signal.SIGTERM, "preempted", 0),
                                                            (signal.SIGINT, "interrupted", 130)],
                         ids=["SIGUSR1", "SIGTERM", "SIGINT"])
def test_stop_signal_saves_stops_and_resumes_exactly(reference, tmp_path, sig, stopped, returncode):
    run_dir = tmp_path / "pre"
    proc = start_fit(*args(tmp_path, "pre"))
    # status.json follows the step checkpoints (every 5 steps) while the run goes on
    first = wait_for_status_step(run_dir, 5, proc)
    second = wait_for_status_step(run_dir, first["global_step"] + 5, proc)
    assert first["state"] == second["state"] == "running", (first, second)
    assert first["global_step"] % 5 == 0 and second["global_step"] % 5 == 0, (first, second)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == returncode, out
    state = status(run_dir)
    assert state["state"] == stopped and 10 <= state["global_step"] < MAX_STEPS, (state, out)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == state["global_step"]
    # the last lines: what happened, where the results are, and the command that resumes (the same one)
    *last, resume = out.splitlines()[-5:]
    assert last == [f"{stopped} at step {state['global_step']}", *results(run_dir)], out
    assert shlex.split(resume) == ["to", "resume:", sys.executable, str(REPO / "launch" / "fit.py"),
                                   *args(tmp_path, "pre")]
    result = run_fit(*args(tmp_path, "pre"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(run_dir) == {**status(run_dir), "state": "finished", "global_step": MAX_STEPS}
    ref, resumed = weights(reference / "checkpoints" / "last.ckpt"), weights(run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
    # the CSV log spans both runs, without the rows of steps the resumed run repeated
    # (plus the row Lightning flushes when it stops; it logs global step s under s - 1)
    steps, ref_steps = train_loss_steps(run_dir), train_loss_steps(reference)
    assert ref_steps == list(range(9, MAX_STEPS, 10))
    assert steps == sorted(set(steps)) and set(steps) - set(ref_steps) <= {state["global_step"] - 1}
    assert set(ref_steps) <= set(steps)


def test_ddp_two_processes_preempted_on_one_rank_resumes_to_max_steps(tmp_path):
    ddp = ["trainer.strategy=ddp", "trainer.devices=2"]
    run_dir = tmp_path / "ddp"
    proc = start_fit(*args(tmp_path, "ddp", *ddp))
    wait_for_step_checkpoint(run_dir, 10, proc, timeout=180)
    proc.send_signal(signal.SIGUSR1)  # rank 0 only: rank 1 must agree through the all-reduce
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    state = status(run_dir)
    assert state["state"] == "preempted" and state["global_step"] < MAX_STEPS, (state, out)
    result = run_fit(*args(tmp_path, "ddp", *ddp))
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(run_dir)["state"] == "finished" and status(run_dir)["global_step"] == MAX_STEPS
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == MAX_STEPS


def test_ddp_two_processes_ctrl_c_stops_both_ranks_saves_and_resumes(tmp_path):
    ddp = ["trainer.strategy=ddp", "trainer.devices=2"]
    run_dir = tmp_path / "ddp"
    proc = start_fit(*args(tmp_path, "ddp", *ddp), new_session=True)
    wait_for_status_step(run_dir, 10, proc, timeout=180)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: both ranks receive it
    # the output ends when every process writing to it (rank 1 is rank 0's child) has ended
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    state = status(run_dir)
    assert state["state"] == "interrupted" and 10 <= state["global_step"] < MAX_STEPS, (state, out)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == state["global_step"]
    saving = f"interrupted (SIGINT): saving {run_dir / 'checkpoints' / 'last.ckpt'} at step {state['global_step']}"
    assert out.count(saving) == 2 and "Traceback" not in out, out  # both ranks, at the same step
    result = run_fit(*args(tmp_path, "ddp", *ddp))
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(run_dir)["state"] == "finished" and status(run_dir)["global_step"] == MAX_STEPS
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == MAX_STEPS


def test_a_second_ctrl_c_ends_the_process_at_once():
    """The first Ctrl-C is recorded (over a preemption signal: a person stopping the run is not requeued); the second
    ends the process there and then, as the signal's default does."""
    code = ("import signal; from callbacks.signals import SignalFlag; flag = SignalFlag(); flag.install(); "
            "signal.raise_signal(signal.SIGUSR1); print(flag.received, flush=True); "
            "signal.raise_signal(signal.SIGINT); print(flag.received, flush=True); "
            "signal.raise_signal(signal.SIGINT); print('still running')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGINT, result.stdout + result.stderr
    assert result.stdout.split() == [str(int(signal.SIGUSR1)), str(int(signal.SIGINT))]

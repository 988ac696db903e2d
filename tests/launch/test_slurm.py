"""SLURM behaviour against a real single-node cluster (tests/slurm_cluster.py brings it up as root).

launch/submit.py -> sbatch -> srun launch/fit.py; `scancel -s USR1` (what `--signal=USR1@LEAD` does before the
time limit) -> last.ckpt at a step boundary, status.json "preempted", `scontrol requeue` -> the job pends again;
released, it resumes from last.ckpt and finishes at exactly trainer.max_steps.

Skipped (with the reason) only where no cluster can be had: not root, or the SLURM/munge binaries missing
(tests/install_slurm.sh installs them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.slurm_cluster import ClusterUnavailable, cancel_job, ensure_cluster, job_info, job_state, wait_for_job

pytestmark = pytest.mark.slurm

DEMO_CONFIG = REPO / "configs" / "demo" / "regression.yaml"
GPU_CONFIG = REPO / "configs" / "cpl" / "dtd.yaml"  # trainer_gpu.yaml (accelerator gpu, devices 1), no slurm preset
SUBMIT = REPO / "launch" / "submit.py"

# ~20 s of training on 2 idle CPU cores (3000 steps took 9-12 s there, 40-110 s beside other test runs): the
# signal goes out once the step-500 checkpoint exists and leaves 5000+ steps of margin before max_steps
MAX_STEPS = 6000
EVERY_N = 500
TRAINING = [f"trainer.max_steps={MAX_STEPS}", f"run.every_n_train_steps={EVERY_N}", "model.params.hidden_dim=512"]
TIME_LIMIT = "0:15:00"


@pytest.fixture(scope="module")
def partition() -> str:
    try:
        return ensure_cluster()
    except ClusterUnavailable as e:
        pytest.skip(f"no single-node SLURM cluster on this machine: {e.reason}")


def submit_env() -> dict[str, str]:
    """The job runs this checkout's code (sbatch exports the environment), whatever the venv's editable install points at."""
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


def run_submit(*args: str, config: Path = DEMO_CONFIG, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), "--config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=submit_env())


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_until(what: str, predicate, timeout: float, job_id: str, log: Path, poll: float = 0.5):
    """Poll `predicate` until it returns something truthy; fail with the job state and the log's tail if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; job {job_id} is {job_state(job_id)}; "
                        f"{log} ends with:\n{read_log(log)[-3000:]}")
        time.sleep(poll)


def wait_for_state(job_id: str, states: set, timeout: float, log: Path):
    try:
        return wait_for_job(job_id, states, timeout)
    except TimeoutError as e:
        pytest.fail(f"{e}; {log} ends with:\n{read_log(log)[-3000:]}")


def test_dry_run_prints_script_and_writes_nothing(tmp_path):
    root = tmp_path / "runs"
    result = run_submit("--dry-run", "--partition", "somewhere", "--time", TIME_LIMIT, f"run.root={root}",
                        "run.name=dry", "trainer.max_steps=123", "model.params.hidden_dim=48", timeout=60)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert any(re.fullmatch(r"#SBATCH --signal=USR1@\d+", line) for line in lines), script
    assert "#SBATCH --requeue" in lines, script
    assert "#SBATCH --partition=somewhere" in lines, script
    assert f"#SBATCH --time={TIME_LIMIT}" in lines, script
    assert f"#SBATCH --output={(root / 'dry' / 'logs').resolve()}/slurm-%j.out" in lines, script
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1, script
    for fragment in ("launch/fit.py", "--resume auto", "trainer.max_steps=123", "model.params.hidden_dim=48",
                     f"run.root={root}", "run.name=dry", str(DEMO_CONFIG)):
        assert fragment in srun[0], (fragment, srun[0])
    assert not root.exists(), "--dry-run wrote into the run root"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("time_limit", ["15", "1:00:00", "2-00:00:00"])
def test_time_limits_that_look_like_numbers_stay_text(tmp_path, time_limit):
    result = run_submit("--dry-run", "--time", time_limit, f"run.root={tmp_path}", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"#SBATCH --time={time_limit}" in result.stdout.splitlines()


def test_bad_time_limit_is_a_usage_error(tmp_path):
    result = run_submit("--dry-run", "--time", "soon", f"run.root={tmp_path}", timeout=60)
    assert result.returncode == 2 and "argument --time: 'soon' is not a SLURM time" in result.stderr


def submit_here(*args: str, config: Path = GPU_CONFIG) -> tuple[int, str, str]:
    """launch/submit.py in this process (its imports paid once), from the repository root: (exit code, stdout,
    stderr). The CPL configs name hub models (a CLIP, a BERTScore scorer), which submit looks up as fit does;
    offline, an existing directory stands in for them."""
    from launch import submit

    if config != DEMO_CONFIG:
        stand_in = REPO / "tests" / "fixtures"
        first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
        args = (*args[:first], f"model.params.clip.pretrained={stand_in}", f"model.params.scorer.model={stand_in}",
                *args[first:])  # beside the other key=value tokens: argparse takes them as one run
    out, err = io.StringIO(), io.StringIO()
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = submit.main(["--config", str(config), *args])
    finally:
        os.chdir(cwd)
    return rc, out.getvalue(), err.getvalue()


def sbatch_lines(script: str) -> dict[str, str]:
    """The #SBATCH options of a script: {"--gpus-per-node": "1", ...}."""
    options = (line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH "))
    return dict(option.partition("=")[::2] for option in options)


def test_a_gpu_trainer_without_a_slurm_section_gets_its_gpus_and_one_task_each(tmp_path):
    """configs/cpl/dtd.yaml lists no slurm preset: the job requests what trainer.accelerator gpu / devices use."""
    rc, out, err = submit_here("--dry-run", f"run.root={tmp_path}")
    assert rc == 0, err
    options = sbatch_lines(out)
    assert options["--gpus-per-node"] == "1" and options["--ntasks-per-node"] == "1" and options["--nodes"] == "1"
    rc, out, err = submit_here("--dry-run", f"run.root={tmp_path}", "trainer.devices=4", "trainer.num_nodes=2")
    assert rc == 0, err
    options = sbatch_lines(out)
    assert options["--gpus-per-node"] == "4" and options["--ntasks-per-node"] == "4" and options["--nodes"] == "2"
    assert "trainer.num_nodes=2 trainer.devices=4" in out
    # the flags decide over the config's trainer section, and the job's Trainer is told
    rc, out, err = submit_here("--dry-run", f"run.root={tmp_path}", "--gpus-per-node", "8", "--nodes", "3")
    assert rc == 0, err
    options = sbatch_lines(out)
    assert options["--gpus-per-node"] == "8" and options["--ntasks-per-node"] == "8" and options["--nodes"] == "3"
    assert out.rstrip().endswith("trainer.num_nodes=3 trainer.devices=8")
    assert list(tmp_path.iterdir()) == []


def test_a_cpu_trainer_requests_no_gpu(tmp_path):
    rc, out, err = submit_here("--dry-run", f"run.root={tmp_path}", "trainer.devices=2", "trainer.strategy=ddp",
                               config=DEMO_CONFIG)
    assert rc == 0, err
    options = sbatch_lines(out)
    assert "--gpus-per-node" not in options and options["--ntasks-per-node"] == "2"


@pytest.mark.parametrize("args, message", [
    (["--time", "0"], "submit.py: argument --time: '0' must be above 0 (SLURM reads 0 as no limit): give the job's "
                      "length, e.g. 24:00:00"),
    (["--time", "0-00:00"], "argument --time: '0-00:00' must be above 0"),
    (["--nodes", "0"], "submit.py: argument --nodes: must be >= 1"),
    (["--gpus-per-node", "0"], "--gpus-per-node 0 requests no GPU, but trainer.accelerator 'gpu' ("
                               f"{REPO / 'configs' / 'base' / 'trainer_gpu.yaml'}) runs on GPUs: pass "
                               "--gpus-per-node 1 or more, or trainer.accelerator=cpu"),
], ids=["time-0", "time-0-days", "nodes-0", "gpus-0-cuda-trainer"])
def test_zero_values_are_refused_in_one_line_and_nothing_is_written_or_submitted(tmp_path, args, message):
    """Not a dry run: a refusal comes before anything is written or handed to sbatch."""
    rc, out, err = submit_here(*args, f"run.root={tmp_path / 'runs'}")
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and message in err, err
    assert out == "" and list(tmp_path.iterdir()) == []


def test_a_slurm_section_that_disagrees_with_the_trainer_is_refused_naming_both_keys(tmp_path):
    config = tmp_path / "disagree.yaml"
    config.write_text(f"base: [{GPU_CONFIG}]\nslurm: {{gpus_per_node: 4, nodes: 2}}\n"
                      "trainer: {devices: 8, num_nodes: 1}\n")
    rc, out, err = submit_here("--dry-run", f"run.root={tmp_path}", config=config)
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        f"slurm.gpus_per_node 4 ({config}) and trainer.devices 8 ({config}) disagree (one task per GPU): make them "
        "equal, or pass --gpus-per-node G, which decides for both",
        f"slurm.nodes 2 ({config}) and trainer.num_nodes 1 ({config}) disagree: make them equal, or pass --nodes N, "
        "which decides for both"]
    # a flag decides for both; a flag beside a disagreeing trainer key on the command line is refused
    rc, out, err = submit_here("--dry-run", "--gpus-per-node", "4", "--nodes", "2", f"run.root={tmp_path}",
                               config=config)
    assert rc == 0, err
    assert sbatch_lines(out)["--gpus-per-node"] == "4"
    rc, out, err = submit_here("--dry-run", "--gpus-per-node", "2", "trainer.devices=8", f"run.root={tmp_path}")
    assert rc == 2 and err.startswith("--gpus-per-node 2 and trainer.devices 8 (command line) disagree"), err


def test_help_prints_the_whole_usage():
    result = subprocess.run([sys.executable, str(SUBMIT), "--help"], capture_output=True, text=True, timeout=60,
                            env=submit_env())
    assert result.returncode == 0, result.stderr
    usage = ("python launch/submit.py --config FILE [--test] [--nodes N] [--gpus-per-node G] [--time T] "
             "[--partition P]\n                            [--dry-run]")
    assert usage in result.stdout and "[key=value ...]" in result.stdout
    assert "`trainer.devices` GPUs per node (one task each)" in result.stdout
    assert "refused with one line naming both keys" in result.stdout


def test_scancel_stops_the_job_without_requeue(partition, tmp_path):
    """SIGTERM from a plain scancel saves (a step boundary, all ranks) but must not bring the job back."""
    root, name = tmp_path / "runs", "slurm-cancel"
    run_dir = root / name
    result = run_submit("--time", TIME_LIMIT, "--partition", partition, f"run.root={root}", f"run.name={name}",
                        *TRAINING)
    assert result.returncode == 0, f"submit failed:\n{result.stdout}\n{result.stderr}"
    job = re.search(r"submitted job (\d+)", result.stdout).group(1)
    log = run_dir / "logs" / f"slurm-{job}.out"
    try:
        wait_until("the first step checkpoint",
                   lambda: list((run_dir / "checkpoints").glob("step-*.ckpt")) if (run_dir / "checkpoints").is_dir() else [],
                   90, job, log, poll=0.25)
        assert subprocess.run(["scancel", job], timeout=30).returncode == 0
        wait_until("status.json state 'preempted'", lambda: read_status(run_dir).get("state") == "preempted", 60, job, log)
        assert wait_for_state(job, {"CANCELLED", None}, 60, log) in ("CANCELLED", None)
        time.sleep(3)  # a requeue would show up as PENDING by now
        assert job_state(job) in ("CANCELLED", None)
        assert "requeueing" not in read_log(log)
    finally:
        if job_state(job) not in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            cancel_job(job)


@pytest.mark.parametrize("ntasks", [1, 2], ids=["one-task", "ddp-two-tasks"])
def test_preempt_requeue_resume(partition, tmp_path, ntasks):
    """With 2 tasks, srun starts 2 DDP ranks (gloo); both get USR1 and both resume."""
    root, name = tmp_path / "runs", "slurm-preempt"
    run_dir = root / name
    started = time.monotonic()
    result = run_submit("--time", TIME_LIMIT, "--partition", partition, f"run.root={root}", f"run.name={name}",
                        *TRAINING, *(["trainer.strategy=ddp", "trainer.devices=2"] if ntasks == 2 else []))
    assert result.returncode == 0, f"submit failed:\n{result.stdout}\n{result.stderr}"
    assert f"#SBATCH --ntasks-per-node={ntasks}" in (run_dir / "slurm.sbatch").read_text()
    match = re.search(r"submitted job (\d+): (\S+)", result.stdout)
    assert match, result.stdout
    job = match.group(1)
    assert Path(match.group(2)) == run_dir / "slurm.sbatch"
    assert (run_dir / "slurm_jobs.txt").read_text().split() == [job]
    log = run_dir / "logs" / f"slurm-{job}.out"
    finished = False
    try:
        # 1. training is underway: a step checkpoint exists and the job still runs
        def training_underway():
            state = job_state(job)
            if state not in ("PENDING", "CONFIGURING", "RUNNING"):
                pytest.fail(f"job {job} is {state} before it was signalled; log:\n{read_log(log)[-3000:]}")
            ckpts = run_dir / "checkpoints"
            steps = sorted(ckpts.glob("step-*.ckpt")) if ckpts.is_dir() else []
            return steps and read_status(run_dir).get("state") == "running" and state == "RUNNING"

        wait_until("the first step checkpoint", training_underway, 90, job, log, poll=0.25)
        signalled_at = time.monotonic()

        # 2. the signal SLURM sends before the time limit; without --batch it goes to the srun step's tasks
        scancel = subprocess.run(["scancel", "-s", "USR1", job], capture_output=True, text=True, timeout=30)
        assert scancel.returncode == 0, scancel.stderr

        preempted = wait_until("status.json state 'preempted'",
                               lambda: (s := read_status(run_dir)).get("state") == "preempted" and s, 60, job, log)
        step = preempted["global_step"]
        assert 0 < step < MAX_STEPS, preempted
        assert preempted["slurm_job_id"] == job
        from launch.runs import checkpoint_step
        last = run_dir / "checkpoints" / "last.ckpt"
        assert checkpoint_step(last) == step

        # requeued: the same job id pends again (SLURM holds a requeued batch job back with a BeginTime)
        assert wait_for_state(job, {"PENDING"}, 60, log) == "PENDING"
        info = job_info(job)
        assert int(info.get("Restarts", "0")) >= 1, info
        assert f"preempted at step {step}; requeueing SLURM job {job}" in read_log(log)
        # nothing ran on while it pends: the preempted status and checkpoint stay as they were
        assert read_status(run_dir).get("state") == "preempted"
        requeued_at = time.monotonic()

        # 3. release it now instead of waiting out the BeginTime. Not within the second of the requeue: slurmd revokes
        # the first run's job credential then, and refuses a start whose credential is as old ("Killing non-startable
        # batch JobId=N: Job credential revoked", the job ends FAILED).
        time.sleep(max(0.0, 2.0 - (time.monotonic() - requeued_at)))
        release = subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True,
                                 text=True, timeout=30)
        assert release.returncode == 0, release.stderr
        # COMPLETED while slurmctld remembers it (MinJobAge); None once forgotten (no accounting for sacct)
        final = wait_for_state(job, {"COMPLETED", None}, 150, log)
        finished = True
        status = read_status(run_dir)
        text = read_log(log)
        assert status.get("state") == "finished", (status, text[-3000:])
        assert status.get("global_step") == MAX_STEPS, status
        assert checkpoint_step(last) == MAX_STEPS

        # the second start resumed from the preemption checkpoint; both starts share the appended log
        resumes = re.findall(r"resuming from (\S+)", text)
        assert resumes == [str(last)] * ntasks, (resumes, text[-3000:])  # every rank resumed
        assert text.index(f"requeueing SLURM job {job}") < text.index("resuming from")
        assert final in ("COMPLETED", None)
        print(f"\njob {job}: signalled after {signalled_at - started:.0f} s, preempted at step {step}, "
              f"pending again after {requeued_at - signalled_at:.0f} s (BeginTime {info.get('StartTime')}), "
              f"finished {time.monotonic() - requeued_at:.0f} s after release")
    finally:
        if not finished and job_state(job) not in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            cancel_job(job)

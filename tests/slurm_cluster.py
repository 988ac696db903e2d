"""A real single-node SLURM cluster on this host, for tests of the SLURM behaviour (sbatch, signals, requeue).

`ensure_cluster()` brings up munge, slurmctld and slurmd as root with a cgroup-free config (Debian packages
slurmctld, slurmd, slurm-client, munge; tests/install_slurm.sh installs them) and returns the partition name,
or raises `ClusterUnavailable` saying why it cannot. It is idempotent: when the cluster is up with the same
config it only checks that the node is usable, writes nothing and returns within a second.

A /etc/slurm/slurm.conf that this module did not write is never overwritten: if its controller answers,
that cluster is used as it is (its default partition); otherwise `ClusterUnavailable` is raised.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")  # where the Debian build looks (default_slurm_config_file)
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
STATE_DIR = Path("/var/lib/slurm/slurmctld")  # created by the Debian slurmctld package
SPOOL_DIR = Path("/var/lib/slurm/slurmd")  # created by the Debian slurmd package
LOG_DIR = Path("/var/log/slurm")
SLURMCTLD_PID = Path("/run/slurmctld.pid")
SLURMD_PID = Path("/run/slurmd.pid")
PARTITION = "debug"
MARKER = "# Written by worldbridge tests/slurm_cluster.py"

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("munge", "unmunge", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
UP_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
BAD_NODE_STATES = {"down", "drained", "draining", "drain", "fail", "failing", "unknown", "not_responding"}
FINISHED_JOB_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                       "DEADLINE", "PREEMPTED"}


class ClusterUnavailable(RuntimeError):
    """No single-node SLURM cluster can be had on this machine; the message says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _run(cmd: list[str], timeout: float = 20, check: bool = False) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ClusterUnavailable(f"`{' '.join(cmd)}` did not return within {timeout:.0f} s") from e
    if check and result.returncode != 0:
        raise ClusterUnavailable(f"`{' '.join(cmd)}` failed ({result.returncode}): "
                                 f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result


def short_hostname() -> str:
    result = subprocess.run(["hostname", "-s"], capture_output=True, text=True)
    name = result.stdout.strip() if result.returncode == 0 else ""
    return name or socket.gethostname().split(".")[0]


def _cpu_count() -> int:
    """The CPUs this machine gives the process. Not `nproc`: it answers OMP_NUM_THREADS when that is set, and a test
    run with OMP_NUM_THREADS=1 would declare a one-CPU node on which a two-task job never starts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _real_memory_mb() -> int:
    """A bit under the machine's memory: slurmd drains a node whose RealMemory exceeds what it finds."""
    total_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_kb = int(line.split()[1])
    return max(1, int(total_kb / 1024 * 0.95))


def render_config(host: str, cpus: int, memory_mb: int) -> str:
    return "\n".join([
        MARKER + "; rewritten when it differs from what that module would write.",
        "ClusterName=worldbridge",
        # loopback addresses: a single-node cluster needs no name resolution of the host (fresh containers)
        f"SlurmctldHost={host}(127.0.0.1)",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={STATE_DIR}",
        f"SlurmdSpoolDir={SPOOL_DIR}",
        f"SlurmctldPidFile={SLURMCTLD_PID}",
        f"SlurmdPidFile={SLURMD_PID}",
        f"SlurmctldLogFile={LOG_DIR / 'slurmctld.log'}",
        f"SlurmdLogFile={LOG_DIR / 'slurmd.log'}",
        # cgroup-free: containers and CI machines rarely let slurmd manage cgroups
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "SlurmdTimeout=300",
        "KillWait=30",
        "MinJobAge=300",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _significant_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(" ".join(line.split()))
    return lines


def config_equivalent(existing: str, wanted: str) -> bool:
    return _significant_lines(existing) == _significant_lines(wanted)


def _pid_alive(pid_file: Path, name: str) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == name else None


def _munge_works() -> bool:
    try:
        encoded = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if encoded.returncode != 0:
            return False
        decoded = subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True, timeout=10)
        return decoded.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _controller_up() -> bool:
    try:
        result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and " is UP" in result.stdout


def _ensure_munge() -> None:
    if _munge_works():
        return
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("mungekey"):
            _run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"], check=True)
        else:
            MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    # what systemd's RuntimeDirectory=munge would provide
    MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
    MUNGE_RUN_DIR.chmod(0o755)
    # --force: start even when a stale socket of a dead munged is left behind
    _run(["runuser", "-u", "munge", "--", DAEMONS["munged"], "--force"], check=True)
    deadline = time.monotonic() + 10
    while not _munge_works():
        if time.monotonic() > deadline:
            raise ClusterUnavailable("munged started but `munge -n | unmunge` still fails; see /var/log/munge/munged.log")
        time.sleep(0.2)


def _stop(pid_file: Path, name: str, timeout: float = 15) -> None:
    """Stop a daemon this module started (found by its pid file), so that it rereads a rewritten config."""
    pid = _pid_alive(pid_file, name)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid_file, name) == pid and Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{name} (pid {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.2)


def _node_state(host: str) -> str:
    result = _run(["sinfo", "-h", "-N", "-n", host, "-o", "%T"])
    states = result.stdout.split()
    return states[0].lower() if result.returncode == 0 and states else ""


def _wait_node_up(host: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_resume = 0.0
    state = ""
    while time.monotonic() < deadline:
        if not _controller_up():
            time.sleep(0.5)
            continue
        state = _node_state(host)
        if state in UP_NODE_STATES:
            return
        base = state.rstrip("*~#!%$@^-+")
        if (state.endswith("*") or base in BAD_NODE_STATES or "drain" in base) and time.monotonic() - last_resume > 3:
            # a node that was down when slurmctld last saved its state stays down until resumed
            _run(["scontrol", "update", f"NodeName={host}", "State=RESUME"])
            last_resume = time.monotonic()
        time.sleep(0.5)
    reason = _run(["sinfo", "-h", "-N", "-n", host, "-o", "%T %E"]).stdout.strip()
    raise ClusterUnavailable(f"node {host} not idle after {timeout:.0f} s (sinfo: '{reason or state}'); "
                             f"see {LOG_DIR}/slurmctld.log and {LOG_DIR}/slurmd.log")


def _default_partition() -> str:
    result = _run(["sinfo", "-h", "-o", "%P %a"])
    partitions = [line.split() for line in result.stdout.splitlines() if line.strip()]
    for name, avail in partitions:
        if name.endswith("*") and avail == "up":
            return name.rstrip("*")
    for name, avail in partitions:
        if avail == "up":
            return name.rstrip("*")
    raise ClusterUnavailable(f"the running SLURM cluster has no partition that is up (sinfo: {result.stdout.strip()!r})")


def ensure_cluster(timeout: float = 60) -> str:
    """Bring up (if needed) a single-node SLURM cluster on this host; return its partition name."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("not root: starting munged, slurmctld and slurmd needs root "
                                 "(run the tests as root, e.g. in a container, after tests/install_slurm.sh)")
    missing = [p for p in DAEMONS.values() if not os.access(p, os.X_OK)]
    missing += [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        raise ClusterUnavailable(f"SLURM/munge binaries missing: {', '.join(missing)} "
                                 "(run tests/install_slurm.sh: Debian packages slurmctld slurmd slurm-client munge)")

    host = short_hostname()
    wanted = render_config(host, _cpu_count(), _real_memory_mb())
    existing = SLURM_CONF.read_text() if SLURM_CONF.is_file() else None
    if existing is not None and MARKER not in existing:
        # somebody else's cluster: use it if it is up, never overwrite its config
        if _munge_works() and _controller_up():
            return _default_partition()
        raise ClusterUnavailable(f"{SLURM_CONF} was not written by tests/slurm_cluster.py and its controller does "
                                 "not answer; not overwriting it")

    _ensure_munge()
    if existing is None or not config_equivalent(existing, wanted):
        _stop(SLURMD_PID, "slurmd")
        _stop(SLURMCTLD_PID, "slurmctld")
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        tmp = SLURM_CONF.with_name(f".{SLURM_CONF.name}.tmp-{os.getpid()}")
        tmp.write_text(wanted)
        tmp.chmod(0o644)
        os.replace(tmp, SLURM_CONF)
    for directory in (STATE_DIR, SPOOL_DIR, LOG_DIR):
        directory.mkdir(parents=True, exist_ok=True)

    # without -D both daemonise; they write their pid files themselves
    if _pid_alive(SLURMCTLD_PID, "slurmctld") is None:
        _run([DAEMONS["slurmctld"]], check=True)
    if _pid_alive(SLURMD_PID, "slurmd") is None:
        _run([DAEMONS["slurmd"]], check=True)
    _wait_node_up(host, timeout)
    return PARTITION


def job_state(job_id: str | int) -> str | None:
    """The job's state (PENDING, RUNNING, COMPLETED, ...), or None once slurmctld has forgotten it
    (MinJobAge after it ended; without accounting sacct knows nothing either)."""
    result = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=20)
    match = re.search(r"\bJobState=(\S+)", result.stdout) if result.returncode == 0 else None
    if match:
        return match.group(1)
    result = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], capture_output=True,
                            text=True, timeout=20)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.split()[0]
    if shutil.which("sacct"):
        result = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], capture_output=True,
                                text=True, timeout=20)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.split()[0]
    return None


def job_info(job_id: str | int) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Reason, Restarts, StartTime, ...); empty if unknown."""
    result = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))


def cancel_job(job_id: str | int) -> None:
    """Cancel for good. A plain `scancel` is not enough for a worldbridge job: launch/fit.py takes the SIGTERM
    for a preemption and runs `scontrol requeue` on its own job, which SLURM honours even while the job is
    being cancelled; with Requeue=0 that requeue is refused."""
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "Requeue=0"], capture_output=True, timeout=20)
    subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=20)


def wait_for_job(job_id: str | int, states: str | set[str] | list[str] | tuple[str, ...], timeout: float,
                 poll: float = 0.5) -> str | None:
    """Poll until the job is in one of `states` (None in `states` matches a job slurmctld no longer knows);
    return that state. Raises TimeoutError naming the last state seen, or when the job finished in a state
    that was not asked for."""
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    state = None
    while True:
        state = job_state(job_id)
        if state in wanted:
            return state
        if state in FINISHED_JOB_STATES:
            raise TimeoutError(f"job {job_id} ended {state}, expected one of {sorted(map(str, wanted))}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f} s, expected one of "
                               f"{sorted(map(str, wanted))}")
        time.sleep(poll)

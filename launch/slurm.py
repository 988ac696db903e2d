"""The `slurm` section and the sbatch script that runs launch/fit.py under SLURM with requeue on preemption."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launch.config import ConfigIssue, LoadedConfig, check_settings

TIME_PATTERN = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # minutes, H:M:S, D-H[:M[:S]] as sbatch takes them


@dataclass
class SlurmSettings:
    """The `slurm` section (command-line flags of launch/submit.py override it)."""

    nodes: int = 1
    gpus_per_node: int = 0  # one task per GPU; 0 = CPU job with trainer.devices tasks per node
    cpus_per_task: int = 1
    time: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    signal_lead_s: int = 120  # SIGUSR1 this many seconds before the time limit
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load, venv activation)
    sbatch_args: list[str] = field(default_factory=list)  # extra "--key=value" sbatch options

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.nodes < 1:
            found.append(("nodes", "must be >= 1"))
        if self.gpus_per_node < 0:
            found.append(("gpus_per_node", "must be >= 0"))
        if self.cpus_per_task < 1:
            found.append(("cpus_per_task", "must be >= 1"))
        if not TIME_PATTERN.match(self.time):
            found.append(("time", f"'{self.time}' is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)"))
        if self.signal_lead_s < 1:
            found.append(("signal_lead_s", "must be >= 1"))
        for i, arg in enumerate(self.sbatch_args):
            if not arg.startswith("--"):
                found.append((f"sbatch_args.{i}", f"'{arg}' is not an sbatch option (--key=value)"))
        return found


def check_slurm_section(loaded: LoadedConfig, issues: list[ConfigIssue]) -> None:
    section = loaded.cfg.get("slurm")
    if section is None:
        return
    check_settings(SlurmSettings, section, "slurm", loaded, issues)


def tasks_per_node(settings: SlurmSettings, trainer_devices: object) -> int:
    if settings.gpus_per_node > 0:
        return settings.gpus_per_node
    return trainer_devices if isinstance(trainer_devices, int) and trainer_devices > 0 else 1


def render_sbatch(settings: SlurmSettings, *, job_name: str, run_dir: Path, config: Path, overrides: list[str],
                  trainer_devices: object, workdir: Path, fit_script: Path, python: str = sys.executable) -> str:
    ntasks = tasks_per_node(settings, trainer_devices)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={settings.nodes}",
        f"#SBATCH --ntasks-per-node={ntasks}",
        f"#SBATCH --cpus-per-task={settings.cpus_per_task}",
        f"#SBATCH --time={settings.time}",
        f"#SBATCH --signal=USR1@{settings.signal_lead_s}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={run_dir.resolve() / 'logs' / 'slurm-%j.out'}",
        f"#SBATCH --chdir={workdir.resolve()}",
    ]
    if settings.gpus_per_node > 0:
        lines.append(f"#SBATCH --gpus-per-node={settings.gpus_per_node}")
    for opt in ("partition", "account", "qos", "mem"):
        if getattr(settings, opt):
            lines.append(f"#SBATCH --{opt}={getattr(settings, opt)}")
    lines += [f"#SBATCH {arg}" for arg in settings.sbatch_args]
    lines += ["", "set -eo pipefail", "export PYTHONUNBUFFERED=1", *settings.setup, ""]
    # the signal goes to the srun tasks (not the batch shell), so every rank records it
    command = [python, str(fit_script.resolve()), "--config", str(config.resolve()), "--resume", "auto", *overrides]
    lines.append("srun --kill-on-bad-exit=1 " + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines) + "\n"

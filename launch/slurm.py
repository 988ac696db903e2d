"""The `slurm` section, the shape of the job launch/submit.py asks SLURM for, and the sbatch script that runs
launch/fit.py under SLURM with requeue on preemption.

The job requests what its Trainer will use (`job_shape`): one task per GPU when the trainer runs on GPUs
(`trainer.accelerator` gpu or cuda: `trainer.devices` GPUs per node), else `trainer.devices` CPU processes per node,
on `trainer.num_nodes` nodes. `slurm.gpus_per_node` / `slurm.nodes` are needed only where the trainer does not say
(`trainer.devices: auto`); set beside the trainer's values they must agree with them, or the submission is refused
with one line naming both keys. The flags `--gpus-per-node` / `--nodes` decide for both: the job's Trainer is given
their values.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Any, Mapping

from omegaconf import OmegaConf

from datamodules.errors import UsageError
from launch.config import COMMAND_LINE, ConfigIssue, LoadedConfig, check_settings

TIME_PATTERN = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # minutes, H:M:S, D-H[:M[:S]] as sbatch takes them
GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass
class SlurmSettings:
    """The `slurm` section (command-line flags of launch/submit.py override it)."""

    nodes: int | None = None  # None: trainer.num_nodes (default 1)
    gpus_per_node: int | None = None  # None: what the trainer uses; 0: a CPU job (trainer.devices tasks per node)
    cpus_per_task: int = 1
    time: str = "01:00:00"  # the job's length; it requeues itself signal_lead_s before it and resumes
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    signal_lead_s: int = 120  # SIGUSR1 this many seconds before the time limit
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load, venv activation)
    sbatch_args: list[str] = field(default_factory=list)  # extra "--key=value" sbatch options

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.nodes is not None and self.nodes < 1:
            found.append(("nodes", "must be >= 1"))
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            found.append(("gpus_per_node", "must be >= 0"))
        if self.cpus_per_task < 1:
            found.append(("cpus_per_task", "must be >= 1"))
        if not TIME_PATTERN.match(self.time):
            found.append(("time", f"'{self.time}' is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)"))
        elif not any(int(number) for number in re.findall(r"\d+", self.time)):
            found.append(("time", f"'{self.time}' must be above 0 (SLURM reads 0 as no limit): give the job's length, "
                                  f"e.g. 24:00:00"))
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


@dataclass(frozen=True)
class JobShape:
    """What the job requests; its Trainer gets `trainer.num_nodes=nodes` and `trainer.devices=tasks_per_node`."""

    nodes: int
    gpus_per_node: int  # 0: a CPU job
    tasks_per_node: int  # one per GPU, else one per CPU process of the trainer


def device_count(devices: Any) -> int | None:
    """`trainer.devices` as a number of devices per node; None where it names none ('auto', -1: all a node has)."""
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:  # "0,1": device indices
            return len([part for part in text.split(",") if part.strip()])
        return int(text) if text.isdigit() else None
    if isinstance(devices, (list, tuple)):  # device indices
        return len(devices)
    return None


def job_shape(loaded: LoadedConfig, flags: Mapping[str, str]) -> JobShape:
    """The nodes, GPUs and tasks per node the job needs for its trainer section (see the module docstring); a
    UsageError with one line per disagreement. `flags`: the `slurm.*` keys a command-line flag set, with the flag
    (`{"slurm.gpus_per_node": "--gpus-per-node"}`); those decide over the trainer section of the files."""
    slurm, trainer = (OmegaConf.to_container(loaded.cfg.get(section) or OmegaConf.create({}), resolve=True)
                      for section in ("slurm", "trainer"))

    def named(key: str, value: Any) -> str:
        if key in flags:
            return f"{flags[key]} {value}"
        return f"{key} {value!r} ({loaded.source_of(key) if key in loaded.sources else 'not set'})"

    def decides(slurm_key: str, trainer_key: str) -> bool:
        """The slurm value stands over a disagreeing trainer value: a flag over the files' trainer section."""
        return slurm_key in flags and loaded.sources.get(trainer_key) != COMMAND_LINE

    problems = []
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    devices = trainer.get("devices", "auto")
    count = device_count(devices)
    gpus = slurm.get("gpus_per_node")
    gpus_named = named("slurm.gpus_per_node", gpus) if gpus is not None else named("trainer.devices", devices)
    if gpus is None and accelerator in GPU_ACCELERATORS:
        if count is None:
            problems.append(f"{named('trainer.devices', devices)} does not say how many GPUs a node needs "
                            f"(trainer.accelerator {accelerator}): pass --gpus-per-node G or trainer.devices=G")
        gpus = count
    if gpus is not None and gpus > 0 and accelerator not in (*GPU_ACCELERATORS, "auto"):
        problems.append(f"{gpus_named} requests GPUs, but {named('trainer.accelerator', accelerator)} does not "
                        f"use them: set trainer.accelerator=gpu, or request none (--gpus-per-node 0)")
    elif gpus == 0 and accelerator in GPU_ACCELERATORS:
        problems.append(f"{gpus_named} requests no GPU, but {named('trainer.accelerator', accelerator)} runs on "
                        f"GPUs: pass --gpus-per-node 1 or more, or trainer.accelerator=cpu")
    elif (gpus is not None and gpus > 0 and count is not None and count != gpus
          and not decides("slurm.gpus_per_node", "trainer.devices")):
        problems.append(f"{named('slurm.gpus_per_node', gpus)} and {named('trainer.devices', devices)} disagree "
                        f"(one task per GPU): make them equal, or pass --gpus-per-node G, which decides for both")
    nodes, num_nodes = slurm.get("nodes"), trainer.get("num_nodes")
    if (nodes is not None and num_nodes is not None and nodes != num_nodes
            and not decides("slurm.nodes", "trainer.num_nodes")):
        problems.append(f"{named('slurm.nodes', nodes)} and {named('trainer.num_nodes', num_nodes)} disagree: make "
                        f"them equal, or pass --nodes N, which decides for both")
    if problems:
        raise UsageError(problems)
    gpus = gpus or 0
    return JobShape(nodes=nodes or num_nodes or 1, gpus_per_node=gpus,
                    tasks_per_node=gpus if gpus > 0 else (count if count and count > 0 else 1))


def render_sbatch(settings: SlurmSettings, shape: JobShape, *, job_name: str, run_dir: Path, config: Path,
                  overrides: list[str], workdir: Path, script: Path, subcommand: Sequence[str] = (),
                  script_options: Sequence[str] = ("--resume", "auto"), python: str = sys.executable) -> str:
    """The job script: srun of `python script [subcommand] --config CONFIG [script_options] [overrides]`
    (launch/fit.py --resume auto by default; launch/evaluate.py test for a test loop)."""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={shape.nodes}",
        f"#SBATCH --ntasks-per-node={shape.tasks_per_node}",
        f"#SBATCH --cpus-per-task={settings.cpus_per_task}",
        f"#SBATCH --time={settings.time}",
        f"#SBATCH --signal=USR1@{settings.signal_lead_s}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={run_dir.resolve() / 'logs' / 'slurm-%j.out'}",
        f"#SBATCH --chdir={workdir.resolve()}",
    ]
    if shape.gpus_per_node > 0:
        lines.append(f"#SBATCH --gpus-per-node={shape.gpus_per_node}")
    for opt in ("partition", "account", "qos", "mem"):
        if getattr(settings, opt):
            lines.append(f"#SBATCH --{opt}={getattr(settings, opt)}")
    lines += [f"#SBATCH {arg}" for arg in settings.sbatch_args]
    lines += ["", "set -eo pipefail", "export PYTHONUNBUFFERED=1", *settings.setup, ""]
    # the signal goes to the srun tasks (not the batch shell), so every rank records it
    command = [python, str(script.resolve()), *subcommand, "--config", str(config.resolve()), *script_options,
               *overrides]
    lines.append("srun --kill-on-bad-exit=1 " + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines) + "\n"

"""Train a model from a YAML config: `python launch/fit.py --config FILE [--resume auto|never|PATH] [--dry-run] [key=value ...]`.

The whole config is checked before anything is built; problems are printed one per line and exit with code 2.
A preemption (SIGUSR1, SIGTERM) or Ctrl-C saves last.ckpt at the next step boundary and stops, with exit code 0, or
130 after Ctrl-C (a second Ctrl-C stops at once); callbacks/preemption.py.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from callbacks.signals import SignalFlag

# Installed before the heavy imports: a preemption signal or a Ctrl-C that arrives while the job is still starting is
# recorded (and acted upon at the first step boundary) instead of killing the process.
SIGNAL_FLAG = SignalFlag()
SIGNAL_FLAG.install()

from omegaconf import OmegaConf  # noqa: E402

from launch import cli  # noqa: E402
from launch.config import (  # noqa: E402
    ConfigIssue, LoadedConfig, check_nested, check_sections, check_target_node, load_config, targets_in)
from launch.known_warnings import silence_harmless_warnings  # noqa: E402

log = logging.getLogger("worldbridge.fit")


PROG = "fit.py"
INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--resume", default="auto",
                        help="auto: newest complete checkpoint of the run, else a fresh start (default); "
                             "never: fresh start; or a checkpoint path")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and what would be built")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
    return parser.parse_args(argv)


def check_config(loaded: LoadedConfig) -> None:
    """Every problem of the config at once, without building anything heavy."""
    from launch.slurm import check_slurm_section
    from launch.trainer import check_run_section, check_trainer_section, raise_if

    issues: list[ConfigIssue] = []
    cfg = loaded.cfg
    check_sections(loaded, issues)
    check_run_section(loaded, issues)
    for section in ("model", "data"):
        if cfg.get(section) is None:
            issues.append(ConfigIssue(str(loaded.path), section, "missing section (target + params)"))
        else:
            check_target_node(cfg[section], section, loaded, issues)
    callbacks = cfg.get("callbacks") or []
    if not hasattr(callbacks, "__len__") or hasattr(callbacks, "keys"):
        issues.append(ConfigIssue(loaded.source_of("callbacks"), "callbacks", "must be a list of target/params entries"))
    else:
        for i, node in enumerate(callbacks):
            if not hasattr(node, "keys") or "target" not in node:
                issues.append(ConfigIssue(loaded.source_of(f"callbacks.{i}"), f"callbacks.{i}", "must be a target/params entry"))
            else:
                check_nested(node, f"callbacks.{i}", loaded, issues)
    check_trainer_section(loaded, issues)
    check_slurm_section(loaded, issues)
    raise_if(issues)


@dataclass
class PreparedRun:
    """Everything a fit needs, built from a checked config; nothing has been written yet."""

    loaded: LoadedConfig
    run_dir: Any
    ckpt_path: Path | None
    resume_step: int | None
    model: Any
    datamodule: Any
    trainer: Any
    preemption: Any


def prepare_run(loaded: LoadedConfig, resume: str | None) -> PreparedRun:
    """Build the run of a checked config: resume decision, seeded model and data, trainer. `resume` None: no
    checkpoint is looked for (a test loop, which resumes from its item files instead)."""
    import lightning as L

    from launch.config import build
    from launch.runs import RunDir, RunSettings, resolve_resume
    from launch.trainer import build_trainer

    run_settings = RunSettings(**OmegaConf.to_container(loaded.cfg.run, resolve=True))
    run_dir = RunDir.from_settings(run_settings)
    ckpt_path, resume_step = (resolve_resume(run_dir, resume) if resume is not None else None) or (None, None)
    L.seed_everything(run_settings.seed, workers=True, verbose=False)
    model, datamodule = build(loaded, "model"), build(loaded, "data")
    trainer, preemption = build_trainer(loaded, run_settings, run_dir, SIGNAL_FLAG, resume_step=resume_step)
    return PreparedRun(loaded, run_dir, ckpt_path, resume_step, model, datamodule, trainer, preemption)


def fit_run(prepared: PreparedRun, resume_command: str | None = None) -> int:
    """Fit, keeping status.json current, and say where the results are; after a preemption, requeue the SLURM job if it
    asked for it. Exit code 0, or INTERRUPTED_EXIT after Ctrl-C. `resume_command` is printed when the run stopped
    early (default: run the same command again)."""
    from launch.trainer import slurm_job_id, stopping_limit

    trainer, run_dir, ckpt_path, preemption = prepared.trainer, prepared.run_dir, prepared.ckpt_path, prepared.preemption
    if trainer.is_global_zero:
        run_dir.save_config(OmegaConf.to_yaml(prepared.loaded.cfg))
        run_dir.write_status("running", global_step=prepared.resume_step or 0,
                             resumed_from=str(ckpt_path) if ckpt_path else None, slurm_job_id=slurm_job_id())
    if ckpt_path:
        log.warning("resuming from %s", ckpt_path)

    try:
        trainer.fit(prepared.model, datamodule=prepared.datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException:
        if trainer.is_global_zero:
            run_dir.write_status("failed", global_step=trainer.global_step)
        raise

    step = preemption.stopped_at_step
    to_resume = f"to resume: {resume_command or 'run the same command again'}"
    if step is None:
        if trainer.is_global_zero:
            limit = stopping_limit(trainer)
            run_dir.write_status("finished", global_step=trainer.global_step, stopped_by=limit)
            report(run_dir, f"finished at step {trainer.global_step}" + (f" ({limit} reached)" if limit else ""))
        return 0
    if preemption.interrupted:
        if trainer.is_global_zero:
            run_dir.write_status("interrupted", global_step=step)
            report(run_dir, f"interrupted at step {step}", to_resume)
        return INTERRUPTED_EXIT
    job = slurm_job_id()
    if trainer.is_global_zero:
        run_dir.write_status("preempted", global_step=step, slurm_job_id=job)
        if job and preemption.stop_signal == signal.SIGUSR1:
            # SIGUSR1 is the time-limit warning of `--signal=USR1@LEAD`; SIGTERM comes from scancel (the user
            # wants the job gone) or from SLURM's own preemption (which requeues by itself): no requeue then.
            # Last action of the job: requeueing makes SLURM stop this allocation.
            report(run_dir, f"preempted at step {step}; requeueing SLURM job {job}")
            subprocess.run(["scontrol", "requeue", job], check=False)
        else:
            report(run_dir, f"preempted at step {step}", to_resume)
    return 0


def report(run_dir: Any, headline: str, *after: str) -> None:
    """The last lines of a fit: what happened, where the results are, then `after`."""
    print("\n".join([headline, *run_dir.result_lines(), *after]), flush=True)


def resume_command(args: argparse.Namespace) -> str:
    """The command that resumes this run: the one typed, with --resume auto (the default) for any --resume given."""
    invocation = sys.orig_argv[:len(sys.orig_argv) - len(sys.argv) + 1]  # the interpreter, its options, this script
    return shlex.join([*invocation, "--config", args.config, *args.overrides])


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, args.overrides)
    check_config(loaded)
    if args.dry_run:
        print(OmegaConf.to_yaml(loaded.cfg).rstrip())
        print("\n# objects this config builds:")
        for key, target in targets_in(loaded.cfg):
            print(f"#   {key}: {target}")
        return 0
    try:
        return fit_run(prepare_run(loaded, args.resume), resume_command(args))
    finally:
        close_process_group()


def close_process_group() -> None:
    """Close the DDP process group before the interpreter exits: left to static destructors, gloo's threads can abort
    a finished rank ("terminate called without an active exception"), which SLURM then reports as a failed job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    silence_harmless_warnings()
    return cli.main(lambda: run(parse_args(argv)), PROG)


if __name__ == "__main__":
    sys.exit(main())

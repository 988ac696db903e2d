"""Submit a training run to SLURM: `python launch/submit.py --config FILE [--nodes N] [--gpus-per-node G]
[--time T] [--partition P] [--dry-run] [key=value ...]`.

Writes `<run dir>/slurm.sbatch` (srun with one task per GPU, SIGUSR1 before the time limit, --requeue) and
submits it with sbatch. The job resumes from its newest checkpoint every time SLURM (re)starts it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from datamodules.errors import UsageError
from datamodules.files import atomic_write_text
from launch import cli
from launch.config import load_config
from launch.fit import check_config
from launch.runs import RunDir, RunSettings
from launch.slurm import SlurmSettings, render_sbatch

REPO_ROOT = Path(__file__).resolve().parent.parent


PROG = "submit.py"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--gpus-per-node", type=int)
    parser.add_argument("--time")
    parser.add_argument("--partition")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script; write and submit nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, passed on to launch/fit.py")
    return parser.parse_args(argv)


def submit(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in (("nodes", "nodes"), ("gpus_per_node", "gpus_per_node"), ("time", "time"), ("partition", "partition")):
        value = getattr(args, flag)
        if value is not None:
            # quoted: OmegaConf would read 10:00 (a time) as the integer 600
            overrides.append(f"slurm.{key}='{value}'" if isinstance(value, str) else f"slurm.{key}={value}")
    loaded = load_config(args.config, overrides)
    if loaded.cfg.get("slurm") is None:
        loaded.cfg.slurm = {}
    check_config(loaded)
    settings = SlurmSettings(**OmegaConf.to_container(loaded.cfg.slurm, resolve=True))
    # the job's Trainer must match its allocation
    trainer_devices = loaded.cfg.get("trainer", {}).get("devices", 1)
    devices = settings.gpus_per_node if settings.gpus_per_node > 0 else trainer_devices
    overrides += [f"trainer.num_nodes={settings.nodes}", f"trainer.devices={devices}"]
    run = RunSettings(**OmegaConf.to_container(loaded.cfg.run, resolve=True))
    run_dir = RunDir.from_settings(run)
    script = render_sbatch(settings, job_name=run.name, run_dir=run_dir.path, config=Path(args.config), overrides=overrides,
                           trainer_devices=devices, workdir=Path.cwd(), fit_script=REPO_ROOT / "launch" / "fit.py")
    if args.dry_run:
        print(script, end="")
        return 0
    if shutil.which("sbatch") is None:
        raise UsageError("sbatch not found on PATH: run launch/submit.py on a SLURM login node (or use --dry-run)")
    run_dir.logs.mkdir(parents=True, exist_ok=True)
    script_path = run_dir.path / "slurm.sbatch"
    atomic_write_text(script_path, script)
    result = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"sbatch failed ({result.returncode}): {result.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = result.stdout.strip().split(";")[0]
    with open(run_dir.path / "slurm_jobs.txt", "a") as f:
        f.write(job_id + "\n")
    print(f"submitted job {job_id}: {script_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(lambda: submit(parse_args(argv)), PROG)


if __name__ == "__main__":
    sys.exit(main())

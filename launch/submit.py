"""Submit a training run (or a test loop) to SLURM.

    python launch/submit.py --config FILE [--test] [--nodes N] [--gpus-per-node G] [--time T] [--partition P]
                            [--dry-run] [key=value ...]

Writes `<run dir>/slurm.sbatch` (srun with one task per GPU, SIGUSR1 before the time limit, --requeue) and
submits it with sbatch. The job resumes from its newest checkpoint every time SLURM (re)starts it. With --test the
job runs `launch/evaluate.py test` instead of fit.py: each rank scores its share of data.test, and a requeued job
computes only the items not finished before.

The job requests what the config's trainer section uses: `trainer.devices` GPUs per node (one task each) when
`trainer.accelerator` is gpu or cuda, else `trainer.devices` CPU processes per node, on `trainer.num_nodes`
nodes. `--gpus-per-node` and `--nodes` decide instead, and the job's Trainer is given their values. A `slurm`
section (`slurm.gpus_per_node`, `slurm.nodes`, ...; configs/base/slurm.yaml) that disagrees with the trainer
section is refused with one line naming both keys. `key=value` overrides are passed on to launch/fit.py.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import OmegaConf

from datamodules.errors import UsageError
from datamodules.files import atomic_write_text
from launch import cli
from launch.config import load_config
from launch.fit import check_config
from launch.runs import RunDir, RunSettings
from launch.slurm import SlurmSettings, job_shape, render_sbatch

REPO_ROOT = Path(__file__).resolve().parent.parent


PROG = "submit.py"
FLAGS = ("nodes", "gpus_per_node", "time", "partition")  # each sets slurm.<name>


def checked(name: str, convert: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type for the flag that sets slurm.<name>: the value converted, then checked as the slurm section
    checks it (an argparse error naming the flag)."""
    def parse(text: str) -> object:
        value = convert(text)
        for field, message in SlurmSettings(**{name: value}).problems():
            if field == name:
                raise argparse.ArgumentTypeError(message)
        return value

    parse.__name__ = convert.__name__  # argparse names it in "invalid int value"
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--nodes", type=checked("nodes", int), metavar="N",
                        help="nodes (default: trainer.num_nodes, else 1)")
    parser.add_argument("--gpus-per-node", type=checked("gpus_per_node", int), metavar="G",
                        help="GPUs per node, one task each; 0: a CPU job (default: trainer.devices on a GPU trainer)")
    parser.add_argument("--time", type=checked("time", str), metavar="T",
                        help=f"time limit: minutes, HH:MM:SS or D-HH:MM:SS (default: slurm.time, else "
                             f"{SlurmSettings.time}); the job requeues itself before it and resumes")
    parser.add_argument("--partition", metavar="P")
    parser.add_argument("--test", action="store_true",
                        help="run the model's test loop (launch/evaluate.py test) instead of a fit")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script; write and submit nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, passed on to launch/fit.py")
    return parser.parse_args(argv)


def submit(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    flags = {}
    for name in FLAGS:
        value = getattr(args, name)
        if value is not None:
            # quoted: OmegaConf would read 10:00 (a time) as the integer 600
            overrides.append(f"slurm.{name}='{value}'" if isinstance(value, str) else f"slurm.{name}={value}")
            flags[f"slurm.{name}"] = "--" + name.replace("_", "-")
    loaded = load_config(args.config, overrides)
    if loaded.cfg.get("slurm") is None:
        loaded.cfg.slurm = {}
    check_config(loaded)
    shape = job_shape(loaded, flags)
    settings = SlurmSettings(**OmegaConf.to_container(loaded.cfg.slurm, resolve=True))
    # the job's Trainer must match its allocation
    overrides += [f"trainer.num_nodes={shape.nodes}", f"trainer.devices={shape.tasks_per_node}"]
    run = RunSettings(**OmegaConf.to_container(loaded.cfg.run, resolve=True))
    run_dir = RunDir.from_settings(run)
    entry = {"script": REPO_ROOT / "launch" / "evaluate.py", "subcommand": ["test"], "script_options": []} \
        if args.test else {"script": REPO_ROOT / "launch" / "fit.py"}
    script = render_sbatch(settings, shape, job_name=run.name, run_dir=run_dir.path, config=Path(args.config),
                           overrides=overrides, workdir=Path.cwd(), **entry)
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

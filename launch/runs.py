"""Run directories: the place a run lives across requeues, its status marker and its checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.errors import UsageError
from datamodules.files import TMP_MARK, AtomicFile, atomic_write_text

LAST = "last.ckpt"
STEP_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")


@dataclass
class RunSettings:
    """The `run` section."""

    name: str
    root: str = "runs"
    seed: int = 0
    every_n_train_steps: int = 100  # step checkpoints (and last.ckpt) every N optimizer steps
    keep_last_k: int = 3  # step checkpoints kept; last.ckpt is kept besides
    tensorboard: bool = True
    loggers: list = field(default_factory=list)  # extra loggers as target/params nodes

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.name or "/" in self.name or self.name in (".", ".."):
            found.append(("name", f"'{self.name}' must be a plain directory name"))
        if self.every_n_train_steps < 1:
            found.append(("every_n_train_steps", "must be >= 1"))
        if self.keep_last_k < 1:
            found.append(("keep_last_k", "must be >= 1"))
        return found


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through datamodules.files.AtomicFile: a reader (or a resume after SIGKILL) sees either the previous
    complete checkpoint or the new one, never a partial file under a checkpoint name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with AtomicFile(path, "wb") as f:
            torch.save(checkpoint, f.file)


def checkpoint_step(path: Path) -> int | None:
    """Global step stored in a checkpoint, or None if it is incomplete or unreadable.

    Files are opened memory-mapped: only the pickled metadata is read, not the tensors.
    A DeepSpeed checkpoint is a directory that DeepSpeed completes by writing `latest` last.
    """
    try:
        if path.is_dir():
            if not (path / "latest").is_file():
                return None
            meta = path / "worldbridge_step.json"
            return int(json.loads(meta.read_text())["global_step"]) if meta.is_file() else None
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(ckpt["global_step"])
    except Exception:  # a truncated or foreign file is simply not a resumable checkpoint
        return None


@dataclass
class RunDir:
    path: Path

    @classmethod
    def from_settings(cls, run: RunSettings) -> "RunDir":
        return cls(Path(run.root) / run.name)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    @property
    def benchmark_table(self) -> Path:
        """The benchmark table a method's callback may keep up to date in the run directory."""
        return self.path / "benchmark.md"

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_status(self, state: str, **fields: Any) -> None:
        self._write_status({"state": state, "updated": None, **fields})  # `updated` is set on writing

    def update_status(self, **fields: Any) -> None:
        """Change some fields of status.json and keep the others (state, what the run resumed from, SLURM job)."""
        self._write_status({**self.status(), **fields})

    def _write_status(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(self.status_file, json.dumps(record, indent=2) + "\n")

    def result_lines(self) -> list[str]:
        """Where the run's results are, one indented `what  path` line each: printed when a fit ends."""
        places = [("run dir", self.path), ("checkpoint", self.last_checkpoint)]
        if self.benchmark_table.is_file():
            places.append(("benchmark", self.benchmark_table))
        places.append(("logs", self.logs))
        return [f"  {what:<11} {path}" for what, path in places]

    def candidates(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return [p for p in self.checkpoints.iterdir()
                if TMP_MARK not in p.name and (p.name == LAST or STEP_PATTERN.match(p.name))]

    def newest_complete_checkpoint(self) -> tuple[Path, int] | None:
        """The complete checkpoint with the highest step; last.ckpt wins a tie (it is written after)."""
        best = None
        for p in self.candidates():
            step = checkpoint_step(p)
            if step is None:
                continue
            key = (step, p.name == LAST)
            if best is None or key > best[0]:
                best = (key, p)
        return (best[1], best[0][0]) if best else None

    def save_config(self, resolved_yaml: str) -> None:
        """Write config.yaml; a different earlier one is kept as config.<n>.yaml, never overwritten."""
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / "config.yaml"
        if target.is_file() and target.read_text() != resolved_yaml:
            n = 1
            while (self.path / f"config.{n}.yaml").exists():
                n += 1
            shutil.copy2(target, self.path / f"config.{n}.yaml")
        atomic_write_text(target, resolved_yaml)


def resolve_resume(run_dir: RunDir, resume: str) -> tuple[Path, int] | None:
    """(checkpoint, its step) to resume from for `--resume auto|never|PATH`, or None for a fresh start."""
    if resume == "never":
        if run_dir.candidates():
            raise UsageError(f"--resume never: {run_dir.checkpoints} already holds checkpoints; "
                             "choose another run.name or remove that directory")
        return None
    if resume == "auto":
        status = run_dir.status()
        if status.get("state") == "finished":
            limit = status.get("stopped_by")  # the Trainer limit that ended it; None when a callback stopped it
            reached, higher = (f" ({limit} reached)", f" with a higher {limit}") if limit else ("", "")
            raise UsageError(f"{run_dir.status_file}: run finished at step {status.get('global_step')}{reached}; "
                             f"to train further pass --resume {run_dir.last_checkpoint}{higher}, "
                             "or start a new run.name")
        return run_dir.newest_complete_checkpoint()
    path = Path(resume)
    if not path.exists():
        raise UsageError(f"--resume {resume}: no such checkpoint")
    step = checkpoint_step(path)
    if step is None:
        raise UsageError(f"--resume {resume}: not a complete checkpoint (truncated or not a Lightning checkpoint)")
    return path, step

"""CSV metrics that survive a resume: Lightning's CSVLogger deletes an existing metrics.csv when it starts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from datamodules.files import atomic_write_text


class _ResumedExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None):
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.resume_step is None or not path.is_file():
            super()._check_log_dir_exists()  # a fresh start: Lightning's behaviour (the old file goes)
            return
        # Rows logged after the checkpoint belong to steps the resumed run repeats: drop them, keep the rest.
        # Lightning logs the batch that completes global step s under step s - 1.
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fieldnames = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < self.resume_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
        self.metrics_keys = sorted(fieldnames)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that keeps metrics.csv across resumes, up to the resumed checkpoint's step."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedExperimentWriter(self.log_dir, self.resume_step)
        return self._experiment

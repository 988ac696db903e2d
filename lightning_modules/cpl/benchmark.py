"""The benchmark table of a CPL/CoOp/CoCoOp run, written to `<run dir>/benchmark.json` and `benchmark.md`.

After every validation (rank 0) it records the learned prompts' accuracy per validation set, the base/new harmonic
mean, and the frozen zero-shot CLIP's numbers beside them (measured once by the module), so the gain is visible
while training runs; the files always hold the latest validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from launch.runs import atomic_write_text


def summary_rows(metrics: dict[str, float], names: list[str]) -> list[dict[str, Any]]:
    """[{method, <set>..., harmonic_mean}] for the zero-shot model and the learned prompts (percent)."""
    rows = []
    for method, prefix in (("zero-shot CLIP", "val/zero_shot_"), ("learned prompts", "val/")):
        row: dict[str, Any] = {"method": method}
        for name in names:
            value = metrics.get(f"{prefix}accuracy_{name}")
            row[name] = None if value is None else round(float(value), 2)
        hm = metrics.get(f"{prefix}harmonic_mean")
        if hm is not None:
            row["harmonic_mean"] = round(float(hm), 2)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


class CPLBenchmark(Callback):
    def __init__(self, filename: str = "benchmark"):
        self.filename = filename

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        names = list(getattr(pl_module, "val_names", []))
        rows = summary_rows(metrics, names)
        record = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                  "variant": pl_module.hparams.get("variant"), "rows": rows}
        directory = Path(trainer.default_root_dir)
        atomic_write_text(directory / f"{self.filename}.json", json.dumps(record, indent=1) + "\n")
        atomic_write_text(directory / f"{self.filename}.md",
                          f"{record['variant']} at step {trainer.global_step}\n\n" + markdown_table(rows))

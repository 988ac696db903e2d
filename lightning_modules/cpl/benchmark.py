"""The benchmark table of a CPL/CoOp/CoCoOp run, written to `<run dir>/benchmark.json` and `benchmark.md`.

After every validation (rank 0) it records the learned prompts' metric per validation set (accuracy for
classification, with the base/new harmonic mean; image->text R@1 for retrieval; VQA accuracy), and the frozen zero-shot
CLIP's numbers beside them (measured once by the module), so the gain is visible while training runs; the files
always hold the latest validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from datamodules.files import atomic_write_text


def summary_rows(metrics: dict[str, float], names: list[str], metric: str = "accuracy") -> list[dict[str, Any]]:
    """[{method, <set>..., harmonic_mean}] for the zero-shot model and the learned prompts (percent); `metric` is
    the logged name (val/<metric>_<set>)."""
    rows = []
    for method, prefix in (("zero-shot CLIP", "val/zero_shot_"), ("learned prompts", "val/")):
        row: dict[str, Any] = {"method": method}
        for name in names:
            value = metrics.get(f"{prefix}{metric}_{name}")
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
        metric = getattr(pl_module, "metric_name", "accuracy")
        rows = summary_rows(metrics, names, metric)
        record = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                  "variant": pl_module.hparams.get("variant"), "task": getattr(pl_module, "task", None),
                  "metric": metric, "rows": rows}
        directory = Path(trainer.default_root_dir)
        atomic_write_text(directory / f"{self.filename}.json", json.dumps(record, indent=1) + "\n")
        atomic_write_text(directory / f"{self.filename}.md",
                          f"{record['variant']} at step {trainer.global_step}: {metric} (%)\n\n" + markdown_table(rows))

"""How many training samples get a CPL counterfactual: top-k negatives (k=3) against the nearest class in the batch
(k=null), on class counts of the CoOp datasets' base halves, with random batches as the shard loader draws them.

Run from the repository root:  .venv/bin/python bench/cpl_coverage.py  (seconds; no model involved)
Writes bench/results/cpl_coverage.json (bench/result_file.py). A sample is covered when its
batch holds a sample whose class is an allowed negative (lightning_modules/cpl/counterfactual.py pick_negatives).
The class similarities are random and symmetric: with top-k, coverage depends only on how many classes are allowed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.result_file import write_result  # noqa: E402
from lightning_modules.cpl.counterfactual import pick_negatives  # noqa: E402
from lightning_modules.cpl.negatives import top_k_negatives  # noqa: E402

BASE_CLASSES = {"eurosat": 5, "dtd": 24, "oxford_flowers": 51, "food101": 51, "caltech101": 50, "ucf101": 51,
                "sun397": 199, "imagenet": 500}
BATCHES, BATCH_SIZE, K = 2000, 8, 3


def coverage(n_classes: int, k: int | None, generator: torch.Generator) -> float:
    scores = torch.rand(n_classes, n_classes, generator=generator)
    scores = (scores + scores.t()) / 2
    top_k = None if k is None else top_k_negatives(scores, k)
    covered = 0
    for _ in range(BATCHES):
        labels = torch.randint(n_classes, (BATCH_SIZE,), generator=generator)
        covered += int(pick_negatives(labels, labels, scores, top_k)[1].sum())
    return covered / (BATCHES * BATCH_SIZE)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # no options: --help, and typos
    generator = torch.Generator().manual_seed(0)
    figures, ratios = {}, {}
    for name, n in BASE_CLASSES.items():
        top3, nearest = coverage(n, K, generator), coverage(n, None, generator)
        figures[f"{name}_{n}_classes_top{K}"] = round(top3, 4)
        figures[f"{name}_{n}_classes_nearest_in_batch"] = round(nearest, 4)
        ratios[f"{name}_top{K}_over_nearest"] = round(top3 / nearest, 4)
    write_result("cpl_coverage", settings={"batch_size": BATCH_SIZE, "batches": BATCHES, "k": K},
                 figures=figures, ratios=ratios, targets={})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

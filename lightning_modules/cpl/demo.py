"""The CPL demo (`make demo`): zero-shot CLIP vs CoOp vs CoCoOp vs CPL on a synthetic base-to-new task, on CPU.

1. A tiny CLIP, pretrained by the project on synthetic shapes with captions (lightning_modules/clip_pretrain;
   about 110 s on 2 CPU cores, cached under <root>/cache after the first run).
2. Base-to-new data (lightning_modules/cpl/synthetic.py): 16 shots of 6 base classes whose training backgrounds
   follow the class 90% of the time; 50 test images per class, base and new, with random backgrounds.
3. One fit per variant through launch/fit.py with configs/demo/cpl.yaml, as a user would run it. The config names
   runs/demo-cpl/cache/tiny-clip/current and runs/demo-cpl/data (the default root), links this demo keeps pointed
   at the CLIP and the data it prepared, so after `make demo` the config runs as shipped from the repository root.
4. The table of base accuracy, new accuracy and their harmonic mean, printed and written to <root>/summary.md.
The negatives of CPL come from BERTScore with a tiny word-level BERT built here (no pretrained scorer can be
downloaded), read at layer 1, where class names sharing a word are the most similar.

    python -m lightning_modules.cpl.demo [--root runs/demo-cpl] [--variants coop cocoop cpl] [--epochs 10]
                                         [--spurious 0.9] [--pretrain-steps 1500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo" / "cpl.yaml"
NAMES = {"coop": "CoOp", "cocoop": "CoCoOp", "cpl": "CPL"}


def prepare(root: Path, seed: int, spurious: float, clip: dict[str, Any]) -> dict[str, Path]:
    """The tiny CLIP (`clip`: ensure_tiny_clip's settings), the scorer and the data under `root`, each cached, at the
    stable paths configs/demo/cpl.yaml names (for the default root): `cache/tiny-clip/current` and `data` are links
    to the cache entry and the data these settings need, moved there once it is complete."""
    from datamodules.files import atomic_symlink
    from datamodules.synthetic_shapes import CLASS_NAMES
    from lightning_modules.clip_pretrain import ensure_tiny_clip
    from lightning_modules.cpl.synthetic import write_base_to_new, write_word_scorer

    cache = root / "cache"
    entry = ensure_tiny_clip(cache / "tiny-clip", seed=seed, **clip)
    current = atomic_symlink(cache / "tiny-clip" / "current", entry.name)
    scorer = cache / "tiny-scorer"
    if not (scorer / "config.json").is_file():
        write_word_scorer(scorer, sorted({w for name in CLASS_NAMES for w in name.split()}), seed=seed)
    data = root / f"data-spurious{spurious}-shots16-test50"
    if not (data / "new" / "test" / "index.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        write_base_to_new(data, shots=16, per_class_test=50, size=32, spurious=spurious, seed=seed)
    data = atomic_symlink(root / "data", data.name)
    return {"clip": current, "scorer": scorer, "negatives": cache / "negatives", "train": data / "base" / "train",
            "base": data / "base" / "test", "new": data / "new" / "test"}


def fit(root: Path, paths: dict[str, Path], variant: str, epochs: int) -> dict:
    runs = root / "runs"
    shutil.rmtree(runs / variant, ignore_errors=True)
    command = [sys.executable, str(REPO / "launch" / "fit.py"), "--config", str(CONFIG), f"run.root={runs}",
               f"run.name={variant}", f"model.params.variant={variant}", f"model.params.clip.pretrained={paths['clip']}",
               f"model.params.scorer.model={paths['scorer']}", f"model.params.negatives_cache={paths['negatives']}",
               f"data.params.train={paths['train']}", f"data.params.val.base={paths['base']}",
               f"data.params.val.new={paths['new']}", f"trainer.max_epochs={epochs}",
               f"trainer.check_val_every_n_epoch={epochs}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {variant} fit failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads((runs / variant / "benchmark.json").read_text())


def table(results: dict[str, dict]) -> str:
    rows = []
    first = next(iter(results.values()))
    zero_shot = next(r for r in first["rows"] if r["method"] == "zero-shot CLIP")
    rows.append(("zero-shot CLIP", zero_shot))
    for variant, record in results.items():
        rows.append((NAMES[variant], next(r for r in record["rows"] if r["method"] == "learned prompts")))
    lines = ["| method | base | new | harmonic mean |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['base']:.1f} | {row['new']:.1f} | {row['harmonic_mean']:.1f} |" for name, row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "demo-cpl")
    parser.add_argument("--variants", nargs="+", choices=list(NAMES), default=list(NAMES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=1500, help="steps of the tiny CLIP's pretraining")
    parser.add_argument("--spurious", type=float, default=0.9,
                        help="probability that a training image's background is its class's")
    args = parser.parse_args(argv)
    if args.epochs < 1 or not 0 <= args.spurious <= 1:
        print("--epochs must be >= 1 and --spurious in [0, 1]", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print("preparing the tiny CLIP, the scorer and the data (cached after the first run) ...", flush=True)
    paths = prepare(args.root, args.seed, args.spurious, {"max_steps": args.pretrain_steps})
    print(f"  ready after {time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    for variant in args.variants:
        print(f"fitting {NAMES[variant]} ...", flush=True)
        results[variant] = fit(args.root, paths, variant, args.epochs)
    summary = table(results)
    text = (f"Base-to-new on synthetic shapes (accuracy %, test backgrounds random; training backgrounds follow the "
            f"class with probability {args.spurious}), {args.epochs} epochs of 16 shots:\n\n{summary}")
    (args.root / "summary.md").write_text(text)
    print("\n" + text + f"\n(total {time.perf_counter() - start:.0f} s; runs in {args.root / 'runs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

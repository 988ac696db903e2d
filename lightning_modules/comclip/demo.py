"""The ComCLIP demo (`make demo-comclip`): ComCLIP against plain CLIP on the synthetic compositional task, on CPU.

1. The tiny CLIP the CPL demo uses (lightning_modules/clip_pretrain: pretrained on single synthetic shapes with
   captions such as "a photo of a red circle on a teal background"; about 2 minutes on 2 CPU cores, cached under
   <root>/cache after the first run).
2. Items of the synthetic compositional task (make_shards.py synthetic-compositional, lightning_modules/comclip/
   synthetic.py): two images with the colours of their two shapes swapped, and the caption of each ("a red circle
   left of a blue square" / "a blue circle left of a red square"), with the shapes' boxes from the generator.
3. `launch/evaluate.py test --config configs/comclip/demo.yaml` per weighting (ratio, softmax), as a user would run
   it; each run scores plain CLIP and ComCLIP on the same items. Captions are parsed by the project's rules, entities
   grounded by the data's boxes (by noun: a caption's "blue circle" gets the circle's box whatever its colour, so
   the sub-image check is CLIP's, not the data's).
4. The Winoground-style table (text, image, group scores, %), printed and written to <root>/summary.md, and beside
   it what the sub-images alone know: how often an entity's blacked-out sub-image is nearer its own phrase ("red
   circle") than the phrase with the other colour ("blue circle") -- the binding ComCLIP's fused score can draw on.

    python -m lightning_modules.comclip.demo [--root runs/demo-comclip] [--items 400] [--size 64]
                                             [--pretrain-steps 1500]
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
CONFIG = REPO / "configs" / "comclip" / "demo.yaml"
WEIGHTINGS = ("ratio", "softmax")


def prepare(root: Path, items: int, size: int, seed: int, clip: dict[str, Any]) -> dict[str, Path]:
    """The tiny CLIP and the items under `root`, each cached, at the links configs/comclip/demo.yaml names (for the
    default root): `cache/tiny-clip/current` and `data`."""
    from datamodules.files import atomic_symlink
    from datamodules.writers.common import ShardOptions
    from lightning_modules.clip_pretrain import ensure_tiny_clip
    from lightning_modules.comclip.shards import write_synthetic_compositional_shards

    cache = root / "cache"
    entry = ensure_tiny_clip(cache / "tiny-clip", seed=seed, **clip)
    current = atomic_symlink(cache / "tiny-clip" / "current", entry.name)
    data = root / f"data-items{items}-size{size}-seed{seed}"
    if not (data / "index.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        write_synthetic_compositional_shards(data, num=items, size=size, options=ShardOptions(seed=seed + 1))
    return {"clip": current, "data": atomic_symlink(root / "data", data.name)}


def evaluate(root: Path, paths: dict[str, Path], weighting: str) -> dict[str, Any]:
    runs = root / "runs"
    command = [sys.executable, str(REPO / "launch" / "evaluate.py"), "test", "--config", str(CONFIG), "--restart",
               f"run.root={runs}", f"run.name={weighting}", f"model.params.clip.pretrained={paths['clip']}",
               f"model.params.weighting={weighting}", f"data.params.test={paths['data']}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {weighting} evaluation failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads((runs / weighting / "test" / "results.json").read_text())


def entity_check(clip_path: Path, data: Path, items: int = 200) -> float:
    """The fraction of (item, image, entity) whose sub-image (the image blacked out outside the entity's box) is
    nearer its own colour-noun phrase than the same noun with the item's other colour, with the demo's CLIP."""
    import torch

    from lightning_modules.comclip.data import ComCLIPData
    from lightning_modules.comclip.fusion import ComCLIPScorer
    from lightning_modules.comclip.grounding import blackout, region_mask
    from lightning_modules.comclip.parsing import RuleParser
    from lightning_modules.frozen_clip import FrozenCLIP

    scorer = ComCLIPScorer(FrozenCLIP(pretrained=str(clip_path)), RuleParser())
    dm = ComCLIPData(test=str(data), verify="size")
    dm.setup("test")
    right = total = 0
    for n, item in zip(range(items), dm.all_items()):
        parse = RuleParser().parse(item.fields["captions"][0], item.fields)  # "a A X rel a B Y" matches image 0
        colors = [parse.subject.attributes[0], parse.object.attributes[0]]
        for j, image in enumerate(item.images):
            own = colors if j == 0 else colors[::-1]  # image 1 has the colours swapped
            for entity, color, other in zip((parse.subject, parse.object), own, own[::-1]):
                box = item.fields["boxes"][j][entity.noun]
                sub = scorer.image_embeddings([blackout(image, region_mask(*image.shape[-2:], box))])[0]
                texts = scorer.text_embeddings([f"{color} {entity.noun}", f"{other} {entity.noun}"])
                right += int(torch.dot(sub, texts[f"{color} {entity.noun}"]) >
                             torch.dot(sub, texts[f"{other} {entity.noun}"]))
                total += 1
    return right / total


def table(results: dict[str, dict[str, Any]]) -> str:
    first = next(iter(results.values()))
    rows = [("CLIP", first["metrics"]["clip"])]
    rows += [(f"ComCLIP ({weighting} weights)", record["metrics"]["comclip"]) for weighting, record in results.items()]
    lines = ["| method | text | image | group |", "|---|---|---|---|"]
    lines += [f"| {name} | {100 * m['text']:.1f} | {100 * m['image']:.1f} | {100 * m['group']:.1f} |"
              for name, m in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "demo-comclip")
    parser.add_argument("--items", type=int, default=400, help="image pairs of the synthetic task")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (the tiny CLIP resizes to 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=1500, help="steps of the tiny CLIP's pretraining")
    args = parser.parse_args(argv)
    if args.items < 1 or args.pretrain_steps < 1:
        print("--items and --pretrain-steps must be >= 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print("preparing the tiny CLIP and the items (cached after the first run) ...", flush=True)
    paths = prepare(args.root, args.items, args.size, args.seed, {"max_steps": args.pretrain_steps})
    print(f"  ready after {time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    for weighting in WEIGHTINGS:
        print(f"scoring with ComCLIP ({weighting} weights) and plain CLIP ...", flush=True)
        results[weighting] = evaluate(args.root, paths, weighting)
    first = next(iter(results.values()))
    failures = first["parse_failures"]
    entities = entity_check(paths["clip"], paths["data"])
    text = (f"Synthetic compositional task ({first['scored']} image pairs, colours swapped between the two images "
            f"and the two captions; Winoground scores, %, chance: text 25, image 25, group 16.7), tiny CLIP; "
            f"captions parsed by rules ({failures['count']} of {failures['captions']} unparsed), boxes from the "
            f"generator:\n\n{table(results)}\nThe sub-images alone: an entity's blacked-out sub-image is nearer its own "
            f"phrase than the phrase with the other colour in {100 * entities:.1f}% of 200 items x 2 images x 2 "
            f"entities (chance 50).\n")
    (args.root / "summary.md").write_text(text)
    print("\n" + text + f"\n(total {time.perf_counter() - start:.0f} s; runs in {args.root / 'runs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

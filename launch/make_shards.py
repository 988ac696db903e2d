"""Write a webdataset shard dataset: `python launch/make_shards.py KIND --out DIR [options]`.

Kinds:
  synthetic-shapes   coloured shapes on a background, label = colour-shape class, optional spurious background
  classification     an image folder (class per sub-folder) or a CoOp split JSON -> OUT/train, OUT/val, OUT/test
  captions           images + captions from a .jsonl or .csv file (+ condition-map columns, optional canny)
  retrieval          image-text retrieval: images + all their captions from a Karpathy split JSON (one split)
  vqa                VQAv2 questions + annotations: image, question, answer class, annotators' answer counts
  video              clips of F frames at a stride from videos listed in a .jsonl (PyAV), boxes, motion intensity
  synthetic-control  synthetic shapes plus condition maps (canny edges, segmentation mask, depth-like map)
  control-images     images + captions from a .jsonl or .csv file, condition maps extracted (canny, sketch, depth, seg)
  multigen           MultiGen-20M as released (UniControl's json_files/, images/, conditions/), all maps of an image
  synthetic-motion   clips of a shape moving at a random speed: frames (.npy), per-frame boxes, motion intensity
  winoground         Winoground as released (examples.jsonl + images/): two images, two captions, tags
  svo-probes         SVO-Probes (svo_probes.csv + downloaded images): sentence, positive and negative image, triplet
  comvg              ComVG (ComVG.csv + Visual Genome images): sentence, positive and negative image, triplet
  synthetic-compositional  two coloured shapes and the same with colours swapped, both captions, the shapes' boxes

On success it prints one line per dataset directory it wrote (classification: one per split):
  wrote OUT/train: 1 shard, 96 samples, 296,960 bytes

Usage errors print one line naming the file or argument and exit with code 2; nothing is left half-written
(the output has no index.json and no shard). This file only parses and dispatches: each kind is a Python function
(datamodules/writers/ for the generic kinds, lightning_modules/<method>/shards.py for a method's own), which other
code calls directly. See datamodules/shards.py for the format.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datamodules.writers import GENERIC_KINDS  # noqa: E402
from datamodules.writers.common import ShardKind, add_common_arguments, options_from_args  # noqa: E402
from launch import cli  # noqa: E402
from lightning_modules.comclip import shards as comclip_shards  # noqa: E402
from lightning_modules.flexecontrol import shards as flexecontrol_shards  # noqa: E402
from lightning_modules.mojito import shards as mojito_shards  # noqa: E402

PROG = "make_shards.py"
# A method's own kinds: one line per method.
METHOD_KINDS = (
    *flexecontrol_shards.KINDS,
    mojito_shards.KIND,
    *comclip_shards.KINDS,
)
KINDS: dict[str, ShardKind] = {kind.name: kind for kind in (*GENERIC_KINDS, *METHOD_KINDS)}


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True, parser_class=cli.ArgumentParser)
    for kind in KINDS.values():
        p = sub.add_parser(kind.name, help=kind.help)
        add_common_arguments(p)
        kind.add_arguments(p)
    return parser


def summary(directory: Path, index: dict) -> str:
    """The line make_shards prints for a dataset it wrote."""
    shards = len(index["shards"])
    size = sum(shard["bytes"] for shard in index["shards"])
    return (f"wrote {directory}: {shards} shard{'' if shards == 1 else 's'}, {index['total_samples']} samples, "
            f"{size:,} bytes")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def work() -> int:
        args = build_parser().parse_args(argv)
        kind = KINDS[args.kind]
        written = kind.from_args(args, options_from_args(args, ["launch/make_shards.py", *argv]))
        for directory, index in kind.datasets(args.out, written).items():
            print(summary(directory, index))
        return 0

    return cli.main(work, PROG)


if __name__ == "__main__":
    sys.exit(main())

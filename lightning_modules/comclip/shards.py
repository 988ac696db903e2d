"""ComCLIP's shard kinds, registered in launch/make_shards.py through `KINDS`: the compositional benchmarks as
released, and the synthetic compositional task.

- winoground: Winoground (facebook/winoground on the HF Hub) as released: data/examples.jsonl (one object per line:
  id, caption_0, caption_1, image_0, image_1, tag, secondary_tag, num_main_preds, collapsed_tag) and the images as
  data/images/<image_0 or image_1>.png;
- svo-probes: SVO-Probes (github.com/google-deepmind/svo_probes) svo_probes.csv, whose columns read here are sentence,
  pos_triplet, neg_triplet, subj_neg, verb_neg, obj_neg (True/False: the negative's type), pos_image_id,
  neg_image_id (pos_url, neg_url and any other column are not used). The release has URLs, not images: the user
  downloads them into one folder, named by image id (<id>.png, <id>.jpg or <id>.jpeg). The released evaluation keeps
  only rows with exactly one negative type set; the others are left out and counted here too. These columns are
  the ones the release's README and DeepMind's notebook name; the file itself was not at hand, so anything else in it
  (an `index` column, used as the id when there is one) is taken as optional;
- comvg: ComVG (released with ComCLIP, github.com/eric-ai-lab/ComCLIP, datasets/ComVG.csv), columns id, sentence,
  pos_triplet ("man,sit,table"), neg_triplet ("('dog', 'sit', 'table')"), pos_image_id, neg_image_id (Visual Genome
  ids; ComCLIP reads <id>.jpg) and neg_value (subject, verb or object);
- synthetic-compositional: two coloured shapes and the same image with the colours swapped, with their captions and
  the shapes' boxes (comclip/synthetic.py).

For svo-probes and comvg a row whose image is not in --images (or cannot be decoded) is left out and counted (printed,
and in the index metadata's `left_out`); --require-all-images makes it an error instead.

A sample: `image_0.<ext>`, `image_1.<ext>` (the files as they are when they share one format, else PNG) and `json`:
  {"id": str, "task": "winoground" | "pairs", "captions": [str, ...], ...}
  - task winoground (winoground, synthetic-compositional): captions [caption_0, caption_1], caption i matches image
    i; "tag", "secondary_tag", "collapsed_tag" where the source has them (synthetic: tag = the relation);
  - task pairs (svo-probes, comvg): captions [sentence], image_0 the positive, image_1 the negative;
    "negative_type": subject | verb | object; "triplet": {"subject", "verb", "object"} of the sentence (the
    positive triplet); "neg_triplet": the file's text;
  - "boxes" (synthetic): one {noun: [[x0, y0, x1, y1], ...]} per image, in pixels of the stored image.
The index metadata holds "task", "benchmark" (winoground | svo_probes | comvg | synthetic_compositional), the counts
by tag or negative type, and for the pair kinds the rows left out and why.
"""

from __future__ import annotations

import argparse
import ast
import functools
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from datamodules.errors import UsageError
from datamodules.synthetic_shapes import BACKGROUND_NAMES, COLORS, SHAPES
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, image_bytes,
                                        image_format, json_bytes, png_bytes, read_rows, shared_image_ext,
                                        write_shards)
from lightning_modules.comclip.synthetic import MIN_SIZE, RELATIONS, draw_pair, pair_spec

# The file names an image id or name is looked for under, in this order.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NEGATIVE_TYPES = ("subject", "verb", "object")
WINOGROUND_TAGS = ("tag", "secondary_tag", "collapsed_tag")


# ------------------------------------------------------------------------------------------------ shared helpers
def find_image(images: Path, stem: str) -> Path | None:
    """The file of an image named `stem` in `images` (`stem`.png, .jpg or .jpeg), or None."""
    for suffix in IMAGE_SUFFIXES:
        path = images / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def image_dir(images: Path, arg: str = "--images") -> Path:
    images = Path(images)
    if not images.is_dir():
        raise UsageError(f"{arg} {images}: no such directory")
    return images


def encode_pair(item: tuple[int, str, str, str, dict[str, Any]]) -> Encoded:
    """A sample of two image files and its json."""
    idx, first, second, ext, meta = item
    return f"{idx:08d}", {f"image_0.{ext}": image_bytes(first, ext), f"image_1.{ext}": image_bytes(second, ext),
                          "json": json_bytes(meta)}


def counts(values: Sequence[str]) -> dict[str, int]:
    """How often each value occurs, most frequent first (ties by value)."""
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


# -------------------------------------------------------------------------------------------------- winoground
def write_winoground_shards(out: Path, *, examples: Path, images: Path | None = None,
                            options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """Winoground's examples.jsonl (or a .csv with the same columns) and its images folder (default: images/ beside
    the examples file), every example and every image required. Returns the index."""
    out, examples = Path(out), Path(examples)
    images = image_dir(examples.parent / "images" if images is None else images)
    check_out(out)
    rows = read_rows(examples, ("caption_0", "caption_1", "image_0", "image_1"), "--examples")
    items, seen = [], set()
    for n, row in enumerate(rows, 1):
        where = f"{examples}: example {n}"
        ident = row.get("id")
        if isinstance(ident, bool) or not isinstance(ident, (int, str)) or str(ident).strip() == "":
            raise UsageError(f"{where}: needs an \"id\" (a number or a string), got {ident!r}")
        ident = str(ident).strip()
        if ident in seen:
            raise UsageError(f"{where}: id {ident} repeats an earlier example's")
        seen.add(ident)
        captions = [row["caption_0"].strip(), row["caption_1"].strip()]
        if not all(captions):
            raise UsageError(f"{where} (id {ident}): empty caption")
        meta: dict[str, Any] = {"id": ident, "task": "winoground", "captions": captions,
                                "image_names": [row["image_0"], row["image_1"]]}
        for field in WINOGROUND_TAGS:
            if row.get(field) is not None:
                if not isinstance(row[field], str):
                    raise UsageError(f"{where} (id {ident}): {field!r} must be a string, got {row[field]!r}")
                meta[field] = row[field]
        if row.get("num_main_preds") not in (None, ""):
            try:
                meta["num_main_preds"] = int(row["num_main_preds"])
            except (TypeError, ValueError) as e:
                raise UsageError(f"{where} (id {ident}): 'num_main_preds' must be a number, "
                                 f"got {row['num_main_preds']!r}") from e
        files = []
        for field in ("image_0", "image_1"):
            file = find_image(images, row[field])
            if file is None:
                raise UsageError(f"{images / row[field]}.png: {field} of example {ident} ({examples}) is missing "
                                 f"(looked for {', '.join(IMAGE_SUFFIXES)})")
            files.append(file)
        items.append((files, meta))
    ext = shared_image_ext(file for files, _ in items for file in files)
    metadata = {"kind": "winoground", "task": "winoground", "benchmark": "winoground", "source": str(examples),
                "images": str(images), "image_ext": ext, "samples": len(items),
                "tags": {field: counts([meta[field] for _, meta in items if field in meta])
                         for field in WINOGROUND_TAGS if any(field in meta for _, meta in items)}}
    encoded = [(i, str(files[0]), str(files[1]), ext, meta) for i, (files, meta) in enumerate(items)]
    return write_shards(out, encoded, encode_pair, options, metadata)


# ------------------------------------------------------------------------------------------------- pair kinds
def parse_triplet(cell: str) -> tuple[str, str, str] | None:
    """A subject-verb-object triplet as the releases write one: "man,sit,table", "('dog', 'sit', 'table')", or a
    list of such strings (the first is taken); None when it is none of these."""
    text = cell.strip()
    if text[:1] in "([":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, str) for v in value):
            if len(value) == 3 and not any("," in v for v in value):
                parts = [v.strip() for v in value]
                return (parts[0], parts[1], parts[2]) if all(parts) else None
            return parse_triplet(value[0]) if "," in value[0] else None
        text = text.strip("()[]").replace("'", "").replace('"', "")
    parts = [p.strip() for p in text.split(",")]
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def parse_flag(cell: str) -> bool | None:
    """A True/False cell (as pandas writes booleans; 1/0 too); None when it is neither."""
    text = cell.strip().lower()
    return True if text in ("true", "1") else False if text in ("false", "0") else None


class PairRow(NamedTuple):
    """One row of a pair benchmark as read: its row number in the file (1 = the first after the header), the sample's
    fields, and its two image ids."""
    n: int
    ident: str
    sentence: str
    triplet: tuple[str, str, str]
    neg_triplet: str
    negative_type: str
    pos_image_id: str
    neg_image_id: str


class PairRows:
    """The rows of a pair benchmark as read, before images are looked for: the rows kept (`rows`) and the rows left
    out while reading, by reason (`left_out`)."""

    def __init__(self, source: Path, total: int):
        self.source, self.total = source, total
        self.rows: list[PairRow] = []
        self.left_out: Counter[str] = Counter()

    def add(self, n: int, row: dict[str, str], ident: str, negative_type: str) -> None:
        where = f"{self.source}: row {n}"
        sentence = row["sentence"].strip()
        if not sentence:
            raise UsageError(f"{where}: empty sentence")
        triplet = parse_triplet(row["pos_triplet"])
        if triplet is None:
            raise UsageError(f"{where}: pos_triplet {row['pos_triplet']!r} is not a subject,verb,object triplet")
        ids = [row["pos_image_id"].strip(), row["neg_image_id"].strip()]
        if not all(ids):
            raise UsageError(f"{where}: empty pos_image_id or neg_image_id")
        self.rows.append(PairRow(n, ident, sentence, triplet, row["neg_triplet"].strip(), negative_type, *ids))


def write_pair_shards(out: Path, read: PairRows, *, kind: str, benchmark: str, images: Path, require_all_images: bool,
                      options: ShardOptions) -> dict[str, Any]:
    """The rows of a pair benchmark whose two images are in `images` (and decode) as samples; the others left out
    and counted (a row missing an image as missing_image, else one with an image that does not decode as
    unreadable_image), or with `require_all_images` an error naming the first. Returns the index."""
    left_out = Counter(read.left_out)
    missing_ids: set[str] = set()
    formats: dict[Path, str | None] = {}  # image file -> its format, None when it does not decode
    kept = []
    for row in read.rows:
        files: list[Path | None] = []
        for image_id in (row.pos_image_id, row.neg_image_id):
            file = find_image(images, image_id)
            if file is None:
                if require_all_images:
                    raise UsageError(f"{images}: no image {image_id} ({'/'.join(IMAGE_SUFFIXES)}) for row {row.n} "
                                     f"of {read.source} (--require-all-images)")
                missing_ids.add(image_id)
            elif file not in formats:
                try:
                    formats[file] = image_format(file)
                except UsageError:
                    if require_all_images:
                        raise
                    formats[file] = None
            files.append(file)
        if None in files:
            left_out["missing_image"] += 1
        elif any(formats[file] is None for file in files):
            left_out["unreadable_image"] += 1
        else:
            meta = {"id": row.ident, "task": "pairs", "captions": [row.sentence], "negative_type": row.negative_type,
                    "triplet": dict(zip(("subject", "verb", "object"), row.triplet)), "neg_triplet": row.neg_triplet,
                    "image_ids": [row.pos_image_id, row.neg_image_id]}
            kept.append((files, meta))
    if not kept:
        raise UsageError(f"--images {images}: no row of {read.source} has both its images there "
                         f"(image files are named <image id>{'/'.join(IMAGE_SUFFIXES)})")
    used = {formats[file] for files, _ in kept for file in files}
    ext = used.pop() if len(used) == 1 else "png"  # one shared format is kept as it is, mixed ones become PNG
    metadata = {"kind": kind, "task": "pairs", "benchmark": benchmark, "source": str(read.source),
                "images": str(images), "image_files": f"<image id>{'/'.join(IMAGE_SUFFIXES)}", "image_ext": ext,
                "rows": read.total, "samples": len(kept),
                "negative_types": counts([meta["negative_type"] for _, meta in kept]),
                "left_out": dict(sorted(left_out.items())), "missing_image_ids": len(missing_ids),
                "require_all_images": require_all_images}
    encoded = [(i, str(files[0]), str(files[1]), ext, meta) for i, (files, meta) in enumerate(kept)]
    return write_shards(out, encoded, encode_pair, options, metadata)


SVO_COLUMNS = ("sentence", "pos_triplet", "neg_triplet", "subj_neg", "verb_neg", "obj_neg", "pos_image_id",
               "neg_image_id")
SVO_FLAGS = {"subj_neg": "subject", "verb_neg": "verb", "obj_neg": "object"}


def write_svo_probes_shards(out: Path, *, csv: Path, images: Path, require_all_images: bool = False,
                            options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """SVO-Probes' svo_probes.csv with its downloaded images (`images`/<image id>.png|.jpg|.jpeg). Rows without
    exactly one negative type, and rows whose images are missing, are left out and counted. Returns the index."""
    out, csv = Path(out), Path(csv)
    images = image_dir(images)
    check_out(out)
    rows = read_rows(csv, SVO_COLUMNS, "--csv")
    read = PairRows(csv, len(rows))
    for n, row in enumerate(rows, 1):
        flags = {}
        for column in SVO_FLAGS:
            flag = parse_flag(row[column])
            if flag is None:
                raise UsageError(f"{csv}: row {n}: {column} must be True or False, got {row[column]!r}")
            flags[column] = flag
        types = [SVO_FLAGS[column] for column, flag in flags.items() if flag]
        if len(types) != 1:
            read.left_out["no_single_negative_type"] += 1
            continue
        ident = (row.get("index") or row.get("") or str(n - 1)).strip()
        read.add(n, row, ident, types[0])
    return write_pair_shards(out, read, kind="svo-probes", benchmark="svo_probes", images=images,
                             require_all_images=require_all_images, options=options)


COMVG_COLUMNS = ("sentence", "pos_triplet", "neg_triplet", "pos_image_id", "neg_image_id", "neg_value")


def write_comvg_shards(out: Path, *, csv: Path, images: Path, require_all_images: bool = False,
                       options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """ComVG's ComVG.csv with its Visual Genome images (`images`/<image id>.jpg, or .png/.jpeg). Rows whose images
    are missing are left out and counted. Returns the index."""
    out, csv = Path(out), Path(csv)
    images = image_dir(images)
    check_out(out)
    rows = read_rows(csv, COMVG_COLUMNS, "--csv")
    read = PairRows(csv, len(rows))
    for n, row in enumerate(rows, 1):
        negative_type = row["neg_value"].strip().lower()
        if negative_type not in NEGATIVE_TYPES:
            raise UsageError(f"{csv}: row {n}: neg_value must be one of {', '.join(NEGATIVE_TYPES)}, "
                             f"got {row['neg_value']!r}")
        read.add(n, row, (row.get("id") or str(n)).strip(), negative_type)
    return write_pair_shards(out, read, kind="comvg", benchmark="comvg", images=images,
                             require_all_images=require_all_images, options=options)


def left_out_line(index: dict[str, Any]) -> str | None:
    """The line a pair kind prints when it left rows out, e.g. `svo_probes: left out 3 of 10 rows (missing_image 2,
    no_single_negative_type 1)`; None when it kept every row."""
    meta = index["metadata"]
    if not meta["left_out"]:
        return None
    reasons = ", ".join(f"{reason} {count}" for reason, count in meta["left_out"].items())
    missing = f"; {meta['missing_image_ids']} image ids not in {meta['images']}" if meta["missing_image_ids"] else ""
    return (f"{meta['benchmark']}: left out {meta['rows'] - meta['samples']} of {meta['rows']} rows ({reasons})"
            f"{missing}")


def with_left_out_line(write: Callable[..., dict[str, Any]]) -> Callable[[argparse.Namespace, ShardOptions], Any]:
    """A pair kind's CLI call: write, then print what was left out."""
    def from_args(args: argparse.Namespace, options: ShardOptions) -> dict[str, Any]:
        index = write(args.out, csv=args.csv, images=args.images, require_all_images=args.require_all_images,
                      options=options)
        line = left_out_line(index)
        if line is not None:
            print(line)
        return index
    return from_args


# ------------------------------------------------------------------------------------- synthetic-compositional
def encode_synthetic_pair(idx: int, size: int, seed: int) -> Encoded:
    spec = pair_spec(seed, idx)
    drawn = draw_pair(spec, size)
    meta = {"id": str(idx), "task": "winoground", "captions": list(spec.captions), "tag": spec.relation,
            "relation": spec.relation, "colors": list(spec.colors), "shapes": list(spec.shapes),
            "background": spec.background, "boxes": drawn["boxes"]}
    return f"{idx:08d}", {"image_0.png": png_bytes(drawn["images"][0]), "image_1.png": png_bytes(drawn["images"][1]),
                          "json": json_bytes(meta)}


def write_synthetic_compositional_shards(out: Path, *, num: int, size: int = 64,
                                         options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """`num` items of the synthetic compositional task, images `size` x `size`; returns the index."""
    if num <= 0:
        raise UsageError(f"--num: must be positive, got {num}")
    if size < MIN_SIZE:
        raise UsageError(f"--size: must be at least {MIN_SIZE}, got {size}")
    out = Path(out)
    check_out(out)
    metadata = {"kind": "synthetic-compositional", "task": "winoground", "benchmark": "synthetic_compositional",
                "size": size, "samples": num, "colors": list(COLORS), "shapes": list(SHAPES),
                "relations": list(RELATIONS), "backgrounds": BACKGROUND_NAMES,
                "tags": {"tag": counts([pair_spec(options.seed, i).relation for i in range(num)])},
                "boxes_format": "json boxes: per image {shape noun: [[x0, y0, x1, y1]]}, pixels, x1/y1 exclusive"}
    encode = functools.partial(encode_synthetic_pair, size=size, seed=options.seed)
    return write_shards(out, list(range(num)), encode, options, metadata)


# ---------------------------------------------------------------------------------------------------- the kinds
def add_winoground_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=Path, required=True, help="Winoground's data/examples.jsonl")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of <image_0>.png / <image_1>.png (default: images/ beside --examples)")


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, required=True, help="the benchmark's CSV as released")
    parser.add_argument("--images", type=Path, required=True,
                        help=f"folder of the images, named <image id>{'/'.join(IMAGE_SUFFIXES)}")
    parser.add_argument("--require-all-images", action="store_true",
                        help="a row whose image is missing is an error (default: left out and counted)")


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, required=True, help="number of items (image pairs)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")


KINDS = (
    ShardKind(name="winoground", help="Winoground as released (examples.jsonl + images/)",
              add_arguments=add_winoground_arguments,
              from_args=lambda args, options: write_winoground_shards(args.out, examples=args.examples,
                                                                      images=args.images, options=options)),
    ShardKind(name="svo-probes", help="SVO-Probes (svo_probes.csv + downloaded images): sentence, positive, negative",
              add_arguments=add_pair_arguments, from_args=with_left_out_line(write_svo_probes_shards)),
    ShardKind(name="comvg", help="ComVG (ComVG.csv + Visual Genome images): sentence, positive, negative",
              add_arguments=add_pair_arguments, from_args=with_left_out_line(write_comvg_shards)),
    ShardKind(name="synthetic-compositional", help="two coloured shapes and their colour swap, captions, boxes",
              add_arguments=add_synthetic_arguments,
              from_args=lambda args, options: write_synthetic_compositional_shards(args.out, num=args.num,
                                                                                   size=args.size, options=options)),
)

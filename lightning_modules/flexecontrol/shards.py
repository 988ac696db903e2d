"""FlexEControl's shard kinds: control samples (an image, its caption and condition maps), registered in
launch/make_shards.py through `KINDS`.

- synthetic-control: synthetic shapes plus condition maps (canny edges, segmentation mask, depth-like map), the
  conditions the method is trained and tested with on synthetic data;
- control-images: images + captions from a .jsonl or .csv file, condition maps extracted while writing (canny, sketch,
  depth from a depth-estimation model, seg from an image-segmentation model);
- multigen: MultiGen-20M (the dataset of UniControl, Qin et al. 2023) as released, one sample per target image with
  every condition map it has.

A control sample of the real-image kinds: the image as `png` (`jpg` when it is kept as the JPEG file it was), `json`
with at least {"caption"}, and each condition map as `<type>.png`, or `<type>.<k>.png` (k = 1, 2, ...) for several
inputs of one type: 8-bit, single-channel, or RGB where the type is a colour rendering (COLOUR_TYPES), of the image's
size. The index metadata holds the kind and `conditions`: {type: description}.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from datamodules.errors import UsageError, did_you_mean, first_line
from datamodules.synthetic_shapes import draw_shape
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, image_bytes,
                                        json_bytes, jsonl_objects, png_bytes, read_rows, shared_image_ext, to_png,
                                        write_shards)
from datamodules.writers.synthetic_shapes import (add_shape_arguments, check_shape_arguments, shape_fields,
                                                  shapes_metadata)

# ------------------------------------------------------------------------------------------- synthetic-control
CONDITIONS = {"canny.png": "cv2.Canny(gray, 100, 200), uint8 0/255",
              "seg.png": "uint8 mask: 0 background, label+1 on the shape",
              "depth.png": "uint8 depth-like map, larger = nearer"}


def encode_control(idx: int, size: int, seed: int, spurious: float | None) -> Encoded:
    import cv2

    s = draw_shape(idx, size, seed, spurious)
    gray = cv2.cvtColor(s["image"], cv2.COLOR_RGB2GRAY)
    canny = cv2.Canny(gray, 100, 200)
    # depth-like map: a floor receding upwards (far = dark) and the shape as a near dome.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = 40.0 + 100.0 * yy / max(size - 1, 1)
    cx, cy = s["center"]
    dome = 255.0 - 60.0 * np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(s["radius"], 1.0)
    depth = np.where(s["mask"] > 0, np.clip(dome, 150, 255), depth).astype(np.uint8)
    return f"{idx:08d}", {**shape_fields(s), "canny.png": png_bytes(canny), "seg.png": png_bytes(s["mask"]),
                          "depth.png": png_bytes(depth)}


def write_synthetic_control_shards(out: Path, *, num: int, size: int = 64, spurious: float | None = None,
                                   options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """`num` synthetic shapes with their condition maps (CONDITIONS); returns the index."""
    out = Path(out)
    check_out(out)
    check_shape_arguments(num, size, spurious)
    metadata = {**shapes_metadata("synthetic-control", size, spurious), "conditions": CONDITIONS}
    encode = functools.partial(encode_control, size=size, seed=options.seed, spurious=spurious)
    return write_shards(out, list(range(num)), encode, options, metadata)


# ------------------------------------------------------------------------------------------------ shared helpers
# Condition types stored as RGB renderings; every other type is a single-channel map.
COLOUR_TYPES = frozenset({"seg", "openpose", "normal", "bbox", "outpainting", "inpainting", "blur"})


def check_size(size: int | None) -> None:
    if size is not None and size <= 0:
        raise UsageError(f"--size: must be positive, got {size}")


def fit_to_size(array: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize so that the shorter side is `size`, then crop the centre to size x size. `nearest` for maps whose
    values are labels or palette colours, which interpolation would mix."""
    import cv2

    h, w = array.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def decode_image(path: Path, mode: str) -> np.ndarray:
    """The image file as an array in PIL `mode` ("RGB" or "L"); UsageError naming an unreadable file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise UsageError(f"{path}: unreadable image ({type(e).__name__}: {e})".splitlines()[0]) from e


def parse_names(names: str | Sequence[str]) -> list[str]:
    """A comma-separated list (the CLI's) or a sequence of names, stripped, empty ones and repeats dropped."""
    items = names.split(",") if isinstance(names, str) else list(names)
    return list(dict.fromkeys(name.strip() for name in items if name.strip()))


def known_names(names: str | Sequence[str], known: Sequence[str], arg: str, what: str) -> list[str]:
    """parse_names, refusing none and any not in `known` (a UsageError naming `arg`, with did-you-mean)."""
    asked = parse_names(names)
    if not asked:
        raise UsageError(f"{arg}: name at least one of {', '.join(known)}")
    for name in asked:
        if name not in known:
            raise UsageError(f"{arg}: unknown {what} {name!r}{did_you_mean(name, known)} ({', '.join(known)})")
    return asked


# --------------------------------------------------------------------------------------------- control-images
IMAGE_CONDITIONS = ("canny", "sketch", "depth", "seg")
# The sketch's blur scale: sigma = max(1, shorter side / SKETCH_SIGMA_DIVISOR), so lines keep their look across sizes.
SKETCH_SIGMA_DIVISOR = 128.0
# Depth models whose output is metric depth (larger = farther); the others (DPT/MiDaS, relative Depth Anything) give
# relative inverse depth (larger = nearer). A config's depth_estimation_type, where it has one, decides first.
METRIC_DEPTH_MODEL_TYPES = frozenset({"glpn", "zoedepth", "depth_pro"})
MAX_SEGMENTS = 255  # an 8-bit label map holds ids 1..255
PROBE_SIZE = 64  # the blank image a model pipeline is tried on before anything is written


def sketch_map(gray: np.ndarray) -> np.ndarray:
    """A pencil sketch of a gray image as white lines on black: the colour-dodge sketch
    min(255, 255 * (gray + 1) / (GaussianBlur(gray, sigma) + 1)) (paper white where a pixel is at least as bright as
    its neighbourhood, darker where it is darker) inverted, so flat regions are 0 and the dark side of every edge is
    a line whose brightness grows with the edge's contrast."""
    import cv2

    sigma = max(1.0, min(gray.shape[:2]) / SKETCH_SIGMA_DIVISOR)
    value = gray.astype(np.float32)
    local = cv2.GaussianBlur(value, (0, 0), sigma)
    dodge = np.minimum(255.0, 255.0 * (value + 1.0) / (local + 1.0))
    return np.round(255.0 - dodge).astype(np.uint8)


def depth_is_metric(config: Any) -> bool:
    """Whether a depth model's output grows with distance (metric depth) rather than with nearness."""
    kind = getattr(config, "depth_estimation_type", None)
    return kind == "metric" if kind is not None else getattr(config, "model_type", None) in METRIC_DEPTH_MODEL_TYPES


def depth_map(predicted: np.ndarray, metric: bool) -> np.ndarray:
    """A model's depth output as 8-bit, normalised per image, near = bright (metric depth is inverted); a constant
    output is all 0."""
    nearness = -predicted.astype(np.float64) if metric else predicted.astype(np.float64)
    low, high = float(np.min(nearness)), float(np.max(nearness))
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(nearness.shape, np.uint8)
    return np.round((nearness - low) / (high - low) * 255.0).astype(np.uint8)


def label_map(segments: Sequence[dict[str, Any]], shape: tuple[int, int]) -> tuple[np.ndarray, dict[str, str]]:
    """An image-segmentation pipeline's segments as an 8-bit id map (0 = no segment, segment n = n, a later segment
    painted over an earlier one, at most MAX_SEGMENTS) and {id: label} of the ids the map shows (ids as strings,
    as JSON keys are)."""
    import cv2

    ids = np.zeros(shape, np.uint8)
    labels: dict[int, str] = {}
    for n, segment in enumerate(segments[:MAX_SEGMENTS], 1):
        mask = np.asarray(segment["mask"].convert("L")) > 0
        if mask.shape != shape:
            mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        ids[mask] = n
        labels[n] = str(segment["label"])
    shown = set(np.unique(ids).tolist()) - {0}
    return ids, {str(n): label for n, label in labels.items() if n in shown}


def load_rgb(path: str | Path, size: int | None) -> np.ndarray:
    rgb = decode_image(Path(path), "RGB")
    return rgb if size is None else fit_to_size(rgb, size)


def check_model_dir(model: str | Path | None, condition: str, task: str, arg: str,
                    conditions: Sequence[str]) -> Path | None:
    """The local model directory `arg` names, which `condition` needs and nothing else uses."""
    if condition in conditions and model is None:
        raise UsageError(f"{arg}: the {condition} condition needs it (a local directory holding a transformers "
                         f"{task} model and its image processor)")
    if model is None:
        return None
    if condition not in conditions:
        raise UsageError(f"{arg} {model}: given, but --conditions has no {condition}")
    path = Path(model).expanduser()
    if not path.is_dir():
        raise UsageError(f"{arg} {model}: not a local directory (give the directory the model was saved to)")
    return path


def load_pipeline(task: str, model: Path, arg: str) -> Any:
    """A transformers pipeline for `task` from a local model directory, on the GPU when there is one, tried once on
    a blank image so that a model of the wrong kind is refused (UsageError naming `arg`) before anything is
    written."""
    import torch
    from transformers import pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = Image.new("RGB", (PROBE_SIZE, PROBE_SIZE), (128, 128, 128))
    try:
        pipe = pipeline(task, model=str(model), device=device)
        result = pipe([probe], batch_size=1)[0]
        if task == "depth-estimation" and "predicted_depth" not in result:
            raise ValueError("its output has no predicted_depth")
        if task == "image-segmentation" and not all("mask" in seg and "label" in seg for seg in result):
            raise ValueError("its output is not a list of labelled masks")
    except Exception as e:  # noqa: BLE001 - loading and running a model fails in many ways; all mean this directory
        raise UsageError(f"{arg} {model}: not a usable {task} model ({first_line(e)})") from e
    return pipe


class ModelMaps:
    """The condition maps models make: depth (a depth-estimation pipeline) and seg (an image-segmentation one),
    run on batches of images."""

    def __init__(self, depth_model: Path | None, seg_model: Path | None, batch_size: int):
        self.depth = None if depth_model is None else load_pipeline("depth-estimation", depth_model, "--depth-model")
        self.seg = None if seg_model is None else load_pipeline("image-segmentation", seg_model, "--seg-model")
        self.metric = self.depth is not None and depth_is_metric(self.depth.model.config)
        self.batch_size = batch_size

    def maps(self, images: list[np.ndarray]) -> list[tuple[dict[str, bytes], dict[str, str] | None]]:
        """Per image: its model-made fields ({"depth.png", "seg.png"} as asked) and its segments' labels (None
        without seg)."""
        pil = [Image.fromarray(image) for image in images]
        fields: list[dict[str, bytes]] = [{} for _ in images]
        segments: list[dict[str, str] | None] = [None] * len(images)
        if self.depth is not None:
            for n, result in enumerate(self.depth(pil, batch_size=self.batch_size)):
                predicted = result["predicted_depth"].detach().float().cpu().numpy().squeeze()
                fields[n]["depth.png"] = png_bytes(depth_map(predicted, self.metric))
        if self.seg is not None:
            for n, result in enumerate(self.seg(pil, batch_size=self.batch_size)):
                ids, segments[n] = label_map(result, images[n].shape[:2])
                fields[n]["seg.png"] = png_bytes(ids)
        return list(zip(fields, segments))


class ControlImageItem(NamedTuple):
    """One row of a control-images run, as its encoder gets it: `model_fields` and `segments` are filled in by
    WithModelMaps."""
    index: int
    path: str
    rel: str
    caption: str
    ext: str
    size: int | None
    conditions: tuple[str, ...]
    canny_low: int
    canny_high: int
    model_fields: dict[str, bytes] | None = None
    segments: dict[str, str] | None = None


class WithModelMaps:
    """The items with their model-made maps, computed in this process, a batch at a time, as the writer iterates
    (so the models are loaded once, not per encoding process, and only a batch of images is held at once)."""

    def __init__(self, items: list[ControlImageItem], models: ModelMaps):
        self.items = items
        self.models = models

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ControlImageItem]:
        step = self.models.batch_size
        for start in range(0, len(self.items), step):
            batch = self.items[start:start + step]
            made = self.models.maps([load_rgb(item.path, item.size) for item in batch])
            for item, (fields, segments) in zip(batch, made):
                yield item._replace(model_fields=fields, segments=segments)


def encode_control_image(item: ControlImageItem) -> Encoded:
    import cv2

    rgb = load_rgb(item.path, item.size)
    fields = {item.ext: image_bytes(item.path, item.ext) if item.size is None else png_bytes(rgb)}
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if "canny" in item.conditions:
        fields["canny.png"] = png_bytes(cv2.Canny(gray, item.canny_low, item.canny_high))
    if "sketch" in item.conditions:
        fields["sketch.png"] = png_bytes(sketch_map(gray))
    fields.update(item.model_fields or {})
    meta: dict[str, Any] = {"caption": item.caption, "path": item.rel}
    if item.segments is not None:
        meta["segments"] = item.segments
    fields["json"] = json_bytes(meta)
    return f"{item.index:08d}", fields


def write_control_image_shards(out: Path, *, rows_file: Path, conditions: str | Sequence[str], size: int | None = None,
                               depth_model: str | Path | None = None, seg_model: str | Path | None = None,
                               canny_low: int = 100, canny_high: int = 200, model_batch_size: int = 8,
                               options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """One control sample per row of `rows_file` (.jsonl or .csv with columns image and caption, image paths
    relative to the file's directory): the image (resized and centre-cropped to `size` x `size` when given) and the
    condition maps `conditions` (of IMAGE_CONDITIONS) extracted from it; depth and seg run the models in
    `depth_model` / `seg_model` (local directories) in batches of `model_batch_size`. Returns the index."""
    out, rows_file = Path(out), Path(rows_file)
    wanted = known_names(conditions, IMAGE_CONDITIONS, "--conditions", "condition type")
    depth_dir = check_model_dir(depth_model, "depth", "depth-estimation", "--depth-model", wanted)
    seg_dir = check_model_dir(seg_model, "seg", "image-segmentation", "--seg-model", wanted)
    check_size(size)
    if not 0 <= canny_low <= canny_high:
        raise UsageError(f"--canny-low/--canny-high: need 0 <= low <= high, got {canny_low} and {canny_high}")
    if model_batch_size <= 0:
        raise UsageError(f"--model-batch-size: must be positive, got {model_batch_size}")
    rows = read_rows(rows_file, ["image", "caption"], "--rows")
    check_out(out)
    root = rows_file.parent
    files = []
    for n, row in enumerate(rows, 1):
        file = root / row["image"]
        if not file.is_file():
            raise UsageError(f"{file}: listed in {rows_file} (row {n}, column 'image') but missing")
        files.append(file)
    ext = shared_image_ext(files)
    if size is not None or ext not in ("png", "jpg"):
        ext = "png"  # resized pixels, or a format the data module does not read: stored as PNG
    models = ModelMaps(depth_dir, seg_dir, model_batch_size) if depth_dir or seg_dir else None
    items = [ControlImageItem(n, str(file), row["image"], row["caption"], ext, size, tuple(wanted), canny_low,
                              canny_high) for n, (row, file) in enumerate(zip(rows, files))]
    descriptions = {
        "canny": f"cv2.Canny(gray, {canny_low}, {canny_high}), uint8 0/255",
        "sketch": "pencil sketch, white lines on black: 255 - min(255, 255 * (gray + 1) / (GaussianBlur(gray, "
                  f"sigma) + 1)), sigma = max(1, shorter side / {SKETCH_SIGMA_DIVISOR:g})",
        "depth": f"depth-estimation model {depth_dir}, normalised per image to 0..255, near = bright"
                 + (" (its metric depth inverted)" if models is not None and models.metric else ""),
        "seg": f"image-segmentation model {seg_dir}: uint8 segment ids, 0 = no segment; json segments: {{id: label}}"}
    metadata = {"kind": "control-images", "source": str(rows_file), "image_ext": ext, "size": size,
                "conditions": {name: descriptions[name] for name in wanted},
                "depth_model": None if depth_dir is None else str(depth_dir),
                "seg_model": None if seg_dir is None else str(seg_dir)}
    return write_shards(out, items if models is None else WithModelMaps(items, models), encode_control_image,
                        options, metadata)


def add_control_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=Path, required=True,
                        help=".jsonl or .csv with columns image and caption (image paths relative to the file)")
    parser.add_argument("--conditions", required=True,
                        help=f"comma-separated condition types to extract: {', '.join(IMAGE_CONDITIONS)}")
    parser.add_argument("--size", type=int, default=None, help="resize and centre-crop images to SIZE x SIZE")
    parser.add_argument("--depth-model", default=None, help="local directory of a depth-estimation model (depth)")
    parser.add_argument("--seg-model", default=None, help="local directory of an image-segmentation model (seg)")
    parser.add_argument("--canny-low", type=int, default=100)
    parser.add_argument("--canny-high", type=int, default=200)
    parser.add_argument("--model-batch-size", type=int, default=8, help="images per depth/seg model batch")


# ---------------------------------------------------------------------------------------------------- multigen
# MultiGen-20M as released (UniControl's README and train_util/dataset.py; AnyControl's docs/DATASET.md):
#   ROOT/json_files/aesthetics_plus_all_group_<task>_all.json  one JSON object per line: "source" (the image, relative
#                                                                to ROOT/images, maybe "./"-prefixed), "prompt", and
#                                                                "control_<task>" (its condition map, relative to
#                                                                ROOT/conditions; control_seg for segbase)
#   ROOT/images/aesthetics_6_plus_0/...                        the images
#   ROOT/conditions/group_<n>_<task>/...                       the condition maps
MULTIGEN_JSON = "aesthetics_plus_all_group_{task}_all.json"
MULTIGEN_DIRS = ("json_files", "images", "conditions")


class MultiGenTask(NamedTuple):
    type: str  # our condition type
    key: str  # the json key naming the condition file
    description: str


MULTIGEN_TASKS = {
    "canny": MultiGenTask("canny", "control_canny", "canny edges, white on black"),
    "hed": MultiGenTask("hed", "control_hed", "HED soft edges, white on black"),
    "hedsketch": MultiGenTask("sketch", "control_hedsketch",
                              "HED sketch, inverted from the released black-on-white to white lines on black"),
    "depth": MultiGenTask("depth", "control_depth", "depth map, near = bright"),
    "normal": MultiGenTask("normal", "control_normal", "surface-normal map, RGB"),
    "seg": MultiGenTask("seg", "control_seg", "colour segmentation map, RGB"),
    "segbase": MultiGenTask("seg", "control_seg", "colour segmentation map, RGB"),
    "openpose": MultiGenTask("openpose", "control_openpose", "OpenPose skeleton rendering, RGB"),
    "bbox": MultiGenTask("bbox", "control_bbox", "object bounding-box rendering, RGB"),
    "outpainting": MultiGenTask("outpainting", "control_outpainting", "the image with its outside masked, RGB"),
    "inpainting": MultiGenTask("inpainting", "control_inpainting", "the image with a region masked, RGB"),
    "blur": MultiGenTask("blur", "control_blur", "the image blurred, RGB"),
    "grayscale": MultiGenTask("grayscale", "control_grayscale", "the image in gray"),
}
# Maps whose values are labels or palette colours: resized without interpolation.
NEAREST_TYPES = frozenset({"seg", "bbox"})


def multigen_layout_error(root: Path, what: str) -> UsageError:
    return UsageError(f"--root {root}: not MultiGen-20M's layout ({what}; expected json_files/"
                      f"{MULTIGEN_JSON.format(task='<task>')}, images/ and conditions/)")


def multigen_tasks(root: Path, tasks: str | Sequence[str] | None) -> list[str]:
    """The tasks to read: those asked for (each must have its json file) or every known one that has one."""
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    for name in MULTIGEN_DIRS:
        if not (root / name).is_dir():
            raise multigen_layout_error(root, f"no {name}/")
    present = [task for task in MULTIGEN_TASKS if (root / "json_files" / MULTIGEN_JSON.format(task=task)).is_file()]
    if tasks is None:
        if not present:
            raise multigen_layout_error(root, "json_files/ has no task file")
        return present
    asked = known_names(tasks, MULTIGEN_TASKS, "--tasks", "MultiGen-20M task")
    for task in asked:
        if task not in present:
            raise UsageError(f"--tasks {task}: {root / 'json_files' / MULTIGEN_JSON.format(task=task)} is missing")
    return asked


def multigen_rows(path: Path, key: str) -> Iterator[dict[str, Any]]:
    """The rows of a MultiGen-20M task file (one JSON object per line), each with a string source and `key`."""
    try:
        for n, row in jsonl_objects(path, hint="; a task file has one object per line"):
            for field in ("source", key):
                if not isinstance(row.get(field), str):
                    raise UsageError(f"{path}:{n}: {field!r} must be a file path (a row has source, prompt and "
                                     f"{key}), got {row.get(field)!r}")
            yield row
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from e


class MultiGenItem(NamedTuple):
    index: int
    image: str
    source: str
    caption: str
    size: int | None
    conditions: tuple[tuple[str, str, str, str], ...]  # (field, type, file, path relative to conditions/)


def read_condition(file: Path, ctype: str, shape: tuple[int, int], size: int | None) -> np.ndarray:
    """A released condition map in our encoding, at the image's size (`shape`), then fitted to `size`."""
    import cv2

    array = decode_image(file, "RGB" if ctype in COLOUR_TYPES else "L")
    if ctype == "sketch":
        array = 255 - array
    nearest = ctype in NEAREST_TYPES
    if array.shape[:2] != shape:
        array = cv2.resize(array, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    return array if size is None else fit_to_size(array, size, nearest=nearest)


def encode_multigen(item: MultiGenItem) -> Encoded:
    raw = Path(item.image).read_bytes()
    rgb = decode_image(Path(item.image), "RGB")
    if item.size is not None:
        fields = {"png": png_bytes(fit_to_size(rgb, item.size))}
    elif raw.startswith(b"\xff\xd8"):
        fields = {"jpg": raw}
    else:
        fields = {"png": raw if raw.startswith(b"\x89PNG") else to_png(raw)}
    paths: dict[str, str] = {}
    for field, ctype, file, rel in item.conditions:
        fields[field] = png_bytes(read_condition(Path(file), ctype, rgb.shape[:2], item.size))
        paths[field] = rel
    fields["json"] = json_bytes({"caption": item.caption, "source": item.source, "conditions": paths})
    return f"{item.index:08d}", fields


def collect_multigen(root: Path, tasks: list[str], limit: int | None) -> tuple[dict[str, dict[str, Any]], int]:
    """{source: {"caption", "conditions": [(type, path)]}} in first-seen order, at most `limit` sources, and the
    number of listed images no row gives a prompt (a row without one still lends its condition map; UniControl's
    loader skips rows without one)."""
    targets: dict[str, dict[str, Any]] = {}
    captioned = 0
    for task in tasks:
        spec = MULTIGEN_TASKS[task]
        for row in multigen_rows(root / "json_files" / MULTIGEN_JSON.format(task=task), spec.key):
            source = row["source"].removeprefix("./")
            prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else None
            target = targets.get(source)
            if target is None:
                if limit is not None and captioned >= limit:
                    continue
                target = targets[source] = {"caption": None, "conditions": []}
            if target["caption"] is None and prompt is not None:
                target["caption"] = prompt
                captioned += 1
            if (spec.type, row[spec.key]) not in target["conditions"]:
                target["conditions"].append((spec.type, row[spec.key]))
    with_caption = {source: target for source, target in targets.items() if target["caption"] is not None}
    kept = dict(list(with_caption.items())[:limit]) if limit is not None else with_caption
    return kept, len(targets) - len(with_caption)


def missing_summary(missing: dict[str, Any]) -> str:
    """The one line make_shards prints when listed files are missing."""
    by_type = ", ".join(f"{ctype} {n}" for ctype, n in missing["conditions"].items())
    return (f"multigen: {sum(missing['conditions'].values())} listed condition files missing ({by_type or 'none'}), "
            f"{missing['images']} images missing, {missing['samples_without_conditions']} samples without any "
            f"condition file skipped, {missing['images_without_prompt']} images without a prompt skipped")


def write_multigen_shards(out: Path, *, root: Path, tasks: str | Sequence[str] | None = None, limit: int | None = None,
                          size: int | None = None, options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """MultiGen-20M under `root` as released: one control sample per target image (at most `limit`, in the task
    files' order) with the condition maps of every task in `tasks` (MULTIGEN_TASKS' names; None: every task with a
    file) that it has. Missing files are counted in the index metadata's `missing` (the run fails only when every
    image or every condition file is missing). Returns the index."""
    out, root = Path(out), Path(root)
    chosen = multigen_tasks(root, tasks)
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit: must be positive, got {limit}")
    check_size(size)
    check_out(out)
    targets, without_prompt = collect_multigen(root, chosen, limit)
    if not targets:
        raise UsageError(f"--root {root}: the task files ({', '.join(chosen)}) list no image with a prompt")
    listed: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    images_missing = without_conditions = 0
    items: list[MultiGenItem] = []
    for source, target in targets.items():
        image = root / "images" / source
        present = []
        for ctype, rel in target["conditions"]:
            listed[ctype] += 1
            if (root / "conditions" / rel).is_file():
                present.append((ctype, rel))
            else:
                missing[ctype] += 1
        if not image.is_file():
            images_missing += 1
            continue
        if not present:
            without_conditions += 1
            continue
        per_type = Counter(ctype for ctype, _ in present)
        seen: Counter[str] = Counter()
        conditions = []
        for ctype, rel in present:
            seen[ctype] += 1
            field = f"{ctype}.png" if per_type[ctype] == 1 else f"{ctype}.{seen[ctype]}.png"
            conditions.append((field, ctype, str(root / "conditions" / rel), rel))
        items.append(MultiGenItem(len(items), str(image), source, target["caption"], size, tuple(conditions)))
    if images_missing == len(targets):
        raise UsageError(f"--root {root}: none of the {len(targets)} images the task files list is under images/")
    if sum(missing.values()) == sum(listed.values()):
        raise UsageError(f"--root {root}: none of the {sum(listed.values())} condition files the task files list is "
                         f"under conditions/")
    if not items:
        raise UsageError(f"--root {root}: no listed image is under images/ together with one of its condition files")
    descriptions: dict[str, str] = {}
    for task in chosen:
        descriptions.setdefault(MULTIGEN_TASKS[task].type, MULTIGEN_TASKS[task].description)
    metadata = {"kind": "multigen", "root": str(root), "size": size,
                "tasks": {task: MULTIGEN_TASKS[task].type for task in chosen}, "conditions": descriptions,
                "missing": {"images": images_missing, "conditions": dict(sorted(missing.items())),
                            "samples_without_conditions": without_conditions, "images_without_prompt": without_prompt}}
    return write_shards(out, items, encode_multigen, options, metadata)


def multigen_from_args(args: argparse.Namespace, options: ShardOptions) -> dict[str, Any]:
    """The CLI's multigen: the function, plus one line on stderr when listed files were missing."""
    index = write_multigen_shards(args.out, root=args.root, tasks=args.tasks, limit=args.limit, size=args.size,
                                  options=options)
    missing = index["metadata"]["missing"]
    if any(missing["conditions"].values()) or any(n for key, n in missing.items() if key != "conditions"):
        print(missing_summary(missing), file=sys.stderr)
    return index


def add_multigen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True,
                        help="the MultiGen-20M directory (json_files/, images/, conditions/)")
    parser.add_argument("--tasks", default=None, help="comma-separated MultiGen-20M tasks (default: every one with a "
                                                      f"file): {', '.join(MULTIGEN_TASKS)}")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images (the first listed)")
    parser.add_argument("--size", type=int, default=None, help="resize and centre-crop images to SIZE x SIZE")


# ---------------------------------------------------------------------------------------------------- the kinds
SYNTHETIC_CONTROL_KIND = ShardKind(
    name="synthetic-control", help="synthetic-control dataset", add_arguments=add_shape_arguments,
    from_args=lambda args, options: write_synthetic_control_shards(args.out, num=args.num, size=args.size,
                                                                   spurious=args.spurious, options=options))
CONTROL_IMAGES_KIND = ShardKind(
    name="control-images", help="images + captions with condition maps extracted (canny, sketch, depth, seg)",
    add_arguments=add_control_image_arguments,
    from_args=lambda args, options: write_control_image_shards(
        args.out, rows_file=args.rows, conditions=args.conditions, size=args.size, depth_model=args.depth_model,
        seg_model=args.seg_model, canny_low=args.canny_low, canny_high=args.canny_high,
        model_batch_size=args.model_batch_size, options=options))
MULTIGEN_KIND = ShardKind(name="multigen", help="MultiGen-20M as released, all conditions of each image",
                          add_arguments=add_multigen_arguments, from_args=multigen_from_args)
KINDS = (SYNTHETIC_CONTROL_KIND, CONTROL_IMAGES_KIND, MULTIGEN_KIND)

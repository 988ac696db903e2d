"""The one writer of bench result files, bench/results/NAME.json (../shared/DESIGN.md, "Performance"), and their check.

A result file is one JSON object; the writer fills in what every result records the same way (command, machine,
versions, target_met) and the bench gives the rest:

  schema      SCHEMA: the file claims this layout (files without it, such as bench/deepspeed's correctness report,
              are not performance results)
  command     how it was run: `python bench/X.py ARGS` (from sys.argv)
  machine     {"cpu": model, "cpus": logical CPUs, "device": "cpu" or the GPU's name, "platform", "torch_threads"}
  versions    {"python", "torch", ["cuda",] one per library the bench names}
  settings    optional: what the bench ran with (sizes, repeats, warm-up steps, paths compared)
  figures     {name: number}: measured values; a figure that has samples of the same name is their median
  ratios      {name: number}: this project against its reference, measured side by side in the same run
  targets     {ratio name: "<= 1.5"} (operators <=, <, >=, >); {} when the bench only measures
  target_met  {ratio name: bool}, computed here from the ratio: a missed target is written as missed (false)
  checks      optional: what the bench verified about its own measurement (same training on both sides, ...)
  notes       optional: text, what was learned
  samples     optional: {name: [number, ...]} the raw values (or [[number, ...], ...], e.g. per repeat and step);
              a figure of the same name must be their median, over at least MIN_SAMPLES of them

Names carry their unit (`_ms`, `_s`, `_samples_per_s`). Every problem found is reported at once, as a ParamError
naming the field (`ratios.cpl_over_cocoop: must be a finite number, got nan`), before anything is written; the file
is written atomically (datamodules.files.atomic_write_text), so a reader sees the old result or the new one.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from datamodules.errors import raise_param_problems
from datamodules.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SCHEMA = "worldbridge-bench-result/1"
FIELDS = ("schema", "command", "machine", "versions", "settings", "figures", "ratios", "targets", "target_met",
          "checks", "notes", "samples")  # in the order they are written
REQUIRED = ("schema", "command", "machine", "versions", "figures", "ratios", "targets", "target_met")
MIN_SAMPLES = 3  # "medians over several runs"
TARGET = re.compile(r"\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
COMPARE = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Problems = list[tuple[str, str]]


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The figure of every sample list: its median."""
    return {name: statistics.median(values) for name, values in samples.items()}


def parse_target(target: Any) -> tuple[str, float]:
    """`"<= 1.5"` -> ("<=", 1.5); ValueError for anything else."""
    match = TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None or not math.isfinite(float(match.group(2))):
        raise ValueError(f"malformed target {target!r}: write an operator and a finite number, as '<= 1.5' "
                         f"(operators: {', '.join(COMPARE)})")
    return match.group(1), float(match.group(2))


def target_met(ratio: float, target: str) -> bool:
    operator, threshold = parse_target(target)
    return COMPARE[operator](ratio, threshold)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number_problems(field: str, values: Any) -> Problems:
    if not isinstance(values, Mapping):
        return [(field, f"must be an object {{name: number}}, got {type(values).__name__}")]
    out = [(f"{field}.{name}", f"must be a finite number, got {value!r}")
           for name, value in values.items() if not is_number(value)]
    return out + [(field, f"names must be non-empty strings, got {name!r}")
                  for name in values if not isinstance(name, str) or not name]


def sample_problems(samples: Any, figures: Mapping) -> Problems:
    if not isinstance(samples, Mapping):
        return [("samples", f"must be an object {{name: [number, ...]}}, got {type(samples).__name__}")]
    out: Problems = []
    for name, values in samples.items():
        field = f"samples.{name}"
        flat = isinstance(values, list) and bool(values) and all(is_number(v) for v in values)
        nested = (isinstance(values, list) and bool(values)
                  and all(isinstance(r, list) and r and all(is_number(v) for v in r) for r in values))
        if not (flat or nested):
            out.append((field, "must be a non-empty list of finite numbers, or a non-empty list of such lists"))
        elif name in figures and is_number(figures[name]):
            if not flat:
                out.append((field, f"figures.{name} is the median of its samples: they must be one flat list"))
            elif len(values) < MIN_SAMPLES:
                out.append((field, f"figures.{name} is a median over several runs: {len(values)} samples, "
                                   f"need at least {MIN_SAMPLES}"))
            elif not math.isclose(figures[name], statistics.median(values), rel_tol=1e-12, abs_tol=0.0):
                out.append((f"figures.{name}", f"must be the median of samples.{name} "
                                               f"({statistics.median(values)!r}), got {figures[name]!r}"))
    return out


def met_targets(targets: Mapping, ratios: Mapping) -> dict[str, bool]:
    """target_met of every well-formed target that names a finite ratio."""
    met = {}
    for name, target in targets.items():
        try:
            parse_target(target)
        except ValueError:
            continue
        if name in ratios and is_number(ratios[name]):
            met[name] = target_met(ratios[name], target)
    return met


def target_problems(targets: Any, ratios: Any, met: Any) -> Problems:
    if not isinstance(targets, Mapping):
        return [("targets", f"must be an object {{ratio name: '<= 1.5'}}, got {type(targets).__name__}")]
    ratios = ratios if isinstance(ratios, Mapping) else {}
    out: Problems = []
    for name, target in targets.items():
        try:
            parse_target(target)
        except ValueError as e:
            out.append((f"targets.{name}", str(e)))
            continue
        if name not in ratios:
            out.append((f"targets.{name}", f"names no ratio (ratios: {', '.join(map(str, ratios)) or 'none'})"))
    if out or met is None:  # target_met is checked against well-formed targets only
        return out
    if not isinstance(met, Mapping) or set(met) != set(targets):
        return [("target_met", f"must hold one bool per target ({', '.join(map(str, targets)) or 'none'}), "
                               f"got {met!r}")]
    return [(f"target_met.{name}", f"is {met[name]!r}, but ratio {ratios[name]!r} against '{targets[name]}' "
                                   f"is {'met' if value else 'missed'}")
            for name, value in met_targets(targets, ratios).items() if met[name] is not value]


def description_problems(field: str, values: Any, required: Iterable[str], strings_only: bool) -> Problems:
    if not isinstance(values, Mapping):
        return [(field, f"must be an object, got {type(values).__name__}")]
    out = [(f"{field}.{key}", "missing") for key in required if key not in values]
    for key, value in values.items():
        ok = isinstance(value, str) and value.strip() if strings_only else (
            isinstance(value, str) and value.strip() or is_number(value))
        if not ok:
            out.append((f"{field}.{key}", f"must be a non-empty string{'' if strings_only else ' or a number'}, "
                                          f"got {value!r}"))
    return out


def json_problems(field: str, value: Any) -> Problems:
    if not isinstance(value, Mapping):
        return [(field, f"must be an object, got {type(value).__name__}")]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        return [(field, f"must be plain JSON (finite numbers): {e}")]
    return []


def problems(record: Any) -> Problems:
    """Everything that keeps `record` from being a result file of this layout; [] when it is one."""
    if not isinstance(record, Mapping):
        return [("result", f"must be a JSON object, got {type(record).__name__}")]
    out: Problems = [(key, "missing") for key in REQUIRED if record.get(key) is None]
    out += [(str(key), f"unknown field (fields: {', '.join(FIELDS)})") for key in record if key not in FIELDS]
    present = {key: value for key, value in record.items() if value is not None}
    if "schema" in present and present["schema"] != SCHEMA:
        out.append(("schema", f"must be {SCHEMA!r}, got {present['schema']!r}"))
    if "command" in present and not (isinstance(present["command"], str) and present["command"].strip()):
        out.append(("command", f"must be a non-empty string, got {present['command']!r}"))
    if "machine" in present:
        # the writer records cpu, cpus, device, platform, torch_threads; results converted from older files
        # (bench/results/data.json, overhead.json) hold what was recorded then, platform always
        out += description_problems("machine", present["machine"], ("platform",), strings_only=False)
    if "versions" in present:
        out += description_problems("versions", present["versions"], ("python", "torch"), strings_only=True)
    figures = present.get("figures", {})
    if "figures" in present:
        out += number_problems("figures", figures)
        if isinstance(figures, Mapping) and not figures:
            out.append(("figures", "must hold at least one figure"))
    if "ratios" in present:
        out += number_problems("ratios", present["ratios"])
    if "targets" in present:
        out += target_problems(present["targets"], present.get("ratios"), present.get("target_met"))
    if "samples" in present:
        out += sample_problems(present["samples"], figures if isinstance(figures, Mapping) else {})
    for key in ("settings", "checks"):
        if key in present:
            out += json_problems(key, present[key])
    if "notes" in present and not (isinstance(present["notes"], str) and present["notes"].strip()):
        out.append(("notes", f"must be a non-empty string, got {present['notes']!r}"))
    return out


def check(record: Any) -> None:
    """ParamError listing every problem of `record` (see problems)."""
    raise_param_problems(problems(record))


def read_result(path: str | os.PathLike) -> dict:
    """A result file, checked; ParamError (problems prefixed with the file's name) when it is not one."""
    path = Path(path)
    record = json.loads(path.read_text())
    raise_param_problems((f"{path.name}: {field}", message) for field, message in problems(record))
    return record


def claims_schema(record: Any) -> bool:
    return isinstance(record, Mapping) and "schema" in record


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """What the run ran on; `device` is the torch device the bench measured on ("cpu", "cuda", "cuda:1")."""
    on_cuda = torch.device(device).type == "cuda"
    return {"cpu": cpu_model(), "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name(torch.device(device)) if on_cuda else "cpu",
            "platform": platform.platform(), "torch_threads": torch.get_num_threads()}


def versions(libraries: Iterable[str], device: str) -> tuple[dict[str, str], Problems]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.device(device).type == "cuda":
        out["cuda"] = str(torch.version.cuda)
    missing: Problems = []
    for name in libraries:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append((f"libraries.{name}", "no installed distribution of that name"))
    return out, missing


def command(argv: Sequence[str]) -> str:
    """`python bench/X.py ARGS`, the script named relative to the repository root when it lies inside it."""
    script = Path(argv[0]).resolve()
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else argv[0]
    return "python " + shlex.join([shown, *argv[1:]])


def write_result(name: str, *, figures: Mapping[str, float] | None, ratios: Mapping[str, float] | None,
                 targets: Mapping[str, str] | None, samples: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None, checks: Mapping[str, Any] | None = None,
                 notes: str | None = None, libraries: Iterable[str] = (), device: str = "cpu",
                 argv: Sequence[str] | None = None, directory: str | os.PathLike = RESULTS) -> dict:
    """Check and write `directory/NAME.json`, print its summary; returns what was written.

    The bench gives figures, ratios, targets (and optionally samples, settings, checks, notes); command (from
    `argv`, default sys.argv), machine (on `device`), versions (python, torch, cuda on a GPU, and each of
    `libraries`, by distribution name) and target_met are filled in here. ParamError before anything is written
    when a field is missing or malformed, a figure, ratio or sample is not a finite number, a target is malformed
    or names no ratio, or a figure with samples is not their median.
    """
    found_versions, found = versions(libraries, device)
    if not (isinstance(name, str) and NAME.fullmatch(name) and not name.endswith(".json")):
        found.append(("name", f"must be a file name without .json (letters, digits, '.', '_', '-'), got {name!r}"))
    met = met_targets(targets, ratios if isinstance(ratios, Mapping) else {}) if isinstance(targets, Mapping) else {}
    record: dict[str, Any] = {
        "schema": SCHEMA, "command": command(sys.argv if argv is None else argv), "machine": machine(device),
        "versions": found_versions, "settings": settings, "figures": figures, "ratios": ratios, "targets": targets,
        "target_met": met, "checks": checks, "notes": notes, "samples": samples}
    raise_param_problems(found + problems(record))
    record = {key: value for key, value in record.items() if value is not None}
    path = Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    print(summary(record, path))
    return record


def summary(record: Mapping, path: str | os.PathLike | None = None) -> str:
    """Lines for the terminal: every figure and ratio, and for a targeted ratio its target and whether it was met."""
    lines = [f"wrote {path}"] if path is not None else []
    lines += [f"  {name} = {value:.4g}" for name, value in record["figures"].items()]
    for name, value in record["ratios"].items():
        line = f"  {name} = {value:.4g}"
        if name in record["targets"]:
            line += f" (target {record['targets'][name]}: {'met' if record['target_met'][name] else 'MISSED'})"
        lines.append(line)
    return "\n".join(lines)

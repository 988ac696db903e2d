"""A trained FlexEControl / Uni-ControlNet / ControlNet module for inference: rebuilt from its Lightning checkpoint,
exported in diffusers' format next to the unchanged base model, and rebuilt from that export.

- `load_for_inference(checkpoint)`: the module rebuilt from its checkpoint's hyper-parameters, its learned weights
  loaded strictly (lightning_modules/checkpoint_loading.py).
- `export(module, out_dir)`: the control model alone, saved with its class's `save_pretrained` under `out/control`
  (config.json + safetensors), and `worldbridge_export.json` naming the base (as the checkpoint names it: its weights
  are not copied), the variant, the condition types, the scheduler and the resolution. Per variant:
  flexecontrol -> `FlexEControlBranch.merged_copy()` (plain weights W + dW, no Kronecker updates);
  uni_controlnet -> the `UniControlNetAdapter`; controlnet -> the diffusers `ControlNetModel` itself, which
  `diffusers.ControlNetModel.from_pretrained(out / "control")` loads without this project.
  The export is written in a temporary sibling directory and renamed into place: a failed export leaves nothing.
- `load_export(export_dir)`: the module again, its control from the export.
- `export_checkpoint(checkpoint, out, base)`: the convention launch/export.py calls (checkpoint in, export out).

A checkpoint and its export sample the same images for the same seed (merging the Kronecker updates changes the
weights by float rounding only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel

from datamodules.errors import first_line
from datamodules.files import atomic_write_text, new_directory_problem, write_directory
from lightning_modules import checkpoint_loading as loading
from lightning_modules.checkpoint_loading import BaseOverride, module_target, resolve_base
from lightning_modules.diffusion import scheduler_from_name
from lightning_modules.flexecontrol.branch import FlexEControlBranch
from lightning_modules.flexecontrol.controlnet import ControlNetBaseline
from lightning_modules.flexecontrol.module import VARIANTS, FlexEControlModule
from lightning_modules.flexecontrol.uni_controlnet import UniControlNetAdapter

EXPORT_METADATA = "worldbridge_export.json"
CONTROL_SUBFOLDER = "control"
EXPORT_FORMAT = 1
# the diffusers-style class each variant's control is saved as (and loaded with)
CONTROL_CLASSES: dict[str, type] = {"flexecontrol": FlexEControlBranch, "uni_controlnet": UniControlNetAdapter,
                                    "controlnet": ControlNetModel}
MODULE_TARGET = module_target(FlexEControlModule)
OUTPUT = "images"  # what launch/sample.py makes with this method: images, from condition maps


# -- checkpoints (lightning_modules/checkpoint_loading.py, for this module class) ----------------------------------
def read_checkpoint(checkpoint_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A FlexEControlModule Lightning checkpoint as a dict; ValueError (one line naming the file) for anything else."""
    return loading.read_checkpoint(checkpoint_path, FlexEControlModule, map_location)


def build_module(hparams: Mapping[str, Any], source: str) -> FlexEControlModule:
    return loading.build_module(FlexEControlModule, hparams, source)


def module_from_checkpoint(checkpoint: Mapping[str, Any], base: BaseOverride = None,
                           source: str = "checkpoint") -> FlexEControlModule:
    return loading.module_from_checkpoint(FlexEControlModule, checkpoint, base, source)


def load_for_inference(checkpoint_path: str | os.PathLike, base: BaseOverride = None,
                       map_location: str | torch.device = "cpu") -> FlexEControlModule:
    """The module of a FlexEControlModule checkpoint in eval mode on `map_location`, with its learned weights.

    `base` replaces the checkpoint's `base` hyper-parameter (e.g. {"pretrained": DIR, "vae": None} where the same
    base lies elsewhere on this machine; a directory alone replaces only `pretrained`). ValueError (one line) for a
    file that is not such a checkpoint."""
    return loading.load_for_inference(FlexEControlModule, checkpoint_path, base, map_location)


# -- export ------------------------------------------------------------------------------------------------------------
def _json_value(value: Any, key: str) -> Any:
    """`value` as plain JSON (a torch dtype by its name); ValueError naming `key` for anything JSON cannot hold."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(f"{key}: a {type(value).__name__} cannot be written to {EXPORT_METADATA}")


def export_metadata(module: FlexEControlModule, base_source: Mapping[str, Any] | None = None,
                    resolution: int | None = None) -> dict[str, Any]:
    """What `worldbridge_export.json` holds for `module` (see the module docstring)."""
    scheduler = module.noise_scheduler
    variant = module.hparams.variant
    return {
        "format": EXPORT_FORMAT,
        "model_target": MODULE_TARGET,
        "variant": variant,
        "condition_channels": dict(module.condition_channels),
        "base": _json_value(dict(base_source if base_source is not None else module.hparams.base), "base"),
        "control": {"subfolder": CONTROL_SUBFOLDER, "class": CONTROL_CLASSES[variant].__name__},
        "scheduler": {"class": type(scheduler).__name__, "config": json.loads(scheduler.to_json_string())},
        "resolution": resolution,
    }


def control_to_save(module: FlexEControlModule) -> Any:
    """The diffusers-format model a variant exports (see the module docstring)."""
    if isinstance(module.control, FlexEControlBranch):
        return module.control.merged_copy()
    if isinstance(module.control, ControlNetBaseline):
        return module.control.controlnet
    return module.control


def export(module: FlexEControlModule, out_dir: str | os.PathLike, *, base_source: Mapping[str, Any] | None = None,
           resolution: int | None = None) -> Path:
    """Write `module`'s trained control in diffusers' format to `out_dir/control` and `worldbridge_export.json`
    beside it; returns `out_dir`. `base_source`: the base as the export names it (default: the module's `base`
    hyper-parameter); `resolution`: the image size it was trained at, when known. `out_dir` must not exist or be
    empty (ValueError otherwise); it is written atomically."""
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive int or None, got {resolution!r}")
    metadata = export_metadata(module, base_source, resolution)  # before anything is written: it may refuse a value
    control = control_to_save(module)

    def write(directory: Path) -> None:
        control.save_pretrained(directory / CONTROL_SUBFOLDER)
        atomic_write_text(directory / EXPORT_METADATA, json.dumps(metadata, indent=2) + "\n")

    return write_directory(out_dir, write)


def export_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike,
                      base: BaseOverride = None) -> Path:
    """launch/export.py's convention: export the checkpoint's module to `out_dir`. `base` (where the base lies on
    this machine) is used to rebuild the module; the export names the base as the checkpoint does. The resolution
    is recorded when the checkpoint's datamodule hyper-parameters hold one."""
    problem = new_directory_problem(out_dir)  # before the (long) load
    if problem:
        raise ValueError(problem)
    checkpoint = read_checkpoint(checkpoint_path)
    module = module_from_checkpoint(checkpoint, base, source=str(checkpoint_path))
    data = checkpoint.get("datamodule_hyper_parameters")
    resolution = data.get("resolution") if isinstance(data, Mapping) else None
    return export(module, out_dir, base_source=checkpoint["hyper_parameters"]["base"],
                  resolution=resolution if isinstance(resolution, int) and not isinstance(resolution, bool) else None)


def read_export(export_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an export written by `export`; ValueError (one line naming the directory) otherwise."""
    directory = Path(export_dir)
    path = directory / EXPORT_METADATA
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory (an export written by launch/export.py)")
    if not path.is_file():
        raise ValueError(f"{directory}: has no {EXPORT_METADATA}: not an export written by launch/export.py")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({first_line(error)})") from error
    if not isinstance(metadata, dict):
        metadata = {"format": None}  # reported below as a foreign format
    problems = []
    if metadata.get("format") != EXPORT_FORMAT:
        problems.append(f"format {metadata.get('format')!r} (this version reads {EXPORT_FORMAT})")
    if metadata.get("variant") not in VARIANTS:
        problems.append(f"variant {metadata.get('variant')!r} (one of {', '.join(VARIANTS)})")
    channels = metadata.get("condition_channels")
    if not isinstance(channels, dict) or not channels:
        problems.append("condition_channels missing")
    if not isinstance(metadata.get("base"), dict):
        problems.append("base missing")
    scheduler = metadata.get("scheduler")
    if not isinstance(scheduler, dict) or not isinstance(scheduler.get("class"), str):
        problems.append("scheduler missing")
    if not (directory / CONTROL_SUBFOLDER / "config.json").is_file():
        problems.append(f"{CONTROL_SUBFOLDER}/config.json missing")
    if problems:
        raise ValueError(f"{directory}: not a usable export: {'; '.join(problems)}")
    return metadata


def load_export(export_dir: str | os.PathLike, base: BaseOverride = None,
                map_location: str | torch.device = "cpu") -> FlexEControlModule:
    """The module of an export in eval mode on `map_location`: the base from the export's metadata (or `base`, where
    it lies on this machine, as for `resolve_base`), the control from the export with its class's from_pretrained,
    the scheduler the export names."""
    metadata = read_export(export_dir)
    source = str(export_dir)
    variant = metadata["variant"]
    module = build_module({"base": resolve_base(metadata["base"], base), "variant": variant,
                           "condition_channels": dict(metadata["condition_channels"])}, source)
    like = next(module.control_model().parameters())
    try:
        control = CONTROL_CLASSES[variant].from_pretrained(Path(export_dir) / CONTROL_SUBFOLDER, dtype=like.dtype)
    except Exception as error:  # diffusers raises OSError, ValueError, RuntimeError for missing or mismatched files
        raise ValueError(f"{source}: cannot load {CONTROL_SUBFOLDER}/ as {CONTROL_CLASSES[variant].__name__}: "
                         f"{first_line(error)}") from error
    built_for = (control.config.conditioning_channels if variant == "controlnet"
                 else dict(control.config.condition_channels))
    expected = next(iter(metadata["condition_channels"].values())) if variant == "controlnet" \
        else dict(metadata["condition_channels"])
    if built_for != expected:
        raise ValueError(f"{source}: {CONTROL_SUBFOLDER}/ was built for conditions {built_for}, its "
                         f"{EXPORT_METADATA} names {expected}")
    control = control.to(like.device).eval()
    if variant == "controlnet":
        module.control.controlnet = control  # ControlNetBaseline's condition handling around the loaded ControlNet
    else:
        module.control = control
    module.noise_scheduler = scheduler_from_name(metadata["scheduler"]["class"], metadata["scheduler"].get("config"))
    return module.eval().to(torch.device(map_location))

"""A method's LightningModule rebuilt from its Lightning checkpoint for inference, for any method whose checkpoint holds
its hyper-parameters (among them `base`, where its frozen model comes from) and only its learned weights
(learned_weights.py).

The module is built from the hyper-parameters, the base checked first with the class's `config_problems`, and the
learned weights are loaded strictly (every one present, nothing else), so a wrong file is an error, never a silently
untrained model. Every error a user can cause is a ValueError of one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import first_line

BaseOverride = Mapping[str, Any] | str | os.PathLike | None


def module_target(cls: type) -> str:
    """The dotted name a checkpoint's `model_target` records for `cls` (callbacks/model_target.py)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(checkpoint_path: str | os.PathLike, cls: type,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint of a `cls` module as a dict; ValueError (one line naming the file) for anything else."""
    path = Path(checkpoint_path)
    target = module_target(cls)
    if not path.is_file():
        what = ("a directory (a DeepSpeed checkpoint? make it one file with lightning.pytorch.utilities.deepspeed."
                "convert_zero_checkpoint_to_fp32_state_dict(DIR, FILE))" if path.is_dir() else "no such file")
        raise ValueError(f"{path}: {what}")
    try:
        # weights_only=False: Lightning checkpoints carry hyper-parameters and loop state beside the tensors
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # a foreign or truncated file: pickle, zip and EOF errors alike
        raise ValueError(f"{path}: not a readable checkpoint ({first_line(error)})") from error
    written_by = checkpoint.get("model_target") if isinstance(checkpoint, dict) else None
    if written_by is not None and written_by != target:
        raise ValueError(f"{path}: a checkpoint of {written_by}, not of {target}")
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    lightning_checkpoint = (isinstance(hparams, Mapping) and isinstance(state, Mapping)
                            and isinstance(hparams.get("base"), Mapping))
    if not lightning_checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint of {target} (no hyper_parameters with 'base', or no "
                         f"state_dict)")
    return checkpoint


def base_problem(cls: type, base: Mapping[str, Any], fix: str) -> str | None:
    """One line saying why `base` cannot load here (the class's `config_problems` of it), ending with `fix`; or
    None."""
    try:
        problems = cls.config_problems({"base": dict(base)})
    except TypeError as error:  # a key the base loader does not take
        return f"base: {first_line(error)} ({fix})"
    if not problems:
        return None
    return "; ".join(f"{name}: {message}" for name, message in problems) + f" ({fix})"


def build_module(cls: type, hparams: Mapping[str, Any], source: str) -> Any:
    """cls(**hparams), its base checked first; ValueError (one line starting with `source`)."""
    problem = base_problem(cls, hparams["base"], "give the base where it lies on this machine")
    if problem:
        raise ValueError(f"{source}: {problem}")
    try:
        return cls(**hparams)
    except (ValueError, TypeError) as error:  # hyper-parameters this version of the module refuses
        raise ValueError(f"{source}: cannot rebuild its module: {first_line(error)}") from error


def resolve_base(named: Mapping[str, Any], base: BaseOverride) -> dict[str, Any]:
    """The base to build with: `named` (the checkpoint's or export's) when `base` is None; a mapping `base` replaces
    it; a directory `base` replaces only its `pretrained` (the pipeline's location; vae: null and the like stay)."""
    if base is None:
        return dict(named)
    if isinstance(base, Mapping):
        return dict(base)
    return {**dict(named), "pretrained": os.fspath(base)}


def _few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def module_from_checkpoint(cls: type, checkpoint: Mapping[str, Any], base: BaseOverride = None,
                           source: str = "checkpoint") -> Any:
    """The module of a checkpoint read by `read_checkpoint`, in eval mode, with its learned weights; `base` as for
    `resolve_base`."""
    hparams = dict(checkpoint["hyper_parameters"])
    hparams["base"] = resolve_base(hparams["base"], base)
    module = build_module(cls, hparams, source)
    state = checkpoint["state_dict"]
    learned = module.state_dict()
    unexpected = [key for key in state if key not in learned]
    missing = [key for key in learned if key not in state]
    if missing or unexpected:
        listed = ([f"lacks {_few(missing)}"] if missing else []) + (
            [f"has weights this module lacks: {_few(unexpected)}"] if unexpected else [])
        variant = f"{hparams['variant']} " if isinstance(hparams.get("variant"), str) else ""
        raise ValueError(f"{source}: its learned weights do not fit a {variant}{cls.__name__} with its "
                         f"hyper-parameters ({'; '.join(listed)})")
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:  # shapes that differ from what the hyper-parameters build
        raise ValueError(f"{source}: its learned weights do not fit its hyper-parameters: {first_line(error)}") from error
    module.on_load_checkpoint(dict(checkpoint))
    return module.eval()


def load_for_inference(cls: type, checkpoint_path: str | os.PathLike, base: BaseOverride = None,
                       map_location: str | torch.device = "cpu") -> Any:
    """The `cls` module of a checkpoint in eval mode on `map_location`, with its learned weights. `base` replaces the
    checkpoint's `base` hyper-parameter where the same base lies elsewhere on this machine (a directory alone
    replaces only `pretrained`)."""
    checkpoint = read_checkpoint(checkpoint_path, cls, map_location="cpu")
    module = module_from_checkpoint(cls, checkpoint, base, source=str(checkpoint_path))
    return module.to(torch.device(map_location))

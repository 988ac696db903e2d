"""The parts of an SD-1.x-family text-to-image (or text-to-video) model, loaded, checked, saved and frozen.

A pipeline directory (or hub id) in diffusers' layout has one subfolder per part: unet/, vae/, text_encoder/,
tokenizer/, scheduler/. Each part comes from there unless its argument says otherwise: a string names a hub id or a
local directory holding that part alone, a mapping `{"config": {...}}` builds it from that config with random
weights (tiny models for tests and demos), and `vae=None` means diffusion in pixel space. Saving writes the same
layout with each part's own `save_pretrained`, so what is saved loads back with `from_pretrained`, with or without
this project.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from diffusers import AutoencoderKL, SchedulerMixin
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from datamodules.errors import did_you_mean, raise_param_problems
from datamodules.param_types import PATH_PREFIXES, ModelSource, model_source_problem
from lightning_modules.clip_pretrain.tokenizer import save_tokenizer
from lightning_modules.diffusion.sampling import scheduler_class, scheduler_class_problem, scheduler_from_name

UNET_CLASSES = ("UNet2DConditionModel", "UNetMotionModel", "UNet3DConditionModel")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODEL_INDEX = "model_index.json"


class _FromPretrained:
    """The default of a part's argument: load it from `pretrained`'s subfolder of the part's name."""

    def __repr__(self) -> str:
        return "FROM_PRETRAINED"

    def __reduce__(self) -> str:
        return "FROM_PRETRAINED"  # one instance, also after pickling


FROM_PRETRAINED: Any = _FromPretrained()

# What a part's argument may be: FROM_PRETRAINED, a hub id / directory of the part alone, or {"config": {...}}.
PartSource = Annotated[str, ModelSource()] | Mapping[str, Any]


@dataclass
class DiffusionParts:
    """The parts a diffusion method trains and samples with. `vae` None: the model denoises pixels."""

    unet: nn.Module
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin  # the training noise scheduler

    @property
    def pixel_space(self) -> bool:
        return self.vae is None


def _model_class(part: str, unet_class: str) -> type:
    """The class of a model part: the UNet's is named by `unet_class` (one of UNET_CLASSES)."""
    if part == "unet":
        import diffusers

        return getattr(diffusers, unet_class)
    return AutoencoderKL if part == "vae" else CLIPTextModel


@functools.cache
def _init_parameters(cls: type) -> tuple[str, ...] | None:
    """Keyword arguments a config may set for a diffusers model or scheduler class (its __init__'s, which
    register_to_config records); None when it takes any keyword."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(name for name in params if name != "self")


def _config_problems(part: str, cls: type | None, source: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a part's {config: {...}}: its shape, then (when the class is known) keys it does not take."""
    if set(source) != {"config"} or not isinstance(source["config"], Mapping):
        message = ("a mapping must be {config: {...}} (a model built from that config with random weights); "
                   f"got keys {sorted(map(str, source))}")
        return [(part, message)]
    # "_class_name", "_diffusers_version" and the like: bookkeeping of a saved config, which from_config skips
    keys = [k for k in source["config"] if not str(k).startswith("_")]
    if cls is None:
        return []
    if cls is CLIPTextModel:
        allowed = tuple(inspect.signature(CLIPTextConfig.__init__).parameters)
        # PretrainedConfig takes any keyword, so only CLIPTextConfig's own names are told apart from typos
        unknown = [k for k in keys if k not in allowed and did_you_mean(str(k), allowed)]
    else:
        allowed = _init_parameters(cls)
        unknown = [] if allowed is None else [k for k in keys if k not in allowed]
    return [(f"{part}.config", f"unknown key {k}{did_you_mean(str(k), allowed)} for {cls.__name__}")
            for k in unknown]


def _is_local(value: str) -> bool:
    return value.startswith(PATH_PREFIXES) or Path(value).expanduser().exists()


def _pipeline_problem(pretrained: str, subfolders: list[str]) -> str | None:
    """Why `pretrained` cannot give the parts that come from it: not a directory / hub id, or a missing subfolder."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        missing = [s for s in subfolders if not (path / s).is_dir()]
        if missing:
            return (f"'{pretrained}' has no {', '.join(s + '/' for s in missing)} subfolder"
                    f"{'s' if len(missing) > 1 else ''} (give {' / '.join(missing)} explicitly"
                    f"{'; vae: null for pixel space' if 'vae' in missing else ''})")
        return None
    if not _is_local(pretrained):
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        # a pipeline's root holds model_index.json, not the config.json model_source_problem looks for
        try:  # a path when cached; None or a "known missing" marker otherwise
            if isinstance(try_to_load_from_cache(pretrained, MODEL_INDEX), str):
                return None
        except HFValidationError:
            pass
    return model_source_problem(pretrained)


def _dtype(dtype: torch.dtype | str) -> torch.dtype | None:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES.get(str(dtype).removeprefix("torch."))


def diffusion_parts_problems(pretrained: str | None = None, *, unet: Any = FROM_PRETRAINED,
                             vae: Any = FROM_PRETRAINED, text_encoder: Any = FROM_PRETRAINED,
                             tokenizer: Any = FROM_PRETRAINED, scheduler: str = "DDPMScheduler",
                             scheduler_config: Mapping[str, Any] | None = None,
                             unet_class: str = "UNet2DConditionModel", revision: str | None = None,
                             dtype: torch.dtype | str = torch.float32) -> list[tuple[str, str]]:
    """What stops `load_diffusion_parts` with these arguments, found before anything loads: [(parameter, message)]."""
    problems: list[tuple[str, str]] = []
    sources = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
    if unet_class not in UNET_CLASSES:
        hint = did_you_mean(str(unet_class), UNET_CLASSES)
        problems.append(("unet_class", f"unknown UNet class '{unet_class}'{hint}; one of {', '.join(UNET_CLASSES)}"))
    from_pretrained = [part for part, source in sources.items() if source is FROM_PRETRAINED]
    if pretrained is not None and not isinstance(pretrained, str):
        problems.append(("pretrained", f"expected a hub id or a local directory, got {type(pretrained).__name__}"))
    elif pretrained is None:
        message = ("comes from pretrained by default, but pretrained is not given: give pretrained, or a hub id / "
                   "local directory / {config: {...}} for it")
        problems += [(part, message) for part in from_pretrained]
    elif from_pretrained:
        problem = _pipeline_problem(pretrained, from_pretrained)
        if problem:
            problems.append(("pretrained", problem))
    for part, source in sources.items():
        if source is FROM_PRETRAINED:
            continue
        if source is None:
            if part != "vae":
                problems.append((part, "only the vae may be null (pixel space)"))
        elif isinstance(source, str):
            problem = model_source_problem(source)
            if problem:
                problems.append((part, problem))
        elif isinstance(source, Mapping):
            if part == "tokenizer":
                problems.append((part, "a tokenizer is loaded, never built from a config: give a hub id or a directory"))
            else:
                known = part != "unet" or unet_class in UNET_CLASSES
                problems += _config_problems(part, _model_class(part, unet_class) if known else None, source)
        else:
            got = type(source).__name__
            problems.append((part, f"expected a hub id, a local directory or {{config: {{...}}}}, got {got}"))
    scheduler_problem = scheduler_class_problem(scheduler)
    if scheduler_problem:
        problems.append(("scheduler", scheduler_problem))
    if scheduler_config is not None:
        if not isinstance(scheduler_config, Mapping):
            problems.append(("scheduler_config", f"expected a mapping, got {type(scheduler_config).__name__}"))
        elif not scheduler_problem:
            allowed = _init_parameters(scheduler_class(scheduler))
            if allowed is not None:
                problems += [("scheduler_config", f"unknown key {k}{did_you_mean(str(k), allowed)} for {scheduler}")
                             for k in scheduler_config if k not in allowed]
    if revision is not None and not isinstance(revision, str):
        problems.append(("revision", f"expected a string, got {type(revision).__name__}"))
    if _dtype(dtype) is None:
        problems.append(("dtype", f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}"))
    return problems


def base_config_problems(params: Mapping[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
    """A method's `config_problems` of its `base` parameter (load_diffusion_parts' arguments): every problem
    `diffusion_parts_problems` finds, as `base.<argument>`, before anything loads; nothing without `check_files`."""
    base = params.get("base")
    if not check_files or not isinstance(base, Mapping):
        return []
    return [(f"base.{name}", message) for name, message in diffusion_parts_problems(**base)]


def _load_model(part: str, cls: type, source: Any, pretrained: str | None, revision: str | None,
                dtype: torch.dtype) -> nn.Module:
    if isinstance(source, Mapping):
        config = dict(source["config"])
        model = CLIPTextModel(CLIPTextConfig(**config)) if cls is CLIPTextModel else cls.from_config(config)
        # cast only when needed: diffusers warns on every cast of some models (UNetMotionModel)
        return model if next(model.parameters()).dtype == dtype else model.to(dtype)
    if source is FROM_PRETRAINED:
        at_revision = {} if revision is None else {"revision": revision}
        return cls.from_pretrained(pretrained, subfolder=part, dtype=dtype, **at_revision)
    return cls.from_pretrained(source, dtype=dtype)


def _scheduler_config(name: str, pretrained: str | None, revision: str | None) -> dict[str, Any]:
    """The pipeline's scheduler config when it has one (whatever class wrote it), else {}."""
    if pretrained is None:
        return {}
    local = Path(pretrained).expanduser()
    if local.is_dir() and not (local / "scheduler").is_dir():
        return {}
    cls = scheduler_class(name)
    at_revision = {} if revision is None else {"revision": revision}
    try:
        return dict(cls.load_config(pretrained, subfolder="scheduler", **at_revision))
    except OSError:  # diffusers' EnvironmentError: the pipeline has no scheduler config
        return {}


def load_diffusion_parts(pretrained: Annotated[str, ModelSource()] | None = None, *,
                         unet: PartSource = FROM_PRETRAINED, vae: PartSource | None = FROM_PRETRAINED,
                         text_encoder: PartSource = FROM_PRETRAINED, tokenizer: PartSource = FROM_PRETRAINED,
                         scheduler: str = "DDPMScheduler", scheduler_config: Mapping[str, Any] | None = None,
                         unet_class: str = "UNet2DConditionModel", revision: str | None = None,
                         dtype: torch.dtype | str = torch.float32) -> DiffusionParts:
    """The parts of a pipeline (see the module docstring for what each argument may be).

    `scheduler` is a diffusers scheduler class by name, configured from `<pretrained>/scheduler` when there is one,
    updated by `scheduler_config`. `dtype` is the dtype of every model part. `revision` applies to what is loaded
    from `pretrained`. Every problem with the arguments is raised at once (ParamError) before anything loads.
    Nothing is frozen here: the method decides what trains (`freeze` the rest)."""
    raise_param_problems(diffusion_parts_problems(
        pretrained, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        scheduler_config=scheduler_config, unet_class=unet_class, revision=revision, dtype=dtype))
    torch_dtype = _dtype(dtype)
    models = {part: None if source is None else _load_model(part, _model_class(part, unet_class), source, pretrained,
                                                             revision, torch_dtype)
              for part, source in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    if tokenizer is FROM_PRETRAINED:
        at_revision = {} if revision is None else {"revision": revision}
        loaded_tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **at_revision)
    else:
        loaded_tokenizer = CLIPTokenizer.from_pretrained(tokenizer)
    config = {**_scheduler_config(scheduler, pretrained, revision), **dict(scheduler_config or {})}
    return DiffusionParts(unet=models["unet"], vae=models["vae"], text_encoder=models["text_encoder"],
                          tokenizer=loaded_tokenizer, scheduler=scheduler_from_name(scheduler, config))


def save_diffusion_parts(parts: DiffusionParts, directory: str | Path) -> Path:
    """Write `parts` in diffusers' pipeline layout (no vae/ in pixel space); `load_diffusion_parts(directory)` (with
    `vae=None` in pixel space) loads them back. With a vae and a 2-D UNet the directory is also a
    StableDiffusionPipeline that diffusers loads by itself (model_index.json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts.unet.save_pretrained(directory / "unet")
    if parts.vae is not None:
        parts.vae.save_pretrained(directory / "vae")
    parts.text_encoder.save_pretrained(directory / "text_encoder")
    save_tokenizer(parts.tokenizer, directory / "tokenizer")
    parts.scheduler.save_pretrained(directory / "scheduler")
    if parts.vae is not None and type(parts.unet).__name__ == "UNet2DConditionModel":
        import diffusers

        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", type(parts.vae).__name__],
                 "text_encoder": ["transformers", type(parts.text_encoder).__name__],
                 "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", type(parts.scheduler).__name__],
                 "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
                 "requires_safety_checker": False}
        (directory / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return directory


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """A frozen module's `train`: whatever mode is asked, it and its children stay in eval mode."""
    return nn.Module.train(module, False)


def freeze(module: nn.Module) -> nn.Module:
    """`module` in eval mode without gradients, and kept in eval mode when a parent's `.train()` reaches it (Lightning
    calls model.train() when fitting starts): dropout and the like stay off in a frozen part."""
    module.requires_grad_(False)
    # an instance attribute shadows nn.Module.train; a partial of a module-level function still pickles and copies
    module.train = functools.partial(_stay_in_eval, module)
    module.eval()
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether `freeze` was applied to `module`."""
    train = module.__dict__.get("train")
    return isinstance(train, functools.partial) and train.func is _stay_in_eval

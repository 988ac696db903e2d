"""Sampling: any diffusers scheduler by class name, and one denoising loop with classifier-free guidance and a
per-step hook that every method samples with.

`denoise` knows no model: it calls `model_fn(latent_input, t, context)`, so a method wraps its UNet (plus control
branch, plus motion modules) in one function. Under guidance the unconditional and conditional halves run as one
batched forward ([uncond, cond]), the way diffusers' pipelines do it. `step_hook(i, t, latents)` runs before each
scheduler step and may return new latents (Mojito's direction guidance moves the latents there).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from datamodules.errors import ParamError, did_you_mean, first_line

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], Any]
StepHook = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@functools.lru_cache(maxsize=1)
def scheduler_names() -> tuple[str, ...]:
    """The scheduler classes diffusers exports (torch ones; Flax schedulers are another framework's)."""
    import diffusers

    return tuple(sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax")))


def scheduler_class_problem(name: Any) -> str | None:
    """Why `name` is not a usable diffusers scheduler class, or None."""
    if not isinstance(name, str):
        return f"expected a diffusers scheduler class name, got {type(name).__name__}"
    if name not in scheduler_names():
        return f"unknown scheduler class '{name}'{did_you_mean(name, scheduler_names())}"
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        try:  # diffusers' stand-in for a class whose optional dependency is missing raises with the reason
            cls.from_config({})
        except ImportError as error:
            return f"{name} cannot be used here: {first_line(error)}"
        return f"{name} is not a scheduler class"
    return None


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called `name`; a ParamError on `scheduler` (with a did-you-mean) otherwise."""
    problem = scheduler_class_problem(name)
    if problem:
        raise ParamError([("scheduler", problem)])
    import diffusers

    return getattr(diffusers, name)


def scheduler_from_name(name: str, config: Mapping[str, Any] | None = None) -> Any:
    """A scheduler of class `name` from `config` (another scheduler's config works: keys a class does not take are
    left out), or with the class's defaults."""
    cls = scheduler_class(name)
    if config is None:
        return cls()
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return cls.from_config(dict(config))
    # other classes' keys (and "_class_name" and the like) would each log a warning in from_config
    return cls.from_config({k: v for k, v in dict(config).items() if k in parameters})


def _concat(uncond: Any, cond: Any) -> Any:
    """[uncond, cond] along the batch for a tensor, or leaf by leaf for a mapping / tuple / list of them; any other
    value is shared by both halves and passed on once."""
    if isinstance(cond, torch.Tensor):
        return torch.cat([uncond, cond])
    if isinstance(cond, Mapping):
        return {key: _concat(uncond[key], value) for key, value in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_concat(u, c) for u, c in zip(uncond, cond, strict=True))
    return cond


def _output_tensor(output: Any) -> torch.Tensor:
    """A model's prediction: a tensor, a diffusers output's `.sample`, or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, tuple):
        return output[0]
    raise TypeError(f"model_fn returned {type(output).__name__}; expected a tensor (or an output with .sample)")


def guided(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def denoise(model_fn: ModelFn, scheduler: Any, latents: torch.Tensor, *, num_steps: int, guidance_scale: float,
            context: Any, uncond_context: Any = None, step_hook: StepHook | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoise initial noise `latents` in `num_steps` steps of `scheduler`; returns the final latents.

    Guidance (guidance_scale > 1) needs `uncond_context` (the empty prompt's context, same structure as `context`).
    `generator` feeds stochastic schedulers' noise (DDPM, ancestral samplers): the same seed gives the same result.
    The loop runs without gradients; a `step_hook` that needs them uses `torch.enable_grad()` itself."""
    problems = []
    if not isinstance(num_steps, int) or num_steps < 1:
        problems.append(("num_steps", f"must be an integer >= 1, got {num_steps!r}"))
    use_guidance = guidance_scale > 1
    if use_guidance and uncond_context is None:
        problems.append(("uncond_context", f"guidance_scale {guidance_scale} > 1 needs the unconditional context"))
    if problems:
        raise ParamError(problems)
    scheduler.set_timesteps(num_steps, device=latents.device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if takes_generator else {}
    both_contexts = _concat(uncond_context, context) if use_guidance else None
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        if step_hook is not None:
            changed = step_hook(i, t, latents)
            if changed is not None:
                latents = changed
        if use_guidance:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            uncond, cond = _output_tensor(model_fn(model_input, t, both_contexts)).chunk(2)
            prediction = guided(uncond, cond, guidance_scale)
        else:
            prediction = _output_tensor(model_fn(scheduler.scale_model_input(latents, t), t, context))
        latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
    return latents

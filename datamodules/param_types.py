"""What a constructor parameter's annotation can tell the config checker (launch/config.py) beyond its Python type.

Used as `typing.Annotated` metadata, so the parameter keeps its plain type for everything else:

- `KwargsOf(target)`: a mapping whose keys are keyword arguments of `target`, e.g.
  `clip: Annotated[dict[str, Any], KwargsOf(FrozenCLIP)]` -- every key and value inside is checked against
  `target`'s signature with the rest of the config (unknown keys with "did you mean", types, missing keys).
- `ModelSource()`: a string naming a model: a local directory or a Hugging Face hub id. The checker decides
  before anything runs whether it can be loaded (a local directory, the local Hugging Face cache, one short hub
  lookup), so a mistyped path is one line, not a minute of retries and a traceback. `model_source_problem` is
  that decision; a class may also call it from its `config_problems` where a model is only sometimes used (CPL's
  BERTScore scorer).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KwargsOf:
    target: Any  # the class or function the mapping's keys are keyword arguments of


@dataclass(frozen=True)
class ModelSource:
    """A local directory or a Hugging Face hub id."""


PATH_PREFIXES = ("/", "./", "../", "~")  # a value starting so can only be a path, never a hub id
HUB_TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=None)
def model_source_problem(value: str) -> str | None:
    """Why the model a `ModelSource` value names cannot be loaded, or None: a local directory, a hub id in the local
    Hugging Face cache, or one the hub answers for within HUB_TIMEOUT_S (asked once per value and process)."""
    path = Path(value).expanduser()
    if path.is_dir():
        return None
    if value.startswith(PATH_PREFIXES) or path.exists():
        return f"'{value}' is not a local directory" + (" (it is a file)" if path.exists() else "")
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if try_to_load_from_cache(value, "config.json") is not None:
            return None
    except HFValidationError:
        return f"'{value}' is neither a local directory nor a Hugging Face hub id"
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return f"'{value}' is not a local directory and not in the Hugging Face cache (hub lookups are off)"
    try:
        model_info(value, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return None  # it exists; access is the hub's business when it is downloaded
    except RepositoryNotFoundError:
        return f"'{value}' is not a local directory and the Hugging Face hub has no model of that name"
    except Exception:  # any network failure: DNS, refused, timeout, proxy
        return f"'{value}' is not a local directory, not in the Hugging Face cache, and the hub is unreachable"
    return None

"""Experiment configs: `base:` merging, dotlist overrides, `target`/`params` validation and instantiation.

A config is checked completely before anything runs: every problem becomes one `ConfigIssue`
(`FILE: key.path: message`) and they are reported together, so a user fixes a config in one pass.
"""

from __future__ import annotations

import ast
import collections.abc
import enum
import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datamodules.errors import ParamError, UsageError, did_you_mean, first_line
from datamodules.param_types import KwargsOf, ModelSource, model_source_problem

# Modules whose objects a config may build. Anything else is refused before import, so a config
# cannot run arbitrary code by naming it.
PROJECT_PACKAGES = ("lightning_modules", "datamodules", "callbacks", "launch")
REPO = Path(__file__).resolve().parent.parent
ALLOWED_TARGET_PREFIXES = (
    *PROJECT_PACKAGES,
    "torch",
    "lightning",
    "transformers",
    "diffusers",
    "peft",
    "torchmetrics",
)

SECTIONS = ("base", "run", "model", "data", "trainer", "callbacks", "slurm")
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class ConfigIssue:
    source: str  # file (or "command line") that set the offending key
    key: str  # dotted key path, e.g. model.params.n_ctx
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}" if self.key else f"{self.source}: {self.message}"


@dataclass
class LoadedConfig:
    cfg: DictConfig  # merged and interpolation-resolved
    path: Path
    sources: dict[str, str]  # dotted key -> file that set it last
    check_files: bool = True  # False: the paths and models a config names are not looked at (shipped configs)

    def source_of(self, key: str) -> str:
        """The file that set `key` or its closest ancestor; the main file if nobody did."""
        probe = key
        while probe:
            if probe in self.sources:
                return self.sources[probe]
            probe = probe.rpartition(".")[0]
        return str(self.path)


def _flatten_keys(node: Any, prefix: str = "") -> list[str]:
    keys = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            keys += _flatten_keys(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            keys += _flatten_keys(v, f"{prefix}.{i}" if prefix else str(i))
    return keys


def _read_yaml(path: Path, key: str, referrer: str, issues: list[ConfigIssue]) -> dict | None:
    if not path.is_file():
        issues.append(ConfigIssue(referrer, key, f"file not found: {path}"))
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        issues.append(ConfigIssue(str(path), "", f"not valid YAML{where}: {getattr(e, 'problem', e)}"))
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        issues.append(ConfigIssue(str(path), "", "the top level must be a mapping of sections"))
        return None
    return data


def _collect_layers(path: Path, key: str, referrer: str, issues: list[ConfigIssue], stack: tuple,
                    extra_bases: list[tuple[str, Path]] = ()) -> list:
    """Files in merge order: each file's `base:` entries (recursively, left to right), then `extra_bases` (the
    top file's: those given on the command line, as (key, path)), then the file."""
    path = path.resolve()
    if path in stack:
        issues.append(ConfigIssue(referrer, key, f"circular base: {path} includes itself"))
        return []
    data = _read_yaml(path, key, referrer, issues)
    if data is None:
        return []
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        issues.append(ConfigIssue(str(path), "base", "must be a list of file paths"))
        bases = []
    layers = []
    for i, base in enumerate(bases):
        layers += _collect_layers(path.parent / str(base), f"base.{i}", str(path), issues, stack + (path,))
    for extra_key, extra in extra_bases:
        layers += _collect_layers(extra, extra_key, COMMAND_LINE, issues, stack + (path,))
    layers.append((str(path), data))
    return layers


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    append: bool = False  # KEY+=VALUE: VALUE goes at the end of the list at KEY
    delete: bool = False  # ~KEY: KEY leaves the config (a mapping's key a value cannot remove: KEY={...} merges)


def parse_overrides(tokens: list[str], issues: list[ConfigIssue]) -> list[Override]:
    parsed = []
    for token in tokens:
        if token.startswith("~") and "=" not in token:
            key = token[1:].strip()
            if key:
                parsed.append(Override(key, None, delete=True))
            else:
                issues.append(ConfigIssue(COMMAND_LINE, "", "'~' names no key: ~KEY removes KEY (e.g. ~callbacks.0)"))
            continue
        key, sep, value = token.partition("=")
        append = key.endswith("+")
        key = key.removesuffix("+").strip()
        if not sep or not key:
            issues.append(ConfigIssue(COMMAND_LINE, "", f"'{token}' is not key=value (e.g. trainer.max_steps=100) or "
                                                        f"key+=value (e.g. callbacks+={{target: ...}}) or ~key"))
            continue
        try:
            parsed.append(Override(key, yaml.safe_load(value) if value else None, append))
        except yaml.YAMLError:
            parsed.append(Override(key, value, append))
    return parsed


def command_line_bases(overrides: list[Override], issues: list[ConfigIssue]) -> list[tuple[str, Path]]:
    """`base=[a.yaml, ...]` (or `base+=a.yaml`) on the command line: files merged after the config's own base
    files and before its keys, as a `base:` list in the file would be; paths relative to the working directory."""
    bases: list[tuple[str, Path]] = []
    for o in overrides:
        if o.key.startswith("base."):
            issues.append(ConfigIssue(COMMAND_LINE, o.key, "give base files as a list: base=[a.yaml,b.yaml]"))
        elif o.key == "base":
            files = o.value if isinstance(o.value, list) else [o.value]
            if not all(isinstance(f, str) and f for f in files):
                issues.append(ConfigIssue(COMMAND_LINE, "base", f"must be a file path or a list of them, got {o.value!r}"))
                continue
            bases += [(f"base.{len(bases)}", Path(f)) for f in files]
    return bases


_MISSING = object()


def _delete_key(merged: DictConfig, o: Override, sources: dict[str, str], issues: list[ConfigIssue]) -> None:
    parent_key, _, last = o.key.rpartition(".")
    parent = OmegaConf.select(merged, parent_key, default=None) if parent_key else merged
    if isinstance(parent, ListConfig) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    elif isinstance(parent, DictConfig) and last in parent:
        del parent[last]
    else:
        options = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        issues.append(ConfigIssue(COMMAND_LINE, o.key, f"~{o.key}: no such key to remove{did_you_mean(last, options)}"))
        return
    for k in [k for k in sources if k == o.key or k.startswith(f"{o.key}.")]:
        del sources[k]


def _apply_override(merged: DictConfig, o: Override, sources: dict[str, str], issues: list[ConfigIssue]) -> None:
    """Set, append or remove one command-line value; every key it creates or sets is the command line's."""
    if o.delete:
        _delete_key(merged, o, sources, issues)
        return
    parts = o.key.split(".")
    created = [".".join(parts[:i]) for i in range(1, len(parts) + 1)
               if OmegaConf.select(merged, ".".join(parts[:i]), default=_MISSING) is _MISSING]
    for i in range(1, len(parts)):  # an index one past a list's end appends (callbacks.2.target=... on two callbacks)
        prefix = ".".join(parts[:i])
        node = OmegaConf.select(merged, prefix, default=None)
        if isinstance(node, ListConfig) and parts[i].isdigit() and int(parts[i]) >= len(node):
            if int(parts[i]) > len(node):
                entries = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}"
                issues.append(ConfigIssue(COMMAND_LINE, o.key, f"{prefix} has {entries}: the next one is "
                                                               f"{prefix}.{len(node)} (or append with {prefix}+=...)"))
                return
            node.append({} if i < len(parts) - 1 else None)
    key = o.key
    if o.append:
        current = OmegaConf.select(merged, o.key, default=None)
        if current is not None and not isinstance(current, ListConfig):
            issues.append(ConfigIssue(COMMAND_LINE, o.key, f"{o.key}+= appends to a list, but {o.key} is "
                                                           f"{type(current).__name__}; set it with {o.key}=..."))
            return
        if current is None:
            OmegaConf.update(merged, o.key, [], force_add=True)
            current = OmegaConf.select(merged, o.key)
        key = f"{o.key}.{len(current)}"
        current.append(None)
        created.append(key)
    try:
        OmegaConf.update(merged, key, o.value, merge=True, force_add=True)
    except OmegaConfBaseException as e:
        issues.append(ConfigIssue(COMMAND_LINE, o.key, f"cannot set: {first_line(e)}"))
        return
    for k in [*created, *_flatten_keys(o.value, key), key]:
        sources[k] = COMMAND_LINE


def load_config(path: str | Path, overrides: list[str] | None = None) -> LoadedConfig:
    """Merge `base:` files, the file and `key=value` overrides; raise UsageError listing every problem."""
    path = Path(path)
    issues: list[ConfigIssue] = []
    override_list = parse_overrides(list(overrides or []), issues)
    layers = _collect_layers(path, "", COMMAND_LINE, issues, (), command_line_bases(override_list, issues))

    sources: dict[str, str] = {}
    merged = OmegaConf.create({})
    for source, data in layers:
        for k in _flatten_keys(data):
            sources[k] = source
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as e:
            issues.append(ConfigIssue(source, "", f"cannot merge: {e}"))
    for o in override_list:
        if o.key != "base" and not o.key.startswith("base."):
            _apply_override(merged, o, sources, issues)

    loaded = LoadedConfig(merged, path, sources)
    if not issues:
        try:
            OmegaConf.resolve(merged)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", "") or ""
            issues.append(ConfigIssue(loaded.source_of(key), key, f"bad interpolation: {e.msg if hasattr(e, 'msg') else e}"))
    if issues:
        raise UsageError([str(i) for i in issues])
    return loaded


def check_sections(loaded: LoadedConfig, issues: list[ConfigIssue]) -> None:
    for section in loaded.cfg.keys():
        if section not in SECTIONS:
            issues.append(ConfigIssue(loaded.source_of(str(section)), str(section),
                                      f"unknown section{did_you_mean(str(section), SECTIONS)}; sections are {', '.join(SECTIONS[1:])}"))


# ----------------------------------------------------------------------------------------------
# target / params


def is_target_node(node: Any) -> bool:
    return isinstance(node, (dict, DictConfig)) and "target" in node


def _import_target(target: str) -> Any:
    """Import `a.b.C` (or `a.b.C.method`): the longest importable module prefix, then attributes."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as e:
            # a missing dependency inside an existing module is not "no such target"
            if e.name and not ".".join(parts[:cut]).startswith(e.name):
                raise
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(target)


def resolve_target(target: Any, key: str, source: str, issues: list[ConfigIssue]) -> Any | None:
    if not isinstance(target, str) or not target:
        issues.append(ConfigIssue(source, key, "target must be a dotted import path such as torch.optim.AdamW"))
        return None
    if not any(target == p or target.startswith(p + ".") for p in ALLOWED_TARGET_PREFIXES):
        issues.append(ConfigIssue(source, key, f"'{target}' is outside the allowed packages "
                                                f"({', '.join(ALLOWED_TARGET_PREFIXES)})"))
        return None
    try:
        obj = _import_target(target)
    except (ImportError, AttributeError) as e:
        moved = project_objects_named(target.rpartition(".")[2])
        hint = f" (did you mean {' or '.join(moved)}?)" if moved else ""
        issues.append(ConfigIssue(source, key, f"cannot import '{target}': {e}{hint}"))
        return None
    if not callable(obj):
        issues.append(ConfigIssue(source, key, f"'{target}' is not a class or function"))
        return None
    return obj


def project_objects_named(name: str) -> list[str]:
    """Dotted paths of the project's top-level classes and functions called `name`: where a target that moved (or
    was misremembered) lives now. The sources are parsed, not imported, so a wrong target costs no heavy import."""
    found = []
    for package in PROJECT_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            if any(isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name for node in tree.body):
                module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                found.append(f"{module.removesuffix('.__init__')}.{name}")
    return found


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _type_hints(obj: Any) -> dict[str, Any]:
    """Annotations of obj's parameters, evaluated one by one: one unresolvable forward reference (a name
    imported only for type checkers) leaves that parameter unchecked, not the whole signature."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(fn, include_extras=True)  # extras: Annotated metadata (datamodules/param_types)
    except Exception:
        pass
    namespace = dict(getattr(inspect.unwrap(fn), "__globals__", {}))
    hints = {}
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        if not isinstance(annotation, str):
            hints[name] = annotation
            continue
        try:
            hints[name] = eval(annotation, namespace)  # annotations are code of an allow-listed, imported module
        except Exception:
            continue
    return hints


def describe_type(tp: Any) -> str:
    """An annotation in a user's words: `one of coop, cocoop, cpl`, `int or null`, `list of str`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return describe_type(args[0])
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(m.name for m in tp)
    if origin in (typing.Union, types.UnionType):
        named = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(named + (["null"] if type(None) in args else []))
    if origin in (list, tuple, collections.abc.Sequence) and args and args[-1] is not Ellipsis:
        return f"{getattr(origin, '__name__', 'list')} of {_grouped(args[0])}"
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return f"mapping of {_grouped(args[0])} to {_grouped(args[1])}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _grouped(tp: Any) -> str:
    words = describe_type(tp)
    return f"({words})" if " or " in words else words


def annotated_with(tp: Any, marker: type) -> Any | None:
    """The first `marker` instance in an annotation's Annotated metadata (inside Optional / Union too), else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return next((m for m in args[1:] if isinstance(m, marker)), None) or annotated_with(args[0], marker)
    if origin in (typing.Union, types.UnionType):
        return next((found for a in args if (found := annotated_with(a, marker)) is not None), None)
    return None


def value_matches(value: Any, tp: Any) -> bool:
    """Whether a YAML value can be given for an annotation. Unknown annotations accept anything."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return True
    if is_target_node(value):
        return True  # built objects are checked by their own signature
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return value_matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (Path,) or (inspect.isclass(tp) and issubclass(tp, Path)):
        return isinstance(value, str)
    container = origin or tp
    if container in (list, tuple, collections.abc.Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        if not args or (container is tuple and len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return all(value_matches(v, item) for v in value)
        if container is tuple:
            return len(args) == len(value) and all(value_matches(v, a) for v, a in zip(value, args))
        return all(value_matches(v, args[0]) for v in value)
    if container in (dict, collections.abc.Mapping, typing.Mapping):
        if not isinstance(value, (dict, DictConfig)):
            return False
        return not args or all(value_matches(v, args[1]) for v in value.values())
    if inspect.isclass(tp) and isinstance(value, (str, int, float, bool)):
        # a YAML scalar given for a class (Tensor, nn.Module, an Enum): it must already be one, or name a member
        if issubclass(tp, enum.Enum):
            return any(value in (m.value, m.name) for m in tp)
        return isinstance(value, tp)
    return True  # mappings and lists for other classes, and callables: checked when the object is built


def check_target_node(node: Any, key: str, loaded: LoadedConfig, issues: list[ConfigIssue],
                      extra_params: collections.abc.Iterable[str] = ()) -> None:
    """Check one `{target, params}` node and every target node nested in its params.

    `extra_params` are supplied by the framework at build time (not by the config) and count as given. A target
    with a classmethod `config_problems(params, check_files) -> [(param, message)]` has its values checked too, once
    its keys and types are right: what its constructor would refuse is reported with everything else.
    """
    unknown_fields = [k for k in node.keys() if k not in ("target", "params")]
    for k in unknown_fields:
        issues.append(ConfigIssue(loaded.source_of(f"{key}.{k}"), f"{key}.{k}",
                                  f"unknown key{did_you_mean(str(k), ('target', 'params'))}; an object is target + params"))
    obj = resolve_target(node.get("target"), f"{key}.target", loaded.source_of(f"{key}.target"), issues)
    params = node.get("params") or {}
    if not isinstance(params, (dict, DictConfig)):
        issues.append(ConfigIssue(loaded.source_of(f"{key}.params"), f"{key}.params", "must be a mapping of keyword arguments"))
        return
    if obj is not None:
        before = len(issues)
        check_params(obj, params, f"{key}.params", loaded, issues, extra_params)
        if len(issues) == before and callable(getattr(obj, "config_problems", None)):
            plain = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params)
            for name, message in obj.config_problems(plain, check_files=loaded.check_files):
                where = f"{key}.params.{name}"
                issues.append(ConfigIssue(loaded.source_of(where), where, message))
    for name, value in params.items():
        check_nested(value, f"{key}.params.{name}", loaded, issues)


def check_nested(value: Any, key: str, loaded: LoadedConfig, issues: list[ConfigIssue]) -> None:
    if is_target_node(value):
        check_target_node(value, key, loaded, issues)
    elif isinstance(value, (list, ListConfig)):
        for i, v in enumerate(value):
            check_nested(v, f"{key}.{i}", loaded, issues)


def check_params(obj: Any, params: Any, key: str, loaded: LoadedConfig, issues: list[ConfigIssue],
                 extra_params: collections.abc.Iterable[str] = ()) -> None:
    sig = _signature(obj)
    if sig is None:
        return
    hints = _type_hints(obj)
    accepted = {n: p for n, p in sig.parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    given = set(map(str, params.keys())) | set(extra_params)
    for name, value in params.items():
        name = str(name)
        where = f"{key}.{name}"
        if name not in accepted:
            if not takes_any:
                issues.append(ConfigIssue(loaded.source_of(where), where, f"unknown key{did_you_mean(name, accepted)}"))
            continue
        tp = hints.get(name, accepted[name].annotation)
        plain = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        if value is not None or accepted[name].default is not None:
            if not value_matches(plain, tp):
                expected = describe_type(tp)
                got = repr(plain) if expected.startswith("one of") else f"{type(plain).__name__} {plain!r}"
                issues.append(ConfigIssue(loaded.source_of(where), where, f"expected {expected}, got {got}"))
                continue
        kwargs_of = annotated_with(tp, KwargsOf)
        if kwargs_of is not None and isinstance(value, (dict, DictConfig)):
            check_params(kwargs_of.target, value, where, loaded, issues)
        if loaded.check_files and annotated_with(tp, ModelSource) is not None and isinstance(plain, str):
            problem = model_source_problem(plain)
            if problem:
                issues.append(ConfigIssue(loaded.source_of(where), where, problem))
    for name, p in accepted.items():
        if p.default is p.empty and p.kind is not p.VAR_KEYWORD and name not in given:
            issues.append(ConfigIssue(loaded.source_of(key), f"{key}.{name}", "missing required key"))


def check_settings(cls: type, section: Any, key: str, loaded: LoadedConfig, issues: list[ConfigIssue]) -> None:
    """A settings section (a dataclass with `problems()`): its keys and types, then, if those are right, its values."""
    before = len(issues)
    check_params(cls, section, key, loaded, issues)
    if len(issues) == before:
        settings = cls(**OmegaConf.to_container(section, resolve=True))
        issues += [ConfigIssue(loaded.source_of(f"{key}.{name}"), f"{key}.{name}", message)
                   for name, message in settings.problems()]


class BuildError(Exception):
    """A constructor refused its arguments while a config was being built: `key` is the config key of the object
    (e.g. model or model.params.clip), `problems` [(parameter or "", message)]."""

    def __init__(self, key: str, problems: list[tuple[str, str]]):
        self.key, self.problems = key, problems
        super().__init__("; ".join(f"{self.key_of(name)}: {message}" for name, message in problems))

    def key_of(self, parameter: str) -> str:
        return f"{self.key}.params.{parameter}" if parameter else f"{self.key}.params"


def instantiate(node: Any, _key: str = "", _usage_errors: tuple[type[BaseException], ...] = (), **extra: Any) -> Any:
    """Build `{target, params}` (recursively: nested target nodes in params are built first).

    A constructor raising ParamError (or one of `_usage_errors`) becomes a BuildError naming the config key of the
    object it was building, however deeply nested."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, list):
        return [instantiate(v, f"{_key}.{i}", _usage_errors) for i, v in enumerate(node)]
    if not is_target_node(node):
        if isinstance(node, dict):
            return {k: instantiate(v, f"{_key}.{k}", _usage_errors) for k, v in node.items()}
        return node
    obj = _import_target(node["target"])
    params = {k: instantiate(v, f"{_key}.params.{k}", _usage_errors) for k, v in (node.get("params") or {}).items()}
    try:
        return obj(**params, **extra)
    except ParamError as e:
        raise BuildError(_key, e.problems) from e
    except _usage_errors as e:
        raise BuildError(_key, [("", first_line(e))]) from e


def build(loaded: LoadedConfig, key: str, usage_errors: tuple[type[BaseException], ...] = (ValueError,),
          **extra: Any) -> Any:
    """Instantiate the object at `key` of a checked config. A constructor refusing its values is a usage error: one
    line per problem, naming the config key and the file (or command line) that set it."""
    node = OmegaConf.select(loaded.cfg, key)
    try:
        return instantiate(node, key, usage_errors, **extra)
    except BuildError as e:
        raise UsageError([str(ConfigIssue(loaded.source_of(e.key_of(name)), e.key_of(name), message))
                          for name, message in e.problems]) from e


def targets_in(node: Any, key: str = "") -> list[tuple[str, str]]:
    """(key path, target) for every object a config would build, outermost first."""
    found = []
    if isinstance(node, (dict, DictConfig)):
        if "target" in node:
            found.append((key, str(node["target"])))
        for k, v in node.items():
            found += targets_in(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, ListConfig)):
        for i, v in enumerate(node):
            found += targets_in(v, f"{key}.{i}")
    return found

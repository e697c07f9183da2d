"""Typed configuration: dataclasses loaded from YAML, strictly.

Unknown keys and wrong types are errors that name the key path and the expected type
(nanoGPT's ``Unknown config key``); every default is visible in the dataclass. ``save_config``
writes the resolved config atomically, next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from latentdiff.fs import atomic_write_text  # noqa: F401 (re-exported: trainers import it from here)

T = TypeVar("T")
# a decimal number as people write it: 3e-4, 1E5, .5, -2.0e+3 (not nan/inf, which are never meant)
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A config file or dict does not match its dataclass."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp, where: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e).removeprefix(f"{where}: "))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)} ({'; '.join(errors)})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, get_args(tp)))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string; it is the number people mean
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")  # a bug in our dataclasses, not user input


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {', '.join(f'{where}.{k}'.lstrip('.') for k in unknown)}; "
            f"allowed keys{' in ' + where if where else ''}: {', '.join(fields)}"
        )
    kwargs = {k: _convert(_over_section_default(fields[k], v), hints[k], f"{where}.{k}".lstrip("."))
              for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _over_section_default(f: dataclasses.Field, value):
    """A section given in part (``optim: {max_train_steps: 6}``) starts from the field's own default
    (a trainer's ``default_factory``, e.g. LoRA's batch size 4), not from the section class's."""
    if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        if dataclasses.is_dataclass(default):
            return {**to_dict(default), **value}
    return value


def to_dict(obj) -> dict:
    """Plain dict (tuples become lists) suitable for YAML/JSON."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def load_config(path: str | os.PathLike | None, cls: type[T], overrides: dict | None = None) -> T:
    """Read YAML at ``path`` into ``cls``; ``overrides`` (dotted keys → values) win over the file.
    ``path=None``: ``cls``'s own defaults under the overrides, through the same strict checks (a
    command run with flags only, no ``--config``)."""
    if path is None:
        return _from_overrides({}, cls, overrides, None)
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"Config file {p} is a folder; pass a YAML file such as configs/tiny_unet.yaml")
    if not p.is_file():
        raise FileNotFoundError(f"Config file {p} not found; the configs shipped with latentdiff are in configs/")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not a UTF-8 text file ({e.reason} at byte {e.start}); pass a YAML config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}; fix the file (YAML needs 'key: value' lines "
                          "with consistent indentation)") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return _from_overrides(data, cls, overrides, p)


def _from_overrides(data: dict, cls: type[T], overrides: dict | None, p: Path | None) -> T:
    """``data`` (a config file's mapping, or {}) with the dotted ``overrides`` applied, into ``cls``."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        if not all(parents + [last]):
            raise ConfigError(f"--set {dotted}: empty key; write dotted keys like optim.learning_rate")
        for i, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                section = ".".join(parents[: i + 1])
                raise ConfigError(f"--set {dotted}={value}: {section} is a value ({node!r}), not a section with keys; "
                                  f"set it directly: --set {section}=VALUE")
        node[last] = value
    for name in getattr(cls, "CONFIG_REFERENCES", ()):
        if p is not None and isinstance(data.get(name), str):
            data[name] = resolve_reference(data[name], p)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if p is None:
            raise
        raise ConfigError(f"{p}: {e}") from None


def resolve_reference(ref: str, config_path: Path) -> str:
    """A file named inside a config (``model: emoji.yaml``, listed in the class's
    ``CONFIG_REFERENCES``) is looked up beside that config first, then from the current folder, so
    the shipped commands work from any working directory."""
    if not ref or Path(ref).expanduser().is_absolute():
        return ref
    beside = config_path.parent / ref
    return str(beside) if beside.exists() else ref


def save_config(obj, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))

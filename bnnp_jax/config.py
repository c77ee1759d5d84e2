"""YAML configs loaded into frozen dataclasses, strictly.

An unknown key is an error that names the valid keys; a missing required key
or a value of the wrong type is an error that names the key's full path
(``training.lr_start``). Nested dataclass fields are loaded recursively, lists
become tuples so configs stay hashable (they are static arguments to ``jit``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["ConfigError", "from_dict", "to_dict", "load_yaml", "with_quick", "dump_yaml"]


class ConfigError(ValueError):
    """A config file or mapping that does not match its dataclass."""


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if _is_dataclass_type(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, path)
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: Mapping[str, Any], path: str = ""):
    """Build dataclass ``cls`` from ``data``, strictly (see module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        full = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], full)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{full}'")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def to_dict(obj) -> dict:
    """Dataclass -> plain dict of lists/scalars (for writing YAML)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(a) for a in v]
        if isinstance(v, dict):
            return {k: conv(a) for k, a in v.items()}
        return v

    return conv(obj)


def load_yaml(cls, path: str | Path):
    """Load ``path`` into ``cls``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def with_quick(cls, raw: dict | None, quick: bool = False) -> dict:
    """The keyword arguments of ``cls`` from a config mapping with an optional ``quick:``
    mapping of overrides (applied when ``quick``; nested mappings merge, other values
    replace). Unknown keys in either raise ``ValueError`` naming the valid ones."""
    raw = dict(raw or {})
    overrides = raw.pop("quick", {}) or {}
    valid = sorted(f.name for f in dataclasses.fields(cls))
    for where, d in (("config", raw), ("quick", overrides)):
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown keys {unknown} in {where}; valid keys: {valid}")
    if quick:
        for k, v in overrides.items():
            raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


def dump_yaml(obj, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))

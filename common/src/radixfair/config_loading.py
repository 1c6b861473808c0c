"""Builds frozen dataclass configs from a YAML file plus RADIXFAIR_* env vars.

Precedence: defaults < file < environment < explicit overrides (flags). The
launcher, the containers and the Helm chart all go through this one path, so
a setting means the same thing everywhere. Env names are the dotted field
path upper-cased with "__" between levels, for example
RADIXFAIR_SCHEDULER__QUANTUM=512.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
N = TypeVar("N", bound=type)

ENV_PREFIX = "RADIXFAIR_"


class ConfigError(ValueError):
    pass


def load_config(
    cls: type[T],
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    where: str | None = None,
) -> T:
    """``where`` names the config in errors; by default the file's path."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    for key, value in (env if env is not None else os.environ).items():
        if key.startswith(ENV_PREFIX):
            _set_path(data, key[len(ENV_PREFIX) :].lower().split("__"), yaml.safe_load(value))
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted.split("."), value)
    return build(cls, data, where=where or str(path or "config"))


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> str:
    """``unknown policy 'd2lmp'; did you mean 'd2lpm'? (choose from: ...)``: one line for a bad name."""
    options = list(choices)
    close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {value!r}{hint} (choose from: {', '.join(options)})"


def by_name(kind: str, classes: Iterable[N]) -> dict[str, N]:
    """A registry's table, ``cls.name -> cls`` in the given order; ValueError on a name used twice.

    Without the check a second class with an existing name would silently replace the first.
    """
    table: dict[str, N] = {}
    for cls in classes:
        name = cls.name  # type: ignore[attr-defined]
        if name in table:
            both = f"{table[name].__name__}, {cls.__name__}"
            raise ValueError(f"two {kind} classes are named {name!r}: {both}")
        table[name] = cls
    return table


def build(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Constructs dataclass ``cls`` from nested mappings, rejecting unknown keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown field(s) {unknown}{hint}; known: {sorted(fields)}")
    kwargs = {
        name: _coerce(hints[name], _with_defaults(fields[name], value), f"{where}.{name}")
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _with_defaults(spec: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested dataclass field keeps the field's default for the rest."""
    if not isinstance(value, Mapping):
        return value
    if spec.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = spec.default_factory()  # type: ignore[misc]
    elif spec.default is not dataclasses.MISSING:
        default = spec.default
    else:
        return value
    if not dataclasses.is_dataclass(default):
        return value
    base = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
    merged = {k: v for k, v in base.items() if not dataclasses.is_dataclass(v)}
    return {**merged, **value}


def as_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, where)
    if origin in (tuple,) and isinstance(value, list | tuple):
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner, v, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (int, str, bool, float) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {'.'.join(path[: depth + 1])} is a value, not a section")
    node[path[-1]] = value

"""Typed configs ⇄ YAML recipes, with `--set key=value` overrides.

Every stage (and export) is configured by a frozen dataclass whose fields are documented once, by
comments. A recipe is a short YAML file of the fields that differ from the defaults; `--set
lora.r=16` overrides one field from the command line. Unknown keys, wrong types and bad values are
caught here — before any model loads — as one-line `InputError`s naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmkp_edge.errors import InputError

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise InputError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except InputError as exc:
                errors.append(str(exc))
        raise errors[0] if len(errors) == 1 else InputError(f"{key}: cannot use {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping of {hint.__name__} fields")
        return build(hint, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else str
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{key}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise InputError(f"{key}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise InputError(f"{key}: expected a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise InputError(f"{key}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise InputError(f"{key}: expected an integer, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """A `cls` instance from a (nested) mapping; unknown keys are errors."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise InputError(f"unknown config key {prefix + unknown[0]!r} (known: {', '.join(types_)})")
    values = {name: _coerce(v, types_[name], f"{prefix}{name}") for name, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:          # a required field was not given
        raise InputError(f"{prefix or 'config'}: {exc}") from None


def _set_path(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {dotted}: {part!r} is not a section")
    node[leaf] = value


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`["lora.r=16", "lr=1e-4"]` → nested dict (values parsed as YAML scalars)."""
    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects key=value, got {pair!r}")
        _set_path(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def merge(base: dict, extra: dict) -> dict:
    """`extra` laid over `base`, recursively for nested mappings."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML recipe as a mapping (an empty file is an empty recipe)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read recipe: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe is a mapping of config keys")
    return data


def load(cls: type[C], recipe: str | os.PathLike | None = None, overrides: Iterable[str] = (),
         **fields: Any) -> C:
    """Defaults ← recipe file ← keyword fields ← `--set` overrides; then `validate()` if defined."""
    data = read_recipe(recipe) if recipe else {}
    data = merge(data, {k: v for k, v in fields.items() if v is not None})
    data = merge(data, parse_overrides(overrides))
    config = build(cls, data)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data for saving (tuples become lists so YAML stays readable)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(config))


def save(config: Any, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config (plus e.g. package versions) as YAML."""
    data = to_dict(config)
    if extra:
        data = {**data, **extra}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

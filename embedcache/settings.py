"""Settings dataclasses built from YAML mappings: unknown keys named instead of silently dropped, and every value
checked against its field's type (a hand-edited config says `epochs: ten` as easily as `epochs: 10`)."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields
from typing import TypeVar

from embedcache.errors import ConfigError

T = TypeVar("T")

_WORDS = {int: "a whole number", float: "a finite number", bool: "true or false", str: "text", dict: "a mapping",
          list: "a list", type(None): "null"}


def _matches(value, hint) -> bool:
    """Whether a YAML value fits a field's type hint (int | None, list[float], ...); unknown hints accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if (origin or hint) is dict:
        return isinstance(value, dict)
    if (origin or hint) is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value) if args else isinstance(
            value, list)
    return True


def describe_type(hint) -> str:
    """A field's type in words: "a whole number or null", "a list of finite numbers", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    if (origin or hint) is list and args:
        return f"a list of {describe_type(args[0]).removeprefix('a ')}s"
    return _WORDS.get(origin or hint, str(hint))


def settings_from_dict(cls: type[T], values: dict, section: str) -> T:
    """`cls(**values)` after checking every key is a field of the right type; calls `validate()` on the result."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of options, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        raise ConfigError(f"{section}: unknown option(s) {unknown}; known options are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise ConfigError(f"{section}.{name}: {repr(value)[:80]} is not {describe_type(hints[name])}")
    settings = cls(**values)
    settings.validate()
    return settings

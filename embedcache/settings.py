"""Settings dataclasses built from YAML mappings, with unknown keys named instead of silently dropped."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from embedcache.errors import ConfigError

T = TypeVar("T")


def settings_from_dict(cls: type[T], values: dict, section: str) -> T:
    """`cls(**values)` after checking every key is a field; calls `validate()` on the result."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown option(s) {unknown}; known options are {sorted(known)}")
    settings = cls(**values)
    settings.validate()
    return settings

"""Subsets of a store (splits, classes, clip ids) selected as a view, without copying any token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache.errors import ConfigError, StoreError

KEYS = ("splits", "classes", "clip_ids")


@dataclass(frozen=True)
class Subset:
    """Which clips and label columns a view keeps; None keeps everything along that axis.

    classes keeps those label columns (in the store's order) and the clips with at least one of them.
    """

    splits: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    clip_ids: tuple[str, ...] | None = None

    @property
    def is_everything(self) -> bool:
        return self.splits is None and self.classes is None and self.clip_ids is None

    def to_dict(self) -> dict:
        """Plain data for configs and provenance (the clip-id list is recorded in full)."""
        return {key: list(value) for key in KEYS if (value := getattr(self, key)) is not None}

    @classmethod
    def from_value(cls, value: Subset | dict | str | None) -> Subset:
        """A Subset from itself, None, a mapping {splits, classes, clip_ids} or the CLI text form (see `parse`)."""
        if value is None:
            return cls()
        if isinstance(value, Subset):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if not isinstance(value, dict):
            raise ConfigError(f"subset: expected a mapping with keys {list(KEYS)}, got {type(value).__name__}")
        unknown = sorted(set(value) - set(KEYS))
        if unknown:
            raise ConfigError(f"subset: unknown key(s) {unknown}; use {', '.join(KEYS)}")
        fields = {}
        for key in KEYS:
            items = value.get(key)
            if items is None:
                continue
            if isinstance(items, str):
                items = [part.strip() for part in items.split(",") if part.strip()]
            if not isinstance(items, list | tuple) or not items:
                raise ConfigError(f"subset.{key}: give a non-empty list of names")
            fields[key] = tuple(str(item) for item in items)
        return cls(**fields)

    @classmethod
    def parse(cls, text: str) -> Subset:
        """'splits=train,valid;classes=dog,cat;clip_ids=@ids.txt' (an @file holds one clip id per line)."""
        value: dict = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, sep, items = part.partition("=")
            key = key.strip()
            if not sep or key not in KEYS:
                raise ConfigError(f"--subset {text!r}: use key=a,b;key=c with keys {', '.join(KEYS)}")
            items = items.strip()
            if items.startswith("@"):
                path = Path(items[1:])
                try:
                    value[key] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
                except OSError as error:
                    raise ConfigError(f"--subset {key}=@{path}: cannot read the file ({error})") from None
            else:
                value[key] = [item.strip() for item in items.split(",") if item.strip()]
        return cls.from_value(value)


def _unknown(asked: Sequence[str], known: Sequence[str], what: str, where: str) -> None:
    known = set(known)
    missing = [name for name in asked if name not in known]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StoreError(f"{where}: subset names {what} that are not in the store: {shown}")


def select(
    subset: Subset,
    clip_ids: np.ndarray,
    labels: np.ndarray,
    split_codes: np.ndarray,
    split_names: Sequence[str],
    label_names: Sequence[str],
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(row mask [N] bool, kept label columns [C'] int) of a subset; unknown names are a StoreError."""
    rows = np.ones(len(clip_ids), dtype=bool)
    columns = np.arange(len(label_names))
    if subset.splits is not None:
        _unknown(subset.splits, split_names, "splits", where)
        codes = [list(split_names).index(name) for name in subset.splits]
        rows &= np.isin(split_codes, codes)
    if subset.classes is not None:
        _unknown(subset.classes, label_names, "classes", where)
        wanted = set(subset.classes)
        columns = np.array([c for c, name in enumerate(label_names) if name in wanted], dtype=np.int64)
        rows &= labels[:, columns].any(axis=1)
    if subset.clip_ids is not None:
        _unknown(subset.clip_ids, clip_ids.tolist(), "clip ids", where)
        rows &= np.isin(clip_ids, np.asarray(subset.clip_ids, dtype=str))
    if not rows.any():
        raise StoreError(f"{where}: the subset {subset.to_dict()} selects no clips")
    return rows, columns

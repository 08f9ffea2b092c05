"""Manifests: one row per clip (clip_id, path, labels, split), read from CSV or JSONL and validated row by row."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from embedcache.audio import check_audio
from embedcache.errors import BadInputError, ConfigError

COLUMNS = ("clip_id", "path", "labels", "split")
LABEL_SEPARATOR = ";"
# The vocabulary file read when none is given explicitly.
DEFAULT_LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class Clip:
    """One manifest row: an id, an absolute audio path, its labels and its split."""

    clip_id: str
    path: Path
    labels: tuple[str, ...]
    split: str


@dataclass
class Manifest:
    """The clips of a dataset with a fixed label vocabulary; sha256 covers the manifest (+ vocabulary) bytes."""

    clips: list[Clip]
    label_names: list[str]
    source: Path
    sha256: str

    def label_matrix(self) -> np.ndarray:
        """Multi-hot labels as uint8 [N, C] in `label_names` order."""
        column = {name: i for i, name in enumerate(self.label_names)}
        matrix = np.zeros((len(self.clips), len(self.label_names)), dtype=np.uint8)
        for row, clip in enumerate(self.clips):
            matrix[row, [column[name] for name in clip.labels]] = 1
        return matrix

    def split_names(self) -> list[str]:
        """Split names in order of first appearance."""
        return list(dict.fromkeys(clip.split for clip in self.clips))

    def is_multilabel(self) -> bool:
        """True when any clip has no label or more than one."""
        return any(len(clip.labels) != 1 for clip in self.clips)

    def __len__(self) -> int:
        return len(self.clips)


@dataclass
class _Parsed:
    """A parsed manifest: the good clips (with their row numbers) and the bad rows (row number, name, reason)."""

    manifest: Manifest
    clip_rows: list[int]
    bad_rows: list[tuple[int, str, str]]


@dataclass(frozen=True)
class _Row:
    """A raw manifest row with where it came from, before validation."""

    number: int  # line number in the file (the CSV header is line 1)
    fields: dict[str, object]


def read_manifest(
    path: str | Path, labels_path: str | Path | None = None, follow_symlinks: bool = False
) -> Manifest:
    """Parse and validate a manifest (no audio decoding); raises BadInputError listing every bad row."""
    parsed = _parse(Path(path), labels_path, follow_symlinks)
    if parsed.bad_rows:
        raise BadInputError(
            f"{path}: {len(parsed.bad_rows)} bad row(s); fix them or run `embedcache manifest check {path}`",
            problems=[(name, reason) for _, name, reason in parsed.bad_rows],
        )
    return parsed.manifest


def find_bad_rows(
    manifest_path: str | Path,
    labels_path: str | Path | None = None,
    workers: int = 2,
    decode: bool = True,
    follow_symlinks: bool = False,
) -> tuple[Manifest, list[tuple[str, str]]]:
    """Parse the manifest and fully decode every file; returns (manifest of the good clips, [(clip id, reason)]).

    decode=False checks the rows only (columns, ids, labels, paths) and decodes nothing. follow_symlinks lets a
    symlink in the manifest's folder lead outside it (by default such a row is bad).
    """
    parsed = _parse(Path(manifest_path), labels_path, follow_symlinks)
    manifest = parsed.manifest
    root = manifest.source.parent
    paths = [clip.path for clip in manifest.clips]
    reasons = _check_all(paths, workers) if decode else [None] * len(paths)
    good = []
    bad_rows = list(parsed.bad_rows)
    for clip, number, reason in zip(manifest.clips, parsed.clip_rows, reasons, strict=True):
        if reason is None:
            good.append(clip)
        else:
            shown = PurePosixPath(os.path.relpath(clip.path, root)).as_posix()
            bad_rows.append((number, clip.clip_id, f"{shown}: {reason}"))
    bad_rows.sort(key=lambda item: item[0])
    problems = [(name, reason) for _, name, reason in bad_rows]
    return Manifest(good, manifest.label_names, manifest.source, manifest.sha256), problems


def read_label_file(path: str | Path) -> list[str]:
    """Label names, one per line (blank lines ignored); raises ConfigError for duplicates or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: label vocabulary file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"{path}: label vocabulary is empty; write one label name per line")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{path}: label {name!r} is listed twice; each name must appear once")
        if LABEL_SEPARATOR in name:
            raise ConfigError(f"{path}: label {name!r} contains {LABEL_SEPARATOR!r}, the manifest's separator")
        seen.add(name)
    return names


def split_labels(text: str) -> tuple[str, ...]:
    """`a;b;;c ` -> ('a', 'b', 'c'): stripped, empties dropped, duplicates removed in order."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(LABEL_SEPARATOR) if part.strip()))


def _parse(path: Path, labels_path: str | Path | None, follow_symlinks: bool = False) -> _Parsed:
    """Read rows, check them, and build the manifest of syntactically good rows plus the bad ones."""
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    vocab_file = Path(labels_path) if labels_path is not None else path.parent / DEFAULT_LABELS_FILE
    if labels_path is None and not vocab_file.is_file():
        vocab_file = None
    vocabulary = read_label_file(vocab_file) if vocab_file is not None else None
    digest = hashlib.sha256(path.read_bytes())
    if vocab_file is not None:
        digest.update(vocab_file.read_bytes())

    root = path.resolve().parent
    clips: list[Clip] = []
    bad_rows: list[tuple[int, str, str]] = []
    clip_rows: list[int] = []
    # Every id seen so far, good row or bad, so a repeat of a bad row's id is still a duplicate.
    first_row: dict[str, int] = {}
    for row in _read_rows(path):
        clip, reason = _validate(row, root, vocabulary, first_row, follow_symlinks)
        name = str(row.fields.get("clip_id") or "").strip()
        if name:
            first_row.setdefault(name, row.number)
        if reason is not None:
            bad_rows.append((row.number, name or f"row {row.number}", reason))
        else:
            clips.append(clip)
            clip_rows.append(row.number)
    if not clips and not bad_rows:
        raise BadInputError(f"{path}: the manifest has no rows")
    label_names = vocabulary if vocabulary is not None else sorted({n for clip in clips for n in clip.labels})
    manifest = Manifest(clips, label_names, path.resolve(), digest.hexdigest())
    return _Parsed(manifest, clip_rows, bad_rows)


def _field_problem(fields: dict) -> str | None:
    """Why the row's fields are not what a manifest row holds (extra CSV values, wrong JSON types), or None."""
    if None in fields:  # csv.DictReader's key for values past the header's columns
        extra = [value for value in fields[None] if value is not None]
        return (f"{len(COLUMNS) + len(extra)} or more values but the header names fewer columns (extra "
                f"{extra[:3]}); several labels are separated by ';', not ',' (or quote the field)")
    for column in ("clip_id", "path", "split"):
        value = fields.get(column)
        if column == "clip_id" and isinstance(value, int) and not isinstance(value, bool):
            continue  # an integer id reads the same as text; floats and booleans do not
        if value is not None and not isinstance(value, str):
            return (f"{column} must be a string, got {json.dumps(value)[:40]} ({type(value).__name__}); "
                    f"write it in quotes")
    labels = fields.get("labels")
    if labels is not None and not isinstance(labels, str) and not (
        isinstance(labels, list) and all(isinstance(name, str) for name in labels)
    ):
        return f"labels must be a string ('a;b') or a list of strings, got {json.dumps(labels)[:40]}"
    return None


def _validate(
    row: _Row, root: Path, vocabulary: list[str] | None, first_row: dict[str, int], follow_symlinks: bool = False
) -> tuple[Clip | None, str | None]:
    """A Clip for a good row, or the reason the row is bad."""
    missing = [column for column in COLUMNS if row.fields.get(column) is None]
    if missing:
        return None, f"missing column(s) {', '.join(missing)}; rows need {', '.join(COLUMNS)}"
    problem = _field_problem(row.fields)
    if problem is not None:
        return None, problem
    clip_id = str(row.fields["clip_id"]).strip()
    if not clip_id:
        return None, "empty clip_id"
    if clip_id in first_row:
        return None, f"duplicate clip id (first on row {first_row[clip_id]})"
    split = str(row.fields["split"]).strip()
    if not split:
        return None, "empty split"
    raw_labels = row.fields["labels"]
    if isinstance(raw_labels, list):
        labels = tuple(dict.fromkeys(str(name).strip() for name in raw_labels if str(name).strip()))
    else:
        labels = split_labels(str(raw_labels))
    if vocabulary is not None:
        unknown = [name for name in labels if name not in vocabulary]
        if unknown:
            return None, f"unknown label(s) {', '.join(map(repr, unknown))} (not in the label vocabulary)"
    audio_path, reason = _resolve_inside(str(row.fields["path"]).strip(), root, follow_symlinks)
    if reason is not None:
        return None, reason
    return Clip(clip_id, audio_path, labels, split), None


def _resolve_inside(text: str, root: Path, follow_symlinks: bool = False) -> tuple[Path | None, str | None]:
    """The absolute path of a manifest path, which must be relative and stay inside the manifest's folder, also
    after following symlinks (unless `follow_symlinks`: a data folder linked in from elsewhere)."""
    if not text:
        return None, "empty path"
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        return None, f"{text!r}: control character in the path; no file system accepts it, fix the manifest"
    if Path(text).is_absolute() or PurePosixPath(text).is_absolute() or (len(text) > 1 and text[1] == ":"):
        return None, f"{text}: absolute path; paths must be relative to the manifest's folder"
    normal = os.path.normpath(text)
    if normal == ".." or normal.startswith(".." + os.sep):
        return None, f"{text}: path escapes the dataset root {root}"
    path = root / normal
    if not follow_symlinks:
        real = Path(os.path.realpath(path))
        if real != path and not real.is_relative_to(Path(os.path.realpath(root))):
            return None, (f"{text}: a symlink leads outside the dataset root {root} (to {real}); copy the data in, "
                          "or pass --follow-symlinks if you trust this folder")
    return path, None


def _read_rows(path: Path) -> Iterator[_Row]:
    """Raw rows from a .csv or .jsonl/.ndjson file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path)
    else:
        raise ConfigError(f"{path}: unknown manifest type {suffix!r}; use .csv or .jsonl")


def _read_csv(path: Path) -> Iterator[_Row]:
    """CSV rows keyed by the header; a header without the required columns is a file-level error."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        absent = [column for column in COLUMNS if column not in header]
        if absent:
            raise BadInputError(
                f"{path}: header lacks column(s) {', '.join(absent)}; the first line must name "
                f"{', '.join(COLUMNS)}"
            )
        reader.fieldnames = header
        for fields in reader:
            if not any((value or "").strip() for key, value in fields.items() if key is not None):
                continue  # blank line
            yield _Row(reader.line_num, fields)


def _read_jsonl(path: Path) -> Iterator[_Row]:
    """One JSON object per line; a line that is not an object is a row with no columns."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError:
                fields = None
            yield _Row(number, fields if isinstance(fields, dict) else {})


def _check_all(paths: list[Path], workers: int) -> list[str | None]:
    """check_audio for every path, in order; a process pool when workers > 1."""
    if workers <= 1 or len(paths) < 2:
        return [check_audio(path) for path in paths]
    chunk = max(1, len(paths) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_audio, paths, chunksize=chunk))


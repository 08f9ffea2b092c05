"""Adapters that write a manifest CSV (+ labels.txt) from standard dataset layouts."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from embedcache.datasets.grouping import group_keys, grouped_splits, takes_warning
from embedcache.datasets.manifest import COLUMNS, DEFAULT_LABELS_FILE, LABEL_SEPARATOR, Clip
from embedcache.errors import ConfigError

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff"})
# Split names used by every adapter that makes its own train/validation/test split.
SPLIT_NAMES = ("train", "valid", "test")
MANIFEST_NAME = "manifest.csv"


def write_manifest(out: str | Path, clips: Iterable[Clip], label_names: Sequence[str]) -> Path:
    """Write clips as a manifest CSV with paths relative to its folder, and the vocabulary as labels.txt beside it."""
    out = Path(out).absolute()
    root = out.parent
    known = set(label_names)
    for name in label_names:
        if LABEL_SEPARATOR in name or not name.strip():
            raise ConfigError(f"label {name!r} cannot be written: names must be non-empty without {LABEL_SEPARATOR!r}")
    rows = []
    for clip in clips:
        unknown = [name for name in clip.labels if name not in known]
        if unknown:
            raise ConfigError(f"clip {clip.clip_id}: label(s) {unknown} are not in the vocabulary")
        relative = os.path.relpath(Path(clip.path).absolute(), root)
        if relative == ".." or relative.startswith(".." + os.sep):
            raise ConfigError(
                f"{clip.path} is outside {root}: write the manifest inside the dataset folder "
                "(manifest paths may not leave the manifest's folder)"
            )
        rows.append([clip.clip_id, PurePosixPath(*Path(relative).parts).as_posix(),
                     LABEL_SEPARATOR.join(clip.labels), clip.split])
    root.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    (root / DEFAULT_LABELS_FILE).write_text("".join(f"{name}\n" for name in label_names), encoding="utf-8")
    return out


@dataclass
class FolderPlan:
    """A class-folder split before anything is written: the clips, the vocabulary and how the split was made."""

    root: Path
    clips: list[Clip]
    label_names: list[str]
    record: dict  # written as <manifest>.split.json: ratios, seed, group_by, groups, warning, per-class counts

    @property
    def warning(self) -> str | None:
        return self.record["warning"]


def from_class_folders(
    root: str | Path,
    out: str | Path | None = None,
    split_ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group_by: str | None = None,
) -> Path:
    """A folder per class -> single-label manifest with a seeded, per-class (stratified) train/valid/test split.

    group_by: a regex (or `takes`) giving each file name a group key; files with one key share a split.
    """
    return write_folder_plan(plan_class_folders(root, split_ratios, seed, group_by), out)


def plan_class_folders(
    root: str | Path,
    split_ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group_by: str | None = None,
) -> FolderPlan:
    """The clips and splits from_class_folders would write; warns (in `record`) when names suggest ungrouped takes."""
    root = existing_dir(root)
    ratios = _check_ratios(split_ratios)
    rng = np.random.default_rng(seed)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files_by_class: dict[str, list[Path]] = {}
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            files_by_class[class_dir.name] = files
    if not files_by_class:
        raise ConfigError(f"{root}: no class folders with audio ({', '.join(sorted(AUDIO_SUFFIXES))}) found")
    names = {label: [f.relative_to(root / label).as_posix() for f in files] for label, files in files_by_class.items()}
    places = [(label, i) for label, files in files_by_class.items() for i in range(len(files))]
    if group_by is None:
        splits = [split for files in files_by_class.values()
                  for split in _stratified_splits(len(files), ratios, rng)]
        groups, warning = None, takes_warning(names)
    else:
        keys = group_keys(group_by, names)
        splits = grouped_splits([label for label, _ in places], [keys[place] for place in places], ratios,
                                SPLIT_NAMES, rng)
        groups, warning = len(set(keys.values())), None
    clips = [Clip(files_by_class[label][i].relative_to(root).as_posix(), files_by_class[label][i], (label,), split)
             for (label, i), split in zip(places, splits, strict=True)]
    counts = {label: {name: sum(c.split == name and c.labels[0] == label for c in clips) for name in SPLIT_NAMES}
              for label in files_by_class}
    record = {"adapter": "folders", "root": str(root), "ratios": list(ratios), "seed": seed, "group_by": group_by,
              "groups": groups, "warning": warning, "counts": counts}
    return FolderPlan(root, by_split(clips), list(files_by_class), record)


def write_folder_plan(plan: FolderPlan, out: str | Path | None = None) -> Path:
    """Write a FolderPlan's manifest (+ labels.txt) and its split record; returns the manifest path."""
    path = write_manifest(manifest_path(plan.root, out), plan.clips, plan.label_names)
    write_split_record(path, plan.record)
    return path


def write_split_record(manifest: Path, record: dict) -> Path:
    """`<manifest stem>.split.json` beside the manifest: how its splits were made (settings, warnings, counts)."""
    path = manifest.with_name(manifest.stem + ".split.json")
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def from_esc50(root: str | Path, out: str | Path | None = None) -> Path:
    """ESC-50 (`meta/esc50.csv`, `audio/`) -> single-label manifest with splits fold1..fold5."""
    root = existing_dir(root)
    meta = root / "meta" / "esc50.csv"
    rows = _read_csv_rows(meta, ("filename", "fold", "target", "category"))
    names_by_target: dict[int, str] = {}
    clips = []
    for row in rows:
        target = _integer(row["target"], meta, "target")
        names_by_target.setdefault(target, row["category"])
        if names_by_target[target] != row["category"]:
            raise ConfigError(f"{meta}: target {target} is both {names_by_target[target]!r} and {row['category']!r}")
        fold = _integer(row["fold"], meta, "fold")
        clips.append(Clip(Path(row["filename"]).stem, root / "audio" / row["filename"], (row["category"],),
                          f"fold{fold}"))
    label_names = [names_by_target[target] for target in sorted(names_by_target)]
    return write_manifest(manifest_path(root, out), clips, label_names)


def from_fsd50k(root: str | Path, out: str | Path | None = None) -> Path:
    """FSD50K (ground truth dev/eval CSVs, vocabulary.csv, dev/eval audio folders) -> multi-label manifest.

    dev.csv's own split column gives train/valid (val -> valid), eval.csv gives test.
    """
    root = existing_dir(root)
    truth = root / "FSD50K.ground_truth"
    vocabulary = truth / "vocabulary.csv"
    if not vocabulary.is_file():
        raise ConfigError(f"{vocabulary}: not found; is {root} an FSD50K folder?")
    with open(vocabulary, newline="", encoding="utf-8") as handle:
        # No header: index, label name, AudioSet mid.
        vocab_rows = [row for row in csv.reader(handle) if row]
    label_names = [row[1].strip() for row in sorted(vocab_rows, key=lambda row: int(row[0]))]
    known = set(label_names)
    clips = []
    for csv_name, audio_name in (("dev.csv", "FSD50K.dev_audio"), ("eval.csv", "FSD50K.eval_audio")):
        path = truth / csv_name
        needed = ("fname", "labels", "split") if csv_name == "dev.csv" else ("fname", "labels")
        for row in _read_csv_rows(path, needed):
            labels = tuple(name.strip() for name in row["labels"].split(",") if name.strip())
            unknown = [name for name in labels if name not in known]
            if unknown:
                raise ConfigError(f"{path}: clip {row['fname']} has label(s) {unknown} missing from {vocabulary}")
            split = {"train": "train", "val": "valid"}.get(row["split"]) if "split" in needed else "test"
            if split is None:
                raise ConfigError(f"{path}: clip {row['fname']} has split {row['split']!r}; expected train or val")
            clips.append(Clip(row["fname"], root / audio_name / f"{row['fname']}.wav", labels, split))
    return write_manifest(manifest_path(root, out), by_split(clips), label_names)


def from_audioset(
    segments_csvs: dict[str, str | Path],
    class_indices_csv: str | Path,
    audio_dir: str | Path,
    out: str | Path,
) -> tuple[Path, list[tuple[str, str]]]:
    """AudioSet segment CSVs (split name -> path) + class_labels_indices.csv -> multi-label manifest.

    Audio files are found under `audio_dir` (recursively) by stem: `<YTID>_<start>` (start as written or in
    whole seconds), `<YTID>_<start>_<end>` or `<YTID>`, optionally with a leading `Y`, any audio suffix.
    Returns (manifest path, [(segment id, reason)] for segments left out: no audio file, malformed line,
    unknown label id).
    """
    mid_to_name, label_names = _read_class_indices(Path(class_indices_csv))
    audio_dir = existing_dir(audio_dir)
    by_stem: dict[str, Path] = {}
    for path in sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        by_stem.setdefault(path.stem, path)
    clips, left_out = [], []
    for split, segments_csv in segments_csvs.items():
        for number, fields in _read_segments(Path(segments_csv)):
            if len(fields) < 4:
                left_out.append((f"{Path(segments_csv).name} line {number}", "malformed segment line"))
                continue
            ytid, start, end, mids = fields[0].strip(), fields[1].strip(), fields[2].strip(), fields[3]
            clip_id = f"{ytid}_{_seconds(start)}"
            unknown = [mid for mid in _split_mids(mids) if mid not in mid_to_name]
            if unknown:
                left_out.append((clip_id, f"unknown label id(s) {', '.join(unknown)} (not in {class_indices_csv})"))
                continue
            audio = _find_segment_audio(by_stem, ytid, start, end)
            if audio is None:
                left_out.append((clip_id, f"no audio file for {ytid} in {audio_dir}"))
                continue
            labels = tuple(dict.fromkeys(mid_to_name[mid] for mid in _split_mids(mids)))
            clips.append(Clip(clip_id, audio, labels, split))
    if not clips:
        raise ConfigError(f"{audio_dir}: none of the {len(left_out)} segments has an audio file there")
    return write_manifest(out, clips, label_names), left_out


def _read_class_indices(path: Path) -> tuple[dict[str, str], list[str]]:
    """class_labels_indices.csv (index, mid, display_name) -> (mid -> name, names in index order)."""
    rows = _read_csv_rows(path, ("index", "mid", "display_name"))
    rows.sort(key=lambda row: _integer(row["index"], path, "index"))
    mid_to_name = {row["mid"].strip(): row["display_name"].strip() for row in rows}
    return mid_to_name, [row["display_name"].strip() for row in rows]


def _read_segments(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of an AudioSet segments CSV, skipping its `# ` header lines."""
    if not path.is_file():
        raise ConfigError(f"{path}: segments CSV not found")
    with open(path, newline="", encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(handle, start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
    # skipinitialspace: the files write `YTID, 30.000, 40.000, "/m/a,/m/b"` with a space before the quote.
    parsed = csv.reader((line for _, line in lines), skipinitialspace=True)
    return [(number, fields) for (number, _), fields in zip(lines, parsed, strict=True)]


def _split_mids(text: str) -> list[str]:
    """`"/m/a,/m/b"` -> ['/m/a', '/m/b']."""
    return [mid.strip() for mid in text.strip().strip('"').split(",") if mid.strip()]


def _seconds(text: str) -> str:
    """`30.000` -> `30`, `12.5` -> `12.5` (the short form used in clip ids and file names)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _find_segment_audio(by_stem: dict[str, Path], ytid: str, start: str, end: str) -> Path | None:
    """The audio file of one segment under any of the common naming schemes, or None."""
    for prefix in ("", "Y"):
        name = prefix + ytid
        for stem in (f"{name}_{start}", f"{name}_{_seconds(start)}", f"{name}_{_seconds(start)}_{_seconds(end)}",
                     f"{name}_{start}_{end}", name):
            if stem in by_stem:
                return by_stem[stem]
    return None


def by_split(clips: list[Clip]) -> list[Clip]:
    """Clips grouped train, valid, test (stable), so split names appear in that order."""
    return sorted(clips, key=lambda clip: SPLIT_NAMES.index(clip.split))


def _stratified_splits(count: int, ratios: tuple[float, ...], rng: np.random.Generator) -> list[str]:
    """Split names for `count` files of one class: a seeded shuffle cut at the cumulative ratios."""
    bounds = [math.floor(count * sum(ratios[: i + 1]) + 0.5) for i in range(len(ratios))]
    order = rng.permutation(count)
    splits = [""] * count
    start = 0
    for name, stop in zip(SPLIT_NAMES, bounds, strict=True):
        for position in order[start:stop]:
            splits[position] = name
        start = stop
    return splits


def _check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    """Three non-negative ratios (train, valid, test) that add up to 1."""
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios {ratios}: give three non-negative numbers (train, valid, test) summing to 1")
    return ratios


def _read_csv_rows(path: Path, needed: Sequence[str]) -> list[dict[str, str]]:
    """CSV rows as dicts; a missing file or column is a ConfigError naming both."""
    if not path.is_file():
        raise ConfigError(f"{path}: not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        absent = [name for name in needed if name not in header]
        if absent:
            raise ConfigError(f"{path}: missing column(s) {', '.join(absent)} (has {', '.join(header)})")
        reader.fieldnames = header
        return [{key: (value or "").strip() for key, value in row.items() if key is not None} for row in reader]


def _integer(text: str, path: Path, column: str) -> int:
    """An integer cell, or a ConfigError naming the file and column."""
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{path}: column {column} has {text!r}, expected an integer") from None


def existing_dir(path: str | Path) -> Path:
    """An absolute path to an existing folder."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise ConfigError(f"{path}: folder not found")
    return path


def manifest_path(root: Path, out: str | Path | None) -> Path:
    """The manifest path: `out` if given, else manifest.csv in the dataset root."""
    return Path(out) if out is not None else root / MANIFEST_NAME

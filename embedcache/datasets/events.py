"""Strong labels of a manifest: an events file (DESED's TSV: filename, onset, offset, event_label, in seconds), read
and checked against the manifest's clips and labels, and the DESED and URBAN-SED adapters that write one.

`extract` reads `events.tsv` beside the manifest (or `--events FILE`) and keeps the events in the store.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedcache.datasets.adapters import (
    AUDIO_SUFFIXES,
    SPLIT_NAMES,
    by_split,
    existing_dir,
    manifest_path,
    write_manifest,
)
from embedcache.datasets.manifest import Clip, Manifest
from embedcache.errors import BadInputError, ConfigError
from embedcache.events import merged

EVENTS_NAME = "events.tsv"
EVENT_COLUMNS = ("filename", "onset", "offset", "event_label")
# Other spellings of each column: the bundled sample's events.csv (clip_id, label, onset_s, offset_s).
_ALIASES = {"filename": ("filename", "clip_id"), "onset": ("onset", "onset_s"), "offset": ("offset", "offset_s"),
            "event_label": ("event_label", "label")}


@dataclass(frozen=True)
class ClipEvent:
    """One event of a manifest clip: the clip's index in the manifest, onset and offset in seconds, its label."""

    clip: int
    onset: float
    offset: float
    label: str


def default_events_path(manifest_path: str | Path) -> Path | None:
    """`events.tsv` beside the manifest when there is one, else None."""
    path = Path(manifest_path).parent / EVENTS_NAME
    return path if path.is_file() else None


def read_events(path: str | Path, manifest: Manifest, ignore: Sequence[str] = ()) -> list[ClipEvent]:
    """The events of `manifest`'s clips from an events file, checked; a BadInputError lists every bad row.

    A row's filename is a clip id or the file name of a clip's audio; a row with no onset, offset and label says the
    clip was annotated and has no event. Every event's label must be among its clip's labels, and a clip with events
    must have an event of each of its labels (weak labels are the strong ones' union). Rows of the clip ids in
    `ignore` (bad rows a store leaves out) are dropped.
    """
    path = Path(path)
    rows = _read_rows(path)
    index = _clip_index(manifest.clips)
    known = set(manifest.label_names)
    events, problems, ignored = [], [], set(ignore)
    for number, fields in rows:
        name = fields["filename"]
        where = f"{path.name} line {number}"
        if name in ignored and name not in index:
            continue
        if name not in index:
            problems.append((where, f"{name!r} is neither a clip id nor an audio file name of the manifest"))
            continue
        if index[name] is None:
            problems.append((where, f"{name!r} is the file name of several clips; write clip ids instead"))
            continue
        if not (fields["onset"] or fields["offset"] or fields["event_label"]):
            continue  # an annotated clip without events
        times = parse_times(fields["onset"], fields["offset"])
        if isinstance(times, str):
            problems.append((where, times))
            continue
        onset, offset = times
        if fields["event_label"] not in known:
            problems.append((where, f"label {fields['event_label']!r} is not in the label vocabulary"))
            continue
        events.append(ClipEvent(index[name], onset, offset, fields["event_label"]))
    problems += _label_mismatches(events, manifest.clips)
    if problems:
        raise BadInputError(f"{path}: {len(problems)} problem(s) with the events; fix the file or the manifest",
                            problems)
    return events


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, {filename, onset, offset, event_label}) of a tab- (.tsv, .txt) or comma-separated events file."""
    if not path.is_file():
        raise ConfigError(f"{path}: events file not found")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = [name.strip() for name in reader.fieldnames or []]
        chosen = {column: next((name for name in names if name in header), None) for column, names in _ALIASES.items()}
        absent = [column for column, name in chosen.items() if name is None]
        if absent:
            raise ConfigError(f"{path}: header lacks {', '.join(absent)}; an events file has the columns "
                              f"{', '.join(EVENT_COLUMNS)} ({'tab' if delimiter == chr(9) else 'comma'}-separated)")
        reader.fieldnames = header
        return [(reader.line_num, {column: (row.get(name) or "").strip() for column, name in chosen.items()})
                for row in reader if any((value or "").strip() for key, value in row.items() if key is not None)]


def _clip_index(clips: Sequence[Clip]) -> dict[str, int | None]:
    """Clip id and audio file name -> clip index (None for a file name that several clips share)."""
    index: dict[str, int | None] = {}
    for i, clip in enumerate(clips):
        name = Path(clip.path).name
        if name != clip.clip_id:
            index[name] = i if name not in index else None
    index.update({clip.clip_id: i for i, clip in enumerate(clips)})
    return index


def _label_mismatches(events: list[ClipEvent], clips: Sequence[Clip]) -> list[tuple[str, str]]:
    """Clips whose events and labels disagree (an event label the clip lacks, or a label with no event)."""
    found: dict[int, set[str]] = {}
    for event in events:
        found.setdefault(event.clip, set()).add(event.label)
    problems = []
    for clip, labels in sorted(found.items()):
        weak = set(clips[clip].labels)
        if labels != weak:
            extra, missing = sorted(labels - weak), sorted(weak - labels)
            problems.append((clips[clip].clip_id, "events and labels disagree" + (
                f"; events of {extra} but no such label" if extra else "") + (
                f"; label(s) {missing} but no such event" if missing else "")))
    return problems


def write_events_file(path: str | Path, rows: Sequence[tuple[str, float, float, str]]) -> Path:
    """Write (filename, onset, offset, label) rows as a DESED-style TSV with seconds to the microsecond."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(EVENT_COLUMNS)
        writer.writerows([name, f"{onset:.6f}", f"{offset:.6f}", label] for name, onset, offset, label in rows)
    return path


# -- adapters -----------------------------------------------------------------------------------------------------
DESED_SETS = {
    "train": ("metadata/train/synthetic*_train/soundscapes.tsv", "audio/train/synthetic*_train/soundscapes"),
    "valid": ("metadata/validation/synthetic*_validation/soundscapes.tsv",
              "audio/validation/synthetic*_validation/soundscapes"),
    "test": ("metadata/validation/validation.tsv", "audio/validation/validation"),
}
URBANSED_SPLITS = {"train": "train", "validate": "valid", "test": "test"}


def from_desed(root: str | Path, sets: dict[str, tuple[str, str]] | None = None,
               out: str | Path | None = None) -> tuple[Path, list[tuple[str, str]]]:
    """DESED (strong TSVs + audio folders) -> manifest, labels.txt and events.tsv.

    sets: split -> (strong TSV, audio folder), relative to `root`, globs allowed (one match each). The default is
    DCASE task 4's: synthetic soundscapes for train and valid, the real strong-labelled validation set as test.
    Clip ids are `<split>/<file stem>` (DESED's synthetic sets reuse names). Returns (manifest, [(file, reason)] left
    out: audio without a TSV row, TSV rows without audio).
    """
    root = existing_dir(root)
    clips, events, left_out = [], [], []
    for split, (tsv_pattern, audio_pattern) in (sets or DESED_SETS).items():
        tsv, audio_dir = _one_match(root, tsv_pattern), _one_match(root, audio_pattern)
        by_name = {p.name: p for p in sorted(audio_dir.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
        rows = _read_rows(tsv)
        named = {fields["filename"] for _, fields in rows}
        left_out += [(f"{split}/{name}", f"no row in {tsv.name}") for name in sorted(set(by_name) - named)]
        left_out += [(f"{split}/{name}", f"listed in {tsv.name} but not in {audio_dir}")
                     for name in sorted(named - set(by_name))]
        per_clip: dict[str, list] = {name: [] for name in sorted(named & set(by_name))}
        for number, fields in rows:
            if fields["filename"] in per_clip and fields["event_label"]:
                per_clip[fields["filename"]].append(_seconds(fields, tsv, number))
        for name, found in per_clip.items():
            clip_id = f"{split}/{Path(name).stem}"
            labels = tuple(sorted({label for _, _, label in found}))
            clips.append(Clip(clip_id, by_name[name], labels, split))
            events += [(clip_id, onset, offset, label) for onset, offset, label in merged(found)]
    return _write_strong(root, out, clips, events), left_out


def from_urbansed(root: str | Path, out: str | Path | None = None) -> Path:
    """URBAN-SED (audio/<split>/*.wav, annotations/<split>/*.txt of onset, offset, label) -> manifest, labels.txt and
    events.tsv; its train/validate/test become train/valid/test."""
    root = existing_dir(root)
    clips, events = [], []
    for folder, split in URBANSED_SPLITS.items():
        audio_dir = root / "audio" / folder
        if not audio_dir.is_dir():
            raise ConfigError(f"{audio_dir}: not found; is {root} an URBAN-SED folder (audio/, annotations/)?")
        for audio in sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            annotation = root / "annotations" / folder / f"{audio.stem}.txt"
            if not annotation.is_file():
                raise ConfigError(f"{annotation}: not found; every URBAN-SED soundscape has an annotation file")
            found = _annotation_events(annotation)
            clips.append(Clip(audio.stem, audio, tuple(sorted({label for _, _, label in found})), split))
            events += [(audio.stem, onset, offset, label) for onset, offset, label in merged(found)]
    if not clips:
        raise ConfigError(f"{root}/audio: no soundscapes found")
    return _write_strong(root, out, clips, events)


def _annotation_events(path: Path) -> list[tuple[float, float, str]]:
    """URBAN-SED's per-soundscape annotation: lines of onset, offset, label (tab-separated, no header)."""
    found = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, fields in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not any(field.strip() for field in fields):
                continue
            if len(fields) < 3:
                raise ConfigError(f"{path} line {number}: expected onset, offset, label (tab-separated)")
            found.append(_seconds({"onset": fields[0], "offset": fields[1], "event_label": fields[2].strip()},
                                  path, number))
    return found


def parse_times(onset_text: str, offset_text: str) -> tuple[float, float] | str:
    """(onset, offset) in seconds from an events row, or what is wrong with them: not numbers, not finite, or not
    0 <= onset < offset."""
    try:
        onset, offset = float(onset_text), float(offset_text)
    except ValueError:
        return f"onset {onset_text!r} / offset {offset_text!r} are not numbers"
    if not (math.isfinite(onset) and math.isfinite(offset)) or onset < 0 or offset <= onset:
        return f"onset {onset:g} s and offset {offset:g} s: need 0 <= onset < offset"
    return onset, offset


def _seconds(fields: dict[str, str], path: Path, number: int) -> tuple[float, float, str]:
    times = parse_times(fields["onset"], fields["offset"])
    if isinstance(times, str):
        raise ConfigError(f"{path} line {number}: {times}")
    return times[0], times[1], fields["event_label"]


def _one_match(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise ConfigError(f"{root}: {len(found)} matches for {pattern!r}; give that set's TSV and audio folder with "
                          "--set SPLIT=TSV,AUDIO_DIR")
    return found[0]


def _write_strong(root: Path, out: str | Path | None, clips: list[Clip],
                  events: list[tuple[str, float, float, str]]) -> Path:
    label_names = sorted({label for clip in clips for label in clip.labels})
    known = [clip for clip in clips if clip.split in SPLIT_NAMES]
    path = write_manifest(manifest_path(root, out), by_split(known) + [c for c in clips if c.split not in SPLIT_NAMES],
                          label_names)
    write_events_file(path.parent / EVENTS_NAME, events)
    return path

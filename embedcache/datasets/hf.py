"""Hugging Face `datasets` saved locally (save_to_disk folders, parquet or arrow files) -> manifest; embedded audio
(bytes or arrays) is written out as files beside the manifest, since extract reads files. Never downloads."""

from __future__ import annotations

import io
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from embedcache.datasets.adapters import AUDIO_SUFFIXES, write_manifest
from embedcache.datasets.manifest import Clip, read_label_file
from embedcache.errors import ConfigError

AUDIO_DIR = "audio"
_BATCH_ROWS = 64
# `owner/name`: what a Hub id looks like (a local path that does not exist may look the same; both are refused).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Sharded file names: `train-00000-of-00004.parquet` belongs to split `train`.
_SHARD = re.compile(r"-\d+-of-\d+$")
# Splits read from file names come train, validation, test, then the rest (file-name order within each).
_SPLIT_ORDER = ("train", "val", "dev", "test")
_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"FORM", ".aiff"))
_INSTALL = 'pip install "embedcache[hf]"'


@dataclass
class _Split:
    """One split of the source: its name, columns, features (or None) and a way to read its rows in batches."""

    name: str
    origin: Path  # the folder or file it comes from (messages; relative audio paths)
    columns: list[str]
    features: object | None
    batches: Callable[[list[str]], Iterator[list[dict]]]  # columns -> rows in batches


@dataclass
class HFResult:
    """What from_hf wrote: the manifest, rows left out (id, reason) and notes to print."""

    manifest: Path
    left_out: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def from_hf(
    path: str | Path,
    out: str | Path,
    label_column: str,
    audio_column: str = "audio",
    split_map: dict[str, str] | None = None,
    split_column: str | None = None,
    id_column: str | None = None,
    label_names_file: str | Path | None = None,
    copy_audio: bool = False,
) -> HFResult:
    """A local Hugging Face data set with an audio column -> manifest at `out` (labels.txt beside it).

    Labels: a class index or name, or a list of them (multi-label); names come from a ClassLabel /
    Sequence(ClassLabel) feature, else `label_names_file` (line i names index i), else the values themselves.
    Splits: the source's (a DatasetDict's keys, or file names like `train-00000-of-00002.parquet`), or
    `split_column`'s value per row; `split_map` renames them and leaves out the splits it does not name.
    Audio: embedded bytes are written unchanged, arrays as float WAV, to `audio/<split>/` beside the manifest;
    audio given by path is referenced in place (it must lie inside the manifest's folder) or copied with copy_audio.
    """
    datasets = _import_datasets()
    out = Path(out).absolute()
    splits = _open_source(path, datasets)
    options = {audio_column: "--audio-column", label_column: "--label-column"}
    options.update({column: option for column, option in ((split_column, "--split-column"),
                                                          (id_column, "--id-column")) if column is not None})
    _check_request(path, splits, options, None if split_column else split_map)
    names = _label_names(splits, label_column, label_names_file)
    result = HFResult(out)
    writer = _AudioWriter(out.parent / AUDIO_DIR, out.parent, copy_audio)
    clips, seen_ids, found, unmapped = [], set(), set(), Counter()
    for split in splits:
        if split_map and split_column is None and split.name not in split_map:
            result.notes.append(f"split {split.name!r} left out (not in --split-map)")
            continue  # not read at all
        for index, row in enumerate(row for batch in split.batches(list(options)) for row in batch):
            source = str(row[split_column]) if split_column else split.name
            if split_map and source not in split_map:
                unmapped[source] += 1
                continue
            clip_id = str(row[id_column]).strip() if id_column else f"{split.name}/{index}"
            if clip_id in seen_ids:
                raise ConfigError(f"{split.origin}: column {id_column!r} repeats id {clip_id!r}; ids must be unique "
                                  "(drop --id-column to number the rows)")
            seen_ids.add(clip_id)
            target = split_map[source] if split_map else source
            labels = _labels(row[label_column], names, split.origin, label_column, clip_id)
            audio, reason = writer.place(row[audio_column], split.origin, target, clip_id)
            if audio is None:
                result.left_out.append((clip_id, reason))
                continue
            found.update(labels)
            clips.append(Clip(clip_id, audio, labels, target))
    result.notes += [f"{count} row(s) with {split_column} {name!r} left out (not in --split-map)"
                     for name, count in unmapped.items()]
    if not clips:
        raise ConfigError(f"{path}: no rows with usable audio ({len(result.left_out)} left out)")
    vocabulary = names if names is not None else _sorted_labels(found)
    result.manifest = write_manifest(out, clips, vocabulary)
    if writer.written:
        result.notes.append(f"{writer.written} embedded audio file(s) written under {out.parent / AUDIO_DIR}")
    return result


def _check_request(path: str | Path, splits: list[_Split], options: dict[str, str],
                   split_map: dict[str, str] | None) -> None:
    """Every named column is in every split, and every split the map names exists."""
    for split in splits:
        absent = [column for column in options if column not in split.columns]
        if absent:
            raise ConfigError(f"{split.origin}: split {split.name!r} has no column {absent[0]!r} (columns: "
                              f"{', '.join(split.columns)}); pass {options[absent[0]]} with one of them")
    unknown = [name for name in split_map or {} if name not in {split.name for split in splits}]
    if unknown:
        raise ConfigError(f"--split-map names split {unknown[0]!r}, which {path} does not have (splits: "
                          f"{', '.join(split.name for split in splits)})")


def _import_datasets():
    """The `datasets` module, or a ConfigError naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading Hugging Face data sets needs the `datasets` package: {_INSTALL}") from None
    return datasets


def _open_source(path: str | Path, datasets) -> list[_Split]:
    """The splits of a local save_to_disk folder, a folder of parquet/arrow files, or one such file."""
    text = str(path)
    local = Path(path).absolute()
    if not local.exists():
        if "://" in text or text.startswith("hf:") or _HUB_ID.match(text):
            raise ConfigError(f"{text}: no such local path, and it looks like a Hub id or URL; embedcache never "
                              "downloads: save the data set first (load_dataset(...).save_to_disk(DIR)) and pass DIR")
        raise ConfigError(f"{local}: not found; pass a save_to_disk folder or .parquet/.arrow file(s)")
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        return _from_disk(local, datasets)
    files = [local] if local.is_file() else sorted(
        p for p in local.rglob("*") if p.is_file() and p.suffix in (".parquet", ".arrow"))
    if local.is_file() and local.suffix not in (".parquet", ".arrow"):
        raise ConfigError(f"{local}: not a .parquet or .arrow file; pass a save_to_disk folder or parquet/arrow files")
    if not files:
        raise ConfigError(f"{local}: no dataset_dict.json/state.json (save_to_disk) and no .parquet/.arrow files")
    by_split: dict[str, list[Path]] = {}
    for file in files:
        by_split.setdefault(_SHARD.sub("", file.stem), []).append(file)
    ordered = sorted(by_split, key=lambda name: next((rank for rank, prefix in enumerate(_SPLIT_ORDER)
                                                      if name.lower().startswith(prefix)), len(_SPLIT_ORDER)))
    return [_from_files(name, by_split[name], datasets) for name in ordered]


def _from_disk(folder: Path, datasets) -> list[_Split]:
    """Splits of a save_to_disk folder (a DatasetDict, or one Dataset named by its split or `train`)."""
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as error:  # the library raises many kinds for a damaged folder
        raise ConfigError(f"{folder}: cannot be read as a save_to_disk folder ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''})") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {str(loaded.split or "train"): loaded}

    def reader(dataset):
        def batches(columns: list[str]) -> Iterator[list[dict]]:
            table = dataset.select_columns(list(dict.fromkeys(columns))).with_format("arrow")
            for batch in table.iter(batch_size=_BATCH_ROWS):
                yield batch.to_pylist()
        return batches

    return [_Split(name, folder, list(dataset.column_names), dataset.features, reader(dataset))
            for name, dataset in parts.items()]


def _from_files(name: str, files: list[Path], datasets) -> _Split:
    """One split made of parquet or arrow (IPC stream or file) shards, read in batches without a cache copy."""
    schema, _ = _open_shard(files[0])
    features = datasets.Features.from_arrow_schema(schema)

    def batches(columns: list[str]) -> Iterator[list[dict]]:
        columns = list(dict.fromkeys(columns))
        for file in files:
            shard_schema, stream = _open_shard(file)
            absent = [column for column in columns if column not in shard_schema.names]
            if absent:
                raise ConfigError(f"{file}: no column {absent[0]!r} (columns: {', '.join(shard_schema.names)}); "
                                  f"the shards of split {name!r} disagree")
            for batch in stream(columns):
                yield batch.to_pylist()

    origin = files[0] if len(files) == 1 else files[0].parent
    return _Split(name, origin, list(schema.names), features, batches)


def _open_shard(file: Path):
    """(arrow schema, columns -> record batches of those columns) of a parquet file or an arrow IPC stream/file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.suffix == ".parquet":
            parquet = pq.ParquetFile(file)
            return parquet.schema_arrow, lambda columns: parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
        source = pa.memory_map(str(file))
        try:
            stream = pa.ipc.open_stream(source)
            return stream.schema, lambda columns: (batch.select(columns) for batch in stream)
        except pa.ArrowInvalid:
            whole = pa.ipc.open_file(source)
            return whole.schema, lambda columns: (whole.get_batch(i).select(columns)
                                                  for i in range(whole.num_record_batches))
    except (pa.ArrowInvalid, OSError) as error:
        raise ConfigError(f"{file}: not a readable {file.suffix[1:]} file ({error})") from None


def _class_names(feature) -> list[str] | None:
    """Names of a ClassLabel feature, or of the ClassLabel inside a Sequence/List feature; else None."""
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", feature)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def _label_names(splits: Sequence[_Split], column: str, names_file: str | Path | None) -> list[str] | None:
    """The vocabulary from the label feature (the same in every split) or the names file, else None."""
    if names_file is not None:
        return read_label_file(names_file)
    found = [_class_names(split.features[column]) if split.features is not None else None for split in splits]
    known = [names for names in found if names is not None]
    if any(names != known[0] for names in known):
        raise ConfigError(f"column {column!r} has different class names in different splits; pass --label-names FILE")
    return known[0] if known else None


def _labels(value, names: list[str] | None, origin: Path, column: str, clip_id: str) -> tuple[str, ...]:
    """A label cell (index, name, or a list of them) -> label names; -1 and None mean no label."""
    items = value if isinstance(value, list | tuple) else [value]
    labels = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, int) and not isinstance(item, bool):
            if item < 0:
                continue  # ClassLabel's "no label"
            if names is None:
                labels.append(str(item))
            elif item < len(names):
                labels.append(names[item])
            else:
                raise ConfigError(f"{origin}: row {clip_id}: column {column!r} has class index {item}, but there are "
                                  f"only {len(names)} class names")
        elif isinstance(item, str):
            if item.strip():
                labels.append(item.strip())
        else:
            raise ConfigError(f"{origin}: row {clip_id}: column {column!r} holds {type(item).__name__} "
                              f"{str(item)[:40]!r}; labels must be class indices or names (or lists of them)")
    return tuple(dict.fromkeys(labels))


def _sorted_labels(found: set[str]) -> list[str]:
    """Labels found in the data: indices in numeric order, then names in text order."""
    return sorted(found, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))


class _AudioWriter:
    """Turns an audio cell into a file inside the manifest's folder: written out, copied, or referenced in place."""

    def __init__(self, audio_dir: Path, root: Path, copy_audio: bool):
        self.audio_dir, self.root, self.copy_audio = audio_dir, root, copy_audio
        self.written = 0
        self._used: set[Path] = set()

    def place(self, cell, origin: Path, split: str, clip_id: str) -> tuple[Path | None, str | None]:
        """(path of the clip's audio file, None) or (None, why the row has no usable audio)."""
        if isinstance(cell, str):
            cell = {"path": cell}
        if not isinstance(cell, dict):
            return None, f"audio cell is {type(cell).__name__}, not a path, bytes or array"
        if cell.get("bytes"):
            data = cell["bytes"]
            suffix = _sniff_suffix(data, cell.get("path"))
            if suffix is None:
                return None, "embedded audio bytes are in no format soundfile reads (wav, flac, ogg, mp3, aiff)"
            target = self._target(split, clip_id, suffix)
            target.write_bytes(data)
            self.written += 1
            return target, None
        if cell.get("array") is not None:
            rate = cell.get("sampling_rate")
            if not rate:
                return None, "audio array without a sampling_rate"
            target = self._target(split, clip_id, ".wav")
            sf.write(target, np.asarray(cell["array"], dtype=np.float32), int(rate), subtype="FLOAT")
            self.written += 1
            return target, None
        if cell.get("path"):
            file = Path(cell["path"])
            file = file if file.is_absolute() else (origin if origin.is_dir() else origin.parent) / file
            if not file.is_file():
                return None, f"audio file {file} not found"
            if self.copy_audio:
                target = self._target(split, clip_id, file.suffix.lower() or ".wav")
                shutil.copyfile(file, target)
                return target, None
            if not file.absolute().is_relative_to(self.root):
                raise ConfigError(f"{file} is outside {self.root}: put --out in a folder that holds the audio files, "
                                  "or pass --copy-audio to copy them beside the manifest")
            return file, None
        return None, "audio cell has no bytes, array or path"

    def _target(self, split: str, clip_id: str, suffix: str) -> Path:
        """audio/<split>/<clip id made file-safe><suffix>, never the same file for two clips."""
        folder = self.audio_dir / re.sub(r"[^\w.-]", "_", split)
        stem = re.sub(r"[^\w.-]", "_", clip_id).lstrip(".") or "clip"
        target, number = folder / f"{stem}{suffix}", 1
        while target in self._used:
            number += 1
            target = folder / f"{stem}_{number}{suffix}"
        self._used.add(target)
        folder.mkdir(parents=True, exist_ok=True)
        return target


def _sniff_suffix(data: bytes, name: str | None) -> str | None:
    """The file suffix of encoded audio bytes: by magic number, else the stored name's, else what soundfile says."""
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return ".mp3"  # an MPEG frame header without an ID3 tag
    if name and Path(name).suffix.lower() in AUDIO_SUFFIXES:
        return Path(name).suffix.lower()
    try:
        return "." + sf.info(io.BytesIO(data)).format.lower()
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
